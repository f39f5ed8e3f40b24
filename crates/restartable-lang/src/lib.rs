//! The section language of `restartable`: a critical section written once,
//! as a small Rust-like body, becomes one `asm!` block per architecture
//! (x86-64, aarch64, riscv64) with its descriptor, tables, abort handler
//! and exits, plus a plain-Rust twin of the same body.
//!
//! Users write sections with `restartable::section!` (documented there);
//! this crate is what the macro runs, and what the model checker
//! ([`model`]) uses to run a section's lowered form without a kernel.
//!
//! The layers: [`parse`](mod@parse) checks the body and produces the
//! arch-neutral [`ir`]; [`machine`] lowers it to one small instruction
//! vocabulary under each architecture's traps ([`arch`]); `emit` and
//! `twin` write the Rust; [`model`] interprets the machine form.

pub mod arch;
mod emit;
pub mod ir;
pub mod machine;
pub mod model;
mod parse;
mod twin;

use proc_macro2::TokenStream;

pub use ir::Section;

/// The expansion of `section!` (errors become `compile_error!`s at the
/// offending tokens).
pub fn expand(input: TokenStream) -> TokenStream {
    match parse::section(input, parse::Mode::Checked).and_then(|s| emit::section(&s)) {
        Ok(t) => t,
        Err(e) => e.to_compile_error(),
    }
}

/// Parses and checks a section from its source (as in `SOURCE` of a
/// generated module).
pub fn parse(source: &str) -> syn::Result<Section> {
    parse::section(source.parse()?, parse::Mode::Checked)
}

/// Parses a section without the language's safety rules: for the model
/// checker's deliberately broken sections only. A read id needs no range
/// check, speculative stores need no owner, and a commit followed by more
/// body is a plain store.
pub fn parse_unchecked(source: &str) -> syn::Result<Section> {
    parse::section(source.parse()?, parse::Mode::Unchecked)
}
