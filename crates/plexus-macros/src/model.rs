//! A contract as the macro understands it, read from the trait, with the errors a person can
//! act on, each pointing at the method (or attribute) at fault.

use proc_macro2::Span;
use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, LitStr, PathArguments, ReturnType,
    TraitItem, TraitItemFn, Type,
};

/// What a method is on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Notification,
    Stream,
}

/// Who may call a method.
pub(crate) enum Access {
    /// Nothing declared (strict mode refuses to start).
    Undeclared,
    Public,
    Requires(LitStr),
}

/// One method of a contract.
pub(crate) struct Method {
    pub(crate) ident: Ident,
    /// The name on the wire: `<Contract>.<method>`.
    pub(crate) wire: String,
    pub(crate) kind: Kind,
    /// Whether the implementation takes the call's `CallContext` first (the caller does not
    /// send it).
    pub(crate) context: Option<(Ident, Type)>,
    /// The parameter's name and type; `None`: the method takes none (sent as `null`).
    pub(crate) param: Option<(Ident, Type)>,
    /// The whole return type as written (`()` for a notification).
    pub(crate) output: Type,
    /// A request's result, or a stream's item.
    pub(crate) value: Option<Type>,
    /// A request's or a stream's error type (`E` of its `Result`).
    pub(crate) error: Option<Type>,
    pub(crate) access: Access,
    /// A deadline of its own, in milliseconds (`#[timeout_ms = N]`), for callers' stubs.
    pub(crate) timeout_ms: Option<u64>,
    /// Attributes the macro does not read (docs, `deprecated`), kept on both sides.
    pub(crate) attrs: Vec<Attribute>,
}

/// The contract: the trait and its methods.
pub(crate) struct Contract {
    pub(crate) name: String,
    pub(crate) methods: Vec<Method>,
}

/// The macro's own attributes on a method.
const KINDS: [&str; 2] = ["notification", "stream"];
const OWN: [&str; 6] = [
    "notification",
    "stream",
    "public",
    "requires",
    "rename",
    "timeout_ms",
];

/// `item` with the macro's own attributes taken off its methods (for a trait that failed to
/// read, so that the compiler reports only why).
pub(crate) fn without_own_attributes(mut item: ItemTrait) -> ItemTrait {
    for entry in &mut item.items {
        if let TraitItem::Fn(method) = entry {
            method
                .attrs
                .retain(|attr| !OWN.iter().any(|own| attr.path().is_ident(own)));
        }
    }
    item
}

impl Contract {
    /// Reads `item`, named `name` on the wire (the trait's name unless given).
    pub(crate) fn read(item: &ItemTrait, name: Option<(String, Span)>) -> syn::Result<Self> {
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            return Err(syn::Error::new(
                item.generics.span(),
                "a contract cannot be generic: its methods' types are the wire format",
            ));
        }
        if let Some(unsafety) = item.unsafety {
            return Err(syn::Error::new(
                unsafety.span(),
                "a contract is not an unsafe trait",
            ));
        }
        let name = match name {
            Some((name, span)) => {
                check_wire_name(&name, span)?;
                name
            }
            None => item.ident.unraw().to_string(),
        };
        let mut methods: Vec<Method> = Vec::new();
        let mut errors: Option<syn::Error> = None;
        for entry in &item.items {
            let result = match entry {
                TraitItem::Fn(method) => Method::read(method, &name),
                other => Err(syn::Error::new(
                    other.span(),
                    "a contract holds only methods (`async fn name(&self, params: P) -> ...`)",
                )),
            };
            match result {
                Ok(method) => {
                    if let Some(first) = methods.iter().find(|m| m.wire == method.wire) {
                        let message = format!(
                            "`{}` is the wire name of `{}` too: give one of them another with \
                             #[rename = \"...\"]",
                            method.wire, first.ident
                        );
                        push(&mut errors, syn::Error::new(method.ident.span(), message));
                    }
                    methods.push(method);
                }
                Err(e) => push(&mut errors, e),
            }
        }
        match errors {
            Some(errors) => Err(errors),
            None => Ok(Self { name, methods }),
        }
    }
}

fn push(errors: &mut Option<syn::Error>, error: syn::Error) {
    match errors {
        Some(errors) => errors.combine(error),
        None => *errors = Some(error),
    }
}

