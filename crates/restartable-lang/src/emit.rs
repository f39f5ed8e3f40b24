//! The expansion of `section!`: a module holding the exits' enum, `run`
//! (one attempt), `retry` (bounded attempts), `twin` (the same body in
//! plain Rust) and the section's source for the model checker.

use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

use crate::arch::{self, Arch};
use crate::ir::{IdKind, Op, Section, Val, ValKind};
use crate::machine::{self, Variant};

/// Checks what only lowering can tell (the register budget), then emits.
pub(crate) fn section(s: &Section) -> syn::Result<TokenStream> {
    let need = [false, true]
        .map(|twice| {
            machine::registers_needed(
                s,
                &machine::allocate(
                    s,
                    Variant {
                        inject: false,
                        twice,
                    },
                ),
            )
        })
        .into_iter()
        .max()
        .unwrap_or(0);
    for a in Arch::ALL {
        let t = a.traits();
        if need > t.budget {
            return Err(syn::Error::new(
                s.name.span(),
                format!(
                    "this section needs {need} registers at once, and an `asm!` block on {} has {}: keep fewer values live (each live input, constant and `let` takes one; so do the area, the scratch register, the out pointer and the copy's two)",
                    t.name, t.budget
                ),
            ));
        }
    }
    if s.exits.len() > 32 {
        return Err(syn::Error::new(s.name.span(), "at most 32 exits"));
    }
    let rt = quote!(::restartable::__lang);
    let name = &s.name;
    let vis = &s.vis;
    let attrs = &s.attrs;
    let params: Vec<Ident> = s.inputs.iter().map(|i| i.name.clone()).collect();
    let tys: Vec<&syn::Type> = s.inputs.iter().map(|i| &i.ty).collect();
    let words: Vec<Ident> = (0..s.inputs.len())
        .map(|n| format_ident!("__i{n}"))
        .collect();
    let exit_variants = s.exits.iter().map(|e| {
        let n = &e.name;
        if e.fields.is_empty() {
            quote!(#[doc = "An exit of the section."] #n)
        } else {
            let f = &e.fields;
            quote!(#[doc = "An exit of the section, with the values it carries."] #n(#(#f),*))
        }
    });
    let ret = &s.ret;
    let value_ty = match ret.len() {
        1 => quote!(#(#ret)*),
        _ => quote!((#(#ret),*)),
    };
    let out_len = s.out_len().max(1);
    let committed = from_out(&rt, s.ret.len(), 0..s.ret.len());
    let decode = s.exits.iter().enumerate().map(|(k, e)| {
        let n = &e.name;
        let k = k as u32;
        if e.fields.is_empty() {
            quote!(#k => #rt::Run::Exit(Exit::#n))
        } else {
            let f = (0..e.fields.len()).map(|m| quote!(#rt::Word::from_word(__out[#m])));
            quote!(#k => #rt::Run::Exit(Exit::#n(#(#f),*)))
        }
    });
    let attempt = attempt_fn(s, &rt);
    let twin = crate::twin::body(s, &rt);
    let source = Literal::string(&s.source);
    let mm = s.index == IdKind::MmCid;
    let doc_run = format!("One attempt at the critical section `{name}`: `Committed`, `Exit`, or `Aborted` (preempted, migrated or signalled before the commit, or the thread's area is gone). Reads the id after arming the section.\n\n# Safety\nEvery address the body computes is valid for its access, aligned, and written only by sections indexed by the same id (or under the guard-and-fence protocol); see `restartable::section!`.");
    Ok(quote! {
        #(#attrs)*
        #[allow(non_snake_case, clippy::too_many_arguments, clippy::unused_unit, unused_parens, clippy::double_parens)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The exits of the section.
            #[derive(Clone, Copy, Debug, PartialEq, Eq)]
            pub enum Exit { #(#exit_variants),* }

            /// What the section returns when it commits.
            pub type Value = #value_ty;

            /// The section's source, for the model checker.
            pub const SOURCE: &str = #source;

            #attempt

            #[doc = #doc_run]
            #[inline(always)]
            pub unsafe fn run(__thread: &#rt::Thread, #(#params: #tys),*) -> #rt::Run<Value, Exit> {
                let Some(__area) = #rt::area(__thread, #mm) else {
                    return #rt::Run::Aborted;
                };
                let mut __out = [0u64; #out_len];
                #(let #words: u64 = #rt::Word::to_word(#params);)*
                // SAFETY: the caller's contract covers the body's accesses;
                // `area` is this thread's registered area and `out` ours.
                let __code = unsafe { attempt(__area, __out.as_mut_ptr(), #(#words),*) };
                #rt::detach(__thread);
                match __code {
                    #rt::COMMITTED => #rt::Run::Committed(#committed),
                    #(#decode,)*
                    _ => #rt::Run::Aborted,
                }
            }

            /// Attempts the section until it does not abort, at most
            /// `restartable::section::MAX_ATTEMPTS` times (each abort is
            /// counted with feature `abort-stats`); `Err` when every attempt
            /// aborted, and the caller completes the operation on its
            /// fallback path (with [`twin`]).
            ///
            /// # Safety
            /// As [`run`].
            #[inline(always)]
            pub unsafe fn retry(__thread: &#rt::Thread, #(#params: #tys),*) -> ::core::result::Result<#rt::Run<Value, Exit>, #rt::RetriesExhausted> {
                for _ in 0..#rt::MAX_ATTEMPTS {
                    // SAFETY: the caller's contract.
                    match unsafe { run(__thread, #(#params),*) } {
                        #rt::Run::Aborted => #rt::aborted(__thread, #mm),
                        done => return ::core::result::Result::Ok(done),
                    }
                }
                ::core::result::Result::Err(#rt::RetriesExhausted)
            }

            /// The same body in plain Rust, with the id given: the fallback
            /// path (run it only where no section can run on the same data
            /// at once, e.g. under the structure's guard) and the model for
            /// Miri. Never `Aborted`.
            ///
            /// # Safety
            /// As [`run`], and no critical section runs on the same data
            /// meanwhile.
            #[inline]
            pub unsafe fn twin(__id: u32, #(#params: #tys),*) -> #rt::Run<Value, Exit> {
                #twin
            }
        }
    })
}

/// `Word::from_word(out[i])` for each committed value, as one value or a
/// tuple.
fn from_out(rt: &TokenStream, n: usize, range: std::ops::Range<usize>) -> TokenStream {
    let items: Vec<TokenStream> = range
        .map(|m| quote!(#rt::Word::from_word(__out[#m])))
        .collect();
    match n {
        1 => quote!(#(#items)*),
        _ => quote!((#(#items),*)),
    }
}

/// The values a section returns or hands back are `Word`s in `out`.
fn attempt_fn(s: &Section, rt: &TokenStream) -> TokenStream {
    let words: Vec<Ident> = (0..s.inputs.len())
        .map(|n| format_ident!("__i{n}"))
        .collect();
    let mut per_arch = Vec::new();
    for a in Arch::ALL {
        let target = a.traits().target_arch;
        let mut variants = Vec::new();
        for (inject, twice) in [(false, false), (true, false), (false, true), (true, true)] {
            let v = Variant { inject, twice };
            variants.push(asm_block(s, &machine::allocate(s, v), a, v, rt));
        }
        let [plain, inj, tw, both] = <[TokenStream; 4]>::try_from(variants).expect("four variants");
        per_arch.push(quote! {
            #[cfg(all(target_arch = #target, target_os = "linux", not(miri)))]
            {
                if #rt::INJECT {
                    if #rt::COMPARE_TWICE { #both } else { #inj }
                } else if #rt::COMPARE_TWICE { #tw } else { #plain }
                #rt::COMMITTED
            }
        });
    }
    let targets: Vec<&str> = Arch::ALL.iter().map(|a| a.traits().target_arch).collect();
    quote! {
        /// One attempt, without the checks of [`run`]: the exit number,
        /// `COMMITTED` or `ABORTED`, with the values handed back in `out`.
        /// For fast paths that hold the area already.
        ///
        /// # Safety
        /// `area` is this thread's registered rseq area, `out` is valid for
        /// the values handed back, and the words are the inputs of [`run`].
        #[doc(hidden)]
        #[inline(always)]
        #[allow(unused_variables)]
        pub unsafe fn attempt(__area: *const u8, __out: *mut u64, #(#words: u64),*) -> u32 {
            #(#per_arch)*
            #[cfg(not(all(any(#(target_arch = #targets),*), target_os = "linux", not(miri))))]
            {
                #rt::ABORTED
            }
        }
    }
}

fn asm_block(
    s: &Section,
    alloc: &machine::Alloc,
    a: Arch,
    v: Variant,
    rt: &TokenStream,
) -> TokenStream {
    let template = arch::template(s, a, v);
    let lines: Vec<Literal> = template.lines().map(Literal::string).collect();
    let mut ops = vec![quote!(area = in(reg) __area)];
    if s.has_out() {
        ops.push(quote!(out = in(reg) __out));
    }
    for k in 0..alloc.slots {
        // A slot no instruction names (a fused commit's) gets no operand.
        if !template.contains(&format!("{{t{k}}}")) && !template.contains(&format!("{{t{k}:")) {
            continue;
        }
        let name = format_ident!("t{k}");
        let first = s
            .values
            .iter()
            .enumerate()
            .find(|(v, value)| alloc.slot[*v] == Some(k) && value.kind != ValKind::Temp);
        ops.push(match first.map(|(_, value)| &value.kind) {
            Some(ValKind::Input(n)) => {
                let w = format_ident!("__i{n}");
                quote!(#name = inout(reg) #w => _)
            }
            Some(ValKind::Const(n)) => {
                let c = &s.consts[*n];
                quote!(#name = inout(reg) (#c) as u64 => _)
            }
            _ => quote!(#name = out(reg) _),
        });
    }
    ops.push(quote!(scratch = out(reg) _));
    if s.ops.iter().any(|op| matches!(op, Op::Copy { .. })) {
        ops.push(quote!(k0 = out(reg) _));
        ops.push(quote!(k1 = out(reg) _));
    }
    if v.inject {
        ops.push(quote!(delays = sym #rt::DELAYS));
    }
    let id = match s.index {
        IdKind::Cpu => quote!(#rt::OFFSET_CPU_ID),
        IdKind::MmCid => quote!(#rt::OFFSET_MM_CID),
    };
    if s.ops
        .iter()
        .any(|op| matches!(op, Op::ReadId { .. } | Op::CheckId { .. }))
    {
        ops.push(quote!(id = const #id));
    }
    ops.push(quote!(rseq_cs = const #rt::OFFSET_RSEQ_CS));
    ops.push(quote!(signature = const #rt::SIGNATURE));
    for k in used_exits(s) {
        let name = format_ident!("x{k}");
        let code = k as u32;
        ops.push(quote!(#name = label { return #code; }));
    }
    ops.push(quote!(aborted = label { return #rt::ABORTED; }));
    if v.twice {
        ops.push(quote!(ct_fail = label { #rt::compare_twice_failed() }));
    }
    quote! {
        // SAFETY: the caller's contract (see `attempt`); the block writes
        // `rseq_cs` in the area, the body's stores and `out`.
        unsafe {
            ::core::arch::asm!(#(#lines),*, #(#ops),*, options(nostack));
        }
    }
}

/// The declared exits some op of the body leaves through.
fn used_exits(s: &Section) -> Vec<usize> {
    let mut used: Vec<usize> = s
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Exit { exit, .. } => Some(*exit),
            Op::ReadId {
                bound: Some(_),
                exit,
                ..
            }
            | Op::CheckId { exit, .. } => Some(*exit),
            _ => None,
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    used
}

/// The Rust local holding value `v` in the twin.
pub(crate) fn local(v: Val) -> Ident {
    format_ident!("__v{v}")
}
