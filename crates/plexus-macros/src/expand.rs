//! What `#[contract]` writes: the trait with `Send` futures, `<Trait>Contract` (its name, its
//! methods, a server router and a client router of an implementation), `<Trait>Client`
//! (typed calls over a client) and `<Trait>Connection` (typed calls the server makes on a
//! client).

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ItemTrait;
use syn::spanned::Spanned;

use crate::model::{Access, Contract, Kind, Method};

pub(crate) fn expand(item: &ItemTrait, contract: &Contract) -> TokenStream {
    let vis = &item.vis;
    let ident = &item.ident;
    let attrs = &item.attrs;
    let supertraits = &item.supertraits;
    let plus = (!supertraits.is_empty()).then(|| quote!(+));
    let name = &contract.name;
    let contract_ident = format_ident!("{ident}Contract");
    let client_ident = format_ident!("{ident}Client");
    let private = quote!(::plexus::contract::__private);

    let trait_methods = contract.methods.iter().map(trait_method);
    let registrations = contract
        .methods
        .iter()
        .map(|m| registration(m, &private, false));
    let infos = contract.methods.iter().map(|m| {
        let wire = &m.wire;
        let kind = kind_variant(m.kind);
        quote!(::plexus::contract::MethodInfo {
            name: #wire,
            kind: ::plexus::contract::MethodKind::#kind,
        })
    });
    let calls = contract.methods.iter().map(|m| client_method(m, &private));
    let method_schemas = contract.methods.iter().map(|m| method_schema(m, &private));
    let description = option_str(doc_text(attrs).as_deref());
    let connection_ident = format_ident!("{ident}Connection");
    let connection_calls = contract
        .methods
        .iter()
        .map(|m| connection_method(m, &private));
    let connection_doc = format!(
        "Typed calls of the `{name}` contract ([`{ident}`]) that the server makes on a client \
         through its `ConnectionHandle` (the client serves it with \
         `{contract_ident}::client_router`)."
    );
    // A client can serve the contract only when no method needs the server's CallContext.
    let client_router = contract
        .methods
        .iter()
        .all(|m| m.context.is_none())
        .then(|| {
            let registrations = contract
                .methods
                .iter()
                .map(|m| registration(m, &private, true));
            quote! {
                /// A client router serving every method of the contract with
                /// `implementation`, for a contract the server calls on its clients
                /// (`ClientOptions::router`).
                #[allow(deprecated)] // a deprecated method is still served
                pub fn client_router(implementation: impl #ident) -> #private::ClientRouter {
                    let implementation = #private::Arc::new(implementation);
                    let router = #private::ClientRouter::new();
                    #(#registrations)*
                    router
                }
            }
        });
    let contract_doc = format!(
        "The `{name}` contract of [`{ident}`]: its name, its methods, and a router serving an \
         implementation."
    );
    let client_doc =
        format!("Typed calls of the `{name}` contract ([`{ident}`]) over a `plexus::Client`.");

    quote! {
        #(#attrs)*
        #vis trait #ident: #supertraits #plus ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #[doc = #contract_doc]
        #[derive(Clone, Copy, Debug)]
        #vis struct #contract_ident;

        impl #contract_ident {
            /// The contract's name: the prefix of its methods' names on the wire.
            pub const NAME: &'static str = #name;

            /// Its methods: names on the wire and kinds.
            pub const METHODS: &'static [::plexus::contract::MethodInfo] = &[#(#infos),*];

            /// A router serving every method of the contract with `implementation`, listing
            /// the contract in `$contracts`; merge it with others (`Router::merge`: a name
            /// served twice stops the start, naming it).
            #[allow(deprecated)] // a deprecated method is still served
            pub fn router(implementation: impl #ident) -> #private::Router {
                let implementation = #private::Arc::new(implementation);
                let router = #private::Router::new();
                #(#registrations)*
                router.describe(Self::schema())
            }

            /// The contract as `$contracts` lists it, served by the server: its methods,
            /// kinds and the JSON Schemas of their parameters and results.
            pub fn schema() -> ::plexus::contract::ContractSchema {
                #[allow(unused_mut)] // unused by a contract without typed values
                let mut generator = #private::schema_generator();
                let methods = ::std::vec![#(#method_schemas),*];
                #private::contract_schema(#name, #description, methods, generator)
            }

            /// [`schema`](Self::schema) for a contract the server calls on its clients: give
            /// it to `Router::describe` so that `$contracts` lists it too.
            pub fn client_schema() -> ::plexus::contract::ContractSchema {
                ::plexus::contract::ContractSchema {
                    served_by: ::plexus::contract::ServedBy::Client,
                    ..Self::schema()
                }
            }

            #client_router
        }

        #[doc = #connection_doc]
        #[derive(Clone, Debug)]
        #vis struct #connection_ident {
            conn: #private::ConnectionHandle,
        }

        impl #connection_ident {
            /// Typed calls on the client of `conn`.
            pub fn new(conn: #private::ConnectionHandle) -> Self {
                Self { conn }
            }

            /// The connection the calls go to.
            pub fn conn(&self) -> &#private::ConnectionHandle {
                &self.conn
            }

            #(#connection_calls)*
        }

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #vis struct #client_ident {
            client: #private::Client,
        }

        impl #client_ident {
            /// Typed calls over `client` (a clone shares its connection).
            pub fn new(client: #private::Client) -> Self {
                Self { client }
            }

            /// The client the calls go through.
            pub fn client(&self) -> &#private::Client {
                &self.client
            }

            #(#calls)*
        }
    }
}