impl Method {
    fn read(method: &TraitItemFn, contract: &str) -> syn::Result<Self> {
        let sig = &method.sig;
        let ident = sig.ident.clone();
        if ["new", "client", "conn", "clone"]
            .iter()
            .any(|taken| ident == taken)
        {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "`{ident}` is taken by the typed stubs' own methods: name it otherwise, \
                     and keep its name on the wire with #[rename = \"{ident}\"]"
                ),
            ));
        }
        if sig.asyncness.is_none() {
            return Err(syn::Error::new(
                sig.fn_token.span(),
                format!("contract method `{ident}` must be `async fn`"),
            ));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            return Err(syn::Error::new(
                sig.generics.span(),
                format!(
                    "contract method `{ident}` cannot be generic: its types are the wire format"
                ),
            ));
        }
        if let Some(body) = &method.default {
            return Err(syn::Error::new(
                body.span(),
                format!("contract method `{ident}` has no body here: the implementation gives it"),
            ));
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(receiver))
                if receiver.reference.is_some() && receiver.mutability.is_none() => {}
            other => {
                let span = other.map_or(sig.paren_token.span.join(), Spanned::span);
                return Err(syn::Error::new(
                    span,
                    format!(
                        "contract method `{ident}` takes `&self`: calls run at once, so an \
                         implementation keeps its state behind `&self` (a lock, an atomic)"
                    ),
                ));
            }
        }
        let mut typed = Vec::new();
        for input in inputs.by_ref().take(2) {
            let FnArg::Typed(arg) = input else {
                return Err(syn::Error::new(input.span(), "unexpected receiver"));
            };
            let syn::Pat::Ident(name) = arg.pat.as_ref() else {
                return Err(syn::Error::new(
                    arg.pat.span(),
                    "a contract method's parameter is a plain name (`params: P`)",
                ));
            };
            typed.push((name.ident.clone(), (*arg.ty).clone()));
        }
        for (_, ty) in &typed {
            owned(ty)?;
        }
        if let ReturnType::Type(_, ty) = &sig.output {
            owned(ty)?;
        }
        let mut typed = typed.into_iter().peekable();
        let context = typed.next_if(|(_, ty)| is_context(ty));
        let param = typed.next();
        if let Some((name, _)) = typed.next() {
            return Err(syn::Error::new(
                name.span(),
                format!(
                    "contract method `{ident}` takes one parameter at most: put several in a \
                     struct (it is one value on the wire)"
                ),
            ));
        }
        if let Some((name, _)) = param.as_ref().filter(|(_, ty)| is_context(ty)) {
            return Err(syn::Error::new(
                name.span(),
                format!("contract method `{ident}` takes its `CallContext` first"),
            ));
        }
        if let Some(extra) = inputs.next() {
            return Err(syn::Error::new(
                extra.span(),
                format!(
                    "contract method `{ident}` takes one parameter at most: put several in a \
                     struct (it is one value on the wire)"
                ),
            ));
        }

        let mut kind = Kind::Request;
        let mut access = Access::Undeclared;
        let mut wire = format!("{contract}.{}", ident.unraw());
        let mut renamed = false;
        let mut timeout_ms = None;
        let mut attrs = Vec::new();
        for attr in &method.attrs {
            let path = attr.path();
            if let Some(found) = KINDS.iter().find(|k| path.is_ident(k)) {
                attr.meta.require_path_only()?;
                if kind != Kind::Request {
                    return Err(syn::Error::new(
                        attr.span(),
                        "a method is a request, a #[notification] or a #[stream]: one of them",
                    ));
                }
                kind = if *found == "stream" {
                    Kind::Stream
                } else {
                    Kind::Notification
                };
            } else if path.is_ident("public") {
                attr.meta.require_path_only()?;
                set_access(&mut access, Access::Public, attr.span())?;
            } else if path.is_ident("requires") {
                let permission: LitStr = attr.parse_args()?;
                if permission.value().trim().is_empty() {
                    return Err(syn::Error::new(
                        permission.span(),
                        "#[requires(\"...\")] names a permission",
                    ));
                }
                set_access(&mut access, Access::Requires(permission), attr.span())?;
            } else if path.is_ident("timeout_ms") {
                let value = &attr.meta.require_name_value()?.value;
                let millis = match value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Int(millis),
                        ..
                    }) => millis.base10_parse::<u64>().ok().filter(|ms| *ms > 0),
                    _ => None,
                };
                let Some(millis) = millis else {
                    return Err(syn::Error::new(
                        value.span(),
                        "#[timeout_ms = N] takes a number of milliseconds above 0",
                    ));
                };
                timeout_ms = Some(millis);
            } else if path.is_ident("rename") {
                let value = &attr.meta.require_name_value()?.value;
                let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(name),
                    ..
                }) = value
                else {
                    return Err(syn::Error::new(
                        value.span(),
                        "#[rename = \"name\"] takes a string",
                    ));
                };
                if std::mem::replace(&mut renamed, true) {
                    return Err(syn::Error::new(attr.span(), "one #[rename] per method"));
                }
                check_wire_name(&name.value(), name.span())?;
                wire = format!("{contract}.{}", name.value());
            } else {
                attrs.push(attr.clone());
            }
        }

        let (output, value) = match (kind, &sig.output) {
            (Kind::Notification, ReturnType::Default) => (syn::parse_quote!(()), None),
            (Kind::Notification, ReturnType::Type(_, ty)) => {
                return Err(syn::Error::new(
                    ty.span(),
                    format!(
                        "notification `{ident}` returns nothing: no answer goes back (make it a \
                         request to answer)"
                    ),
                ));
            }
            (Kind::Request, ReturnType::Type(_, ty)) => {
                let ok = result_ok(ty).ok_or_else(|| {
                    syn::Error::new(
                        ty.span(),
                        format!(
                            "request `{ident}` returns `Result<T, E>`: `T` is its answer, `E` \
                             (into `RpcError`) its error"
                        ),
                    )
                })?;
                ((**ty).clone(), Some(ok.clone()))
            }
            (Kind::Stream, ReturnType::Type(_, ty)) => {
                let item = result_ok(ty).and_then(stream_item).ok_or_else(|| {
                    syn::Error::new(
                        ty.span(),
                        format!(
                            "stream `{ident}` returns `Result<ItemStream<T>, E>` \
                             (`plexus::contract::ItemStream`): `T` is each item"
                        ),
                    )
                })?;
                ((**ty).clone(), Some(item.clone()))
            }
            (_, ReturnType::Default) => {
                return Err(syn::Error::new(
                    sig.paren_token.span.join(),
                    format!(
                        "method `{ident}` returns nothing: a request returns `Result<T, E>`, a \
                         stream `Result<ItemStream<T>, E>`, or mark it #[notification]"
                    ),
                ));
            }
        };
        let error = match &sig.output {
            ReturnType::Type(_, ty) => result_err(ty).cloned(),
            ReturnType::Default => None,
        };
        Ok(Self {
            ident,
            wire,
            kind,
            context,
            param,
            output,
            value,
            error,
            access,
            timeout_ms,
            attrs,
        })
    }
}

