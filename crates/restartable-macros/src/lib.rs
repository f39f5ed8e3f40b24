//! The `section!` macro: see `restartable::section!` for the language and
//! `restartable-lang` for what the expansion does.

use proc_macro::TokenStream;

/// Expands a critical section written in the section language into its
/// `asm!` blocks (x86-64, aarch64, riscv64), descriptors and plain-Rust
/// twin. Documented at `restartable::section!`.
#[proc_macro]
pub fn section(input: TokenStream) -> TokenStream {
    restartable_lang::expand(input.into()).into()
}