/// The method as the trait declares it: a `Send` future, so that a router can run it.
fn trait_method(method: &Method) -> TokenStream {
    let Method {
        ident,
        context,
        param,
        output,
        attrs,
        ..
    } = method;
    let context = context.as_ref().map(|(name, ty)| quote!(, #name: #ty));
    let param = param.as_ref().map(|(name, ty)| quote!(, #name: #ty));
    quote! {
        #(#attrs)*
        fn #ident(&self #context #param)
            -> impl ::core::future::Future<Output = #output> + ::core::marker::Send;
    }
}

/// The method registered on the router (the client's when `on_client`), with its declared
/// access (a client router has none: the server is the only caller).
fn registration(method: &Method, private: &TokenStream, on_client: bool) -> TokenStream {
    let Method {
        ident, wire, param, ..
    } = method;
    let register = match method.kind {
        Kind::Request => quote!(request),
        Kind::Notification => quote!(notify),
        Kind::Stream => quote!(stream),
    };
    let (mut pattern, call) = match param {
        Some((_, ty)) => (quote!(params: #ty), quote!(params)),
        None => (quote!(_: ()), quote!()),
    };
    let call = match &method.context {
        Some((_, ty)) => {
            pattern = quote!(context: #ty, #pattern);
            quote!(implementation.#ident(context, #call))
        }
        None => quote!(implementation.#ident(#call)),
    };
    let access = match &method.access {
        _ if on_client => quote!(),
        Access::Undeclared => quote!(),
        Access::Public => quote!(.public()),
        Access::Requires(permission) => quote!(.requires(#permission)),
    };
    // Says at the error type itself, not inside the macro's code, when it cannot become an
    // `RpcError`.
    let error_check = method.error.as_ref().map(|error| {
        quote_spanned! {error.span()=>
            #private::error_into_rpc_error::<#error>();
        }
    });
    quote! {
        #error_check
        let router = {
            let implementation = #private::Arc::clone(&implementation);
            router.#register(#wire, move |#pattern| {
                let implementation = #private::Arc::clone(&implementation);
                async move { #call.await }
            })
        } #access;
    }
}

/// A stub's parameter (taken by reference) and what it sends (`&()` for none: `null`).
fn call_args(param: &Option<(syn::Ident, syn::Type)>) -> (TokenStream, TokenStream) {
    match param {
        Some((name, ty)) => (quote!(, #name: &#ty), quote!(#name)),
        None => (quote!(), quote!(&())),
    }
}

/// The typed call on the client stub.
fn client_method(method: &Method, private: &TokenStream) -> TokenStream {
    let Method {
        ident,
        wire,
        param,
        value,
        attrs,
        ..
    } = method;
    let (arg, params) = call_args(param);
    let timeout = method
        .timeout_ms
        .map(|ms| quote!(.timeout(::core::time::Duration::from_millis(#ms))));
    match method.kind {
        Kind::Request => {
            let doc =
                format!("Requests `{wire}`; `.await` it for the answer (or set options first).");
            quote! {
                #(#attrs)*
                #[doc = #doc]
                pub fn #ident(&self #arg) -> #private::Request<'_, #value> {
                    self.client.request(#wire, #params) #timeout
                }
            }
        }
        Kind::Notification => {
            let doc = format!("Notifies `{wire}` (no answer comes back).");
            quote! {
                #(#attrs)*
                #[doc = #doc]
                pub async fn #ident(&self #arg) -> ::core::result::Result<(), #private::CallError> {
                    self.client.notify(#wire, #params).await
                }
            }
        }
        Kind::Stream => {
            let doc = format!(
                "Opens the stream `{wire}`; `.await` it for its items (dropping it cancels)."
            );
            quote! {
                #(#attrs)*
                #[doc = #doc]
                pub fn #ident(&self #arg) -> #private::StreamRequest<'_, #value> {
                    self.client.stream(#wire, #params) #timeout
                }
            }
        }
    }
}

/// The typed call the server makes on a client.
fn connection_method(method: &Method, private: &TokenStream) -> TokenStream {
    let Method {
        ident,
        wire,
        param,
        value,
        attrs,
        ..
    } = method;
    let (arg, params) = call_args(param);
    match method.kind {
        Kind::Request => {
            let doc = match method.timeout_ms {
                Some(ms) => format!("Requests `{wire}` of the client, waiting up to {ms} ms."),
                None => format!(
                    "Requests `{wire}` of the client, waiting up to the endpoint's server-call \
                     timeout."
                ),
            };
            let call = match method.timeout_ms {
                Some(ms) => quote! {
                    self.conn
                        .request_timeout(#wire, #params, ::core::time::Duration::from_millis(#ms))
                        .await
                },
                None => quote!(self.conn.request(#wire, #params).await),
            };
            quote! {
                #(#attrs)*
                #[doc = #doc]
                pub async fn #ident(&self #arg) -> ::core::result::Result<#value, #private::ServerCallError> {
                    #call
                }
            }
        }
        Kind::Notification => {
            let doc = format!("Notifies `{wire}` to the client.");
            quote! {
                #(#attrs)*
                #[doc = #doc]
                pub fn #ident(&self #arg) -> ::core::result::Result<(), #private::ServerCallError> {
                    self.conn.notify(#wire, #params)
                }
            }
        }
        Kind::Stream => {
            let doc = format!("Opens the stream `{wire}` on the client (dropping it cancels).");
            quote! {
                #(#attrs)*
                #[doc = #doc]
                pub async fn #ident(&self #arg)
                    -> ::core::result::Result<#private::ClientStream<#value>, #private::ServerCallError>
                {
                    self.conn.stream(#wire, #params).await
                }
            }
        }
    }
}

/// The method's entry in the contract's schema; a type without `JsonSchema` fails to compile
/// at the type.
fn method_schema(method: &Method, private: &TokenStream) -> TokenStream {
    let wire = &method.wire;
    let kind = kind_variant(method.kind);
    let schema_of = |ty: &syn::Type| {
        quote_spanned! {ty.span()=>
            ::core::option::Option::Some(#private::schema_of::<#ty>(&mut generator))
        }
    };
    let none = quote!(::core::option::Option::None);
    let params = method
        .param
        .as_ref()
        .map_or(none.clone(), |(_, ty)| schema_of(ty));
    let result = method.value.as_ref().map_or(none.clone(), schema_of);
    let timeout = match method.timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => none,
    };
    let description = option_str(doc_text(&method.attrs).as_deref());
    let deprecated = method.attrs.iter().any(|a| a.path().is_ident("deprecated"));
    quote! {
        ::plexus::contract::MethodSchema {
            name: ::std::string::String::from(#wire),
            kind: ::plexus::contract::MethodKind::#kind,
            description: #description,
            params: #params,
            result: #result,
            timeout_ms: #timeout,
            deprecated: #deprecated,
        }
    }
}

/// The text of `attrs`' doc comments, one line each, trimmed; `None` without any.
fn doc_text(attrs: &[syn::Attribute]) -> Option<String> {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value:
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(text),
                        ..
                    }),
                ..
            }) => Some(text.value().trim().to_owned()),
            _ => None,
        })
        .collect();
    let text = lines.join("\n").trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// `Some(String::from(text))` or `None`, as code.
fn option_str(text: Option<&str>) -> TokenStream {
    match text {
        Some(text) => quote!(::core::option::Option::Some(::std::string::String::from(#text))),
        None => quote!(::core::option::Option::None),
    }
}

/// The `plexus::contract::MethodKind` variant of `kind`.
fn kind_variant(kind: Kind) -> TokenStream {
    match kind {
        Kind::Request => quote!(Request),
        Kind::Notification => quote!(Notification),
        Kind::Stream => quote!(Stream),
    }
}
