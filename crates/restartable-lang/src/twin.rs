//! The plain-Rust twin of a section: the same ops, in the same order, on
//! relaxed atomics (acquire and release where the body says), with the id
//! given instead of read. Generated from the same ops as the assembly, so
//! the fallback path cannot disagree with the section.

use proc_macro2::TokenStream;
use quote::quote;

use crate::emit::local;
use crate::ir::{AluOp, Cond, Op, Operand, Section, ValKind};

pub(crate) fn body(s: &Section, rt: &TokenStream) -> TokenStream {
    let mut out = Vec::new();
    for (v, value) in s.values.iter().enumerate() {
        let l = local(v);
        match &value.kind {
            ValKind::Input(n) => {
                let name = &s.inputs[*n].name;
                out.push(quote!(let #l: u64 = #rt::Word::to_word(#name);));
            }
            ValKind::Const(n) => {
                let c = &s.consts[*n];
                out.push(quote!(let #l: u64 = (#c) as u64;));
            }
            ValKind::Temp => {}
        }
    }
    let operand = |o: &Operand| match o {
        Operand::Val(v) => {
            let l = local(*v);
            quote!(#l)
        }
        Operand::Imm(i) => {
            let i = *i as u64;
            quote!(#i)
        }
    };
    let exit = |k: usize, vals: &[usize]| {
        let e = &s.exits[k].name;
        if vals.is_empty() {
            quote!(return #rt::Run::Exit(Exit::#e))
        } else {
            let v = vals.iter().map(|v| local(*v));
            quote!(return #rt::Run::Exit(Exit::#e(#(#rt::Word::from_word(#v)),*)))
        }
    };
    for op in &s.ops {
        out.push(match op {
            Op::ReadId { dst, bound, exit: k } => {
                let d = local(*dst);
                match bound {
                    Some(b) => {
                        let b = local(*b);
                        let leave = exit(*k, &[]);
                        quote!(let #d: u64 = __id as u64; if #d >= #b { #leave; })
                    }
                    None => quote!(let #d: u64 = __id as u64;),
                }
            }
            Op::CheckId { expect, exit: k } => {
                let e = local(*expect);
                let leave = exit(*k, &[]);
                quote!(if __id as u64 != #e { #leave; })
            }
            Op::Load { dst, addr, width, signed, acquire } => {
                let d = local(*dst);
                let b = local(addr.base);
                let off = addr.offset as u64;
                let bytes = width.bytes() as u8;
                // SAFETY: the caller's contract covers every access.
                quote!(let #d: u64 = unsafe { #rt::load(#b.wrapping_add(#off), #bytes, #signed, #acquire) };)
            }
            Op::Store { addr, src, width } | Op::Commit { addr, src, width, release: false } => {
                let b = local(addr.base);
                let off = addr.offset as u64;
                let v = local(*src);
                let bytes = width.bytes() as u8;
                quote!(unsafe { #rt::store(#b.wrapping_add(#off), #bytes, #v, false) };)
            }
            Op::Commit { addr, src, width, release: true } => {
                let b = local(addr.base);
                let off = addr.offset as u64;
                let v = local(*src);
                let bytes = width.bytes() as u8;
                quote!(unsafe { #rt::store(#b.wrapping_add(#off), #bytes, #v, true) };)
            }
            Op::Alu { dst, op, a, b } => {
                let d = local(*dst);
                let a = local(*a);
                let b = operand(b);
                let e = match op {
                    AluOp::Add => quote!(#a.wrapping_add(#b)),
                    AluOp::Sub => quote!(#a.wrapping_sub(#b)),
                    AluOp::And => quote!(#a & #b),
                    AluOp::Or => quote!(#a | #b),
                    AluOp::Xor => quote!(#a ^ #b),
                    AluOp::Shl => quote!(#a << #b),
                    AluOp::Shr => quote!(#a >> #b),
                };
                quote!(let #d: u64 = #e;)
            }
            Op::Exit { cond, a, b, exit: k, vals } => {
                let a = local(*a);
                let b = operand(b);
                let c = match cond {
                    Cond::Eq => quote!(#a == #b),
                    Cond::Ne => quote!(#a != #b),
                    Cond::Ltu => quote!(#a < #b),
                    Cond::Leu => quote!(#a <= #b),
                    Cond::Gtu => quote!(#a > #b),
                    Cond::Geu => quote!(#a >= #b),
                    Cond::Lts => quote!((#a as i64) < (#b as i64)),
                    Cond::Les => quote!((#a as i64) <= (#b as i64)),
                    Cond::Gts => quote!((#a as i64) > (#b as i64)),
                    Cond::Ges => quote!((#a as i64) >= (#b as i64)),
                };
                let leave = exit(*k, vals);
                quote!(if #c { #leave; })
            }
            Op::Copy { dst, src, len } => {
                let (d, sr, l) = (local(*dst), local(*src), local(*len));
                quote!(unsafe { #rt::copy(#d, #sr, #l) };)
            }
        });
    }
    let rets: Vec<TokenStream> = s
        .ret_vals
        .iter()
        .map(|v| {
            let l = local(*v);
            quote!(#rt::Word::from_word(#l))
        })
        .collect();
    let value = match rets.len() {
        1 => quote!(#(#rets)*),
        _ => quote!((#(#rets),*)),
    };
    quote! {
        #(#out)*
        #rt::Run::Committed(#value)
    }
}