fn set_access(access: &mut Access, new: Access, span: Span) -> syn::Result<()> {
    if !matches!(access, Access::Undeclared) {
        return Err(syn::Error::new(
            span,
            "a method is #[public] or #[requires(\"...\")]: one of them, once",
        ));
    }
    *access = new;
    Ok(())
}

/// The first generic argument of the type's last path segment, when that segment is `name`.
fn generic_of<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

/// Whether `ty` names `CallContext` (the server's, whatever path leads to it).
fn is_context(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.path.segments.last().is_some_and(|s| s.ident == "CallContext"))
}

/// `E` of `Result<T, E>`.
fn result_err(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else {
        return None;
    };
    args.args
        .iter()
        .filter_map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .nth(1)
}

/// `T` of `Result<T, E>`.
fn result_ok(ty: &Type) -> Option<&Type> {
    generic_of(ty, "Result")
}

/// `T` of `ItemStream<T>` (or `ItemStream<T, E>`).
fn stream_item(ty: &Type) -> Option<&Type> {
    generic_of(ty, "ItemStream")
}

/// Refuses a wire name the server could not serve: empty, with spaces, or reserved (`$`).
fn check_wire_name(name: &str, span: Span) -> syn::Result<()> {
    if name.is_empty() || name.starts_with('$') || name.chars().any(char::is_whitespace) {
        return Err(syn::Error::new(
            span,
            "a name on the wire is not empty, has no spaces, and does not start with `$` \
             (reserved for the protocol's own)",
        ));
    }
    Ok(())
}

/// Refuses a type that borrows or hides what it is: values cross the wire, so they are
/// owned (`DeserializeOwned`) and named.
fn owned(ty: &Type) -> syn::Result<()> {
    fn walk(tokens: TokenStream) -> Option<TokenTree> {
        for token in tokens {
            match &token {
                TokenTree::Punct(p) if p.as_char() == '&' || p.as_char() == '\'' => {
                    return Some(token);
                }
                TokenTree::Ident(i) if i == "impl" || i == "dyn" => return Some(token),
                TokenTree::Group(g) => {
                    if let Some(found) = walk(g.stream()) {
                        return Some(found);
                    }
                }
                _ => {}
            }
        }
        None
    }
    match walk(ty.to_token_stream()) {
        Some(found) => Err(syn::Error::new(
            found.span(),
            "values cross the wire: parameter and result types are owned and named (no \
             references, lifetimes, `impl` or `dyn`: `String`, not `&str`)",
        )),
        None => Ok(()),
    }
}
