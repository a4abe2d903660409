//! `#[contract]`: an API declared once as a Rust trait, checked by the compiler at both ends.
//! Use it through the `plexus` crate (`plexus::contract`), whose documentation shows it; the
//! code it writes names `plexus`'s paths.
//!
//! Files: `model.rs` (the trait read into a contract, with the errors a misuse gets),
//! `expand.rs` (what is written from it).

mod expand;
mod model;

use proc_macro::TokenStream;
use syn::parse::Parser;

/// Declares a contract; see `plexus::contract`.
#[proc_macro_attribute]
pub fn contract(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = syn::parse_macro_input!(item as syn::ItemTrait);
    let mut name = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let value: syn::LitStr = meta.value()?.parse()?;
            name = Some((value.value(), value.span()));
            Ok(())
        } else {
            Err(meta.error("#[contract] takes `name = \"...\"` (the prefix on the wire) only"))
        }
    });
    if let Err(e) = parser.parse(args) {
        return e.to_compile_error().into();
    }
    match model::Contract::read(&item, name) {
        Ok(contract) => expand::expand(&item, &contract).into(),
        // The trait stays (without the macro's attributes), so that only the errors show.
        Err(e) => {
            let errors = e.to_compile_error();
            let item = model::without_own_attributes(item);
            quote::quote!(#item #errors).into()
        }
    }
}
