//! AArch64. Three-operand ALU; add/sub immediates of 12 bits, logical
//! immediates only as bit patterns (so the language loads them); `ldar`
//! and `stlr` take a base register alone; `b.cond` reaches ±1 MiB, so a
//! branch to a stub in `__rseq_failure` is an inverted short branch over a
//! `b` (±128 MiB). The signature is the `brk` word glibc registers with.

use super::{Names, Traits};
use crate::ir::{AluOp, Cond, Width};
use crate::machine::{Goto, Inst, Reg, Rhs};

pub(super) static TRAITS: Traits = Traits {
    name: "aarch64",
    target_arch: "aarch64",
    // x0-x30, less x19 (LLVM's base pointer) and x29 (frame pointer);
    // x18 is usable on Linux.
    budget: 29,
    two_operand: false,
    flags: true,
    tso: false,
    indexed: true,
    fences: false,
    acquire_base_only: true,
    release_base_only: true,
    inline_exits: false,
    mem_add: false,
    // Scaled unsigned 12-bit offsets, or unscaled signed 9-bit ones.
    mem_offset: |off, w| {
        (0..4096 * w.bytes() as i64).contains(&off) && off % w.bytes() as i64 == 0
            || (-256..256).contains(&off)
    },
    alu_imm: |op, imm| {
        matches!(op, AluOp::Add | AluOp::Sub | AluOp::Shl | AluOp::Shr) && (0..4096).contains(&imm)
    },
};

fn cc(c: Cond) -> &'static str {
    match c {
        Cond::Eq => "eq",
        Cond::Ne => "ne",
        Cond::Ltu => "lo",
        Cond::Leu => "ls",
        Cond::Gtu => "hi",
        Cond::Geu => "hs",
        Cond::Lts => "lt",
        Cond::Les => "le",
        Cond::Gts => "gt",
        Cond::Ges => "ge",
    }
}

fn wreg(n: &Names, r: Reg, w: Width) -> String {
    if w == Width::W64 {
        n.reg(r, "")
    } else {
        n.reg(r, "w")
    }
}

fn suffix(w: Width) -> &'static str {
    match w {
        Width::W8 => "b",
        Width::W16 => "h",
        _ => "",
    }
}

fn mem(n: &Names, base: Reg, index: Option<Reg>, off: i64) -> String {
    match (index, off) {
        (Some(i), _) => format!("[{}, {}]", n.reg(base, ""), n.reg(i, "")),
        (None, 0) => format!("[{}]", n.reg(base, "")),
        (None, off) => format!("[{}, #{off}]", n.reg(base, "")),
    }
}

pub(super) fn spell(i: &Inst, n: &Names) -> String {
    let a = n.reg(Reg::Area, "");
    match *i {
        Inst::Arm => format!(
            "adrp {s}, 20b\nadd {s}, {s}, :lo12:20b\nstr {s}, [{a}, #{{rseq_cs}}]",
            s = n.reg(Reg::Scratch, "")
        ),
        Inst::Start => "21:".into(),
        Inst::PostCommit => "22:".into(),
        Inst::Label(l) => format!("{l}:"),
        Inst::ReadId { dst } => format!("ldr {}, [{a}, #{{id}}]", n.reg(dst, "w")),
        Inst::Load { dst, base, index, off, width, signed, acquire } => {
            let m = mem(n, base, index, off);
            match (acquire, signed, width) {
                (true, _, w) => format!("ldar{} {}, {m}", suffix(w), wreg(n, dst, w)),
                (false, false, w) => format!("ldr{} {}, {m}", suffix(w), wreg(n, dst, w)),
                (false, true, Width::W32) => format!("ldrsw {}, {m}", n.reg(dst, "")),
                (false, true, w) => format!("ldrs{} {}, {m}", suffix(w), n.reg(dst, "")),
            }
        }
        Inst::Store { src, base, index, off, width, release } => {
            let op = if release { "stlr" } else { "str" };
            format!("{op}{} {}, {}", suffix(width), wreg(n, src, width), mem(n, base, index, off))
        }
        Inst::Extend { dst, width } => {
            let op = match width {
                Width::W8 => "sxtb",
                Width::W16 => "sxth",
                _ => "sxtw",
            };
            format!("{op} {}, {}", n.reg(dst, ""), n.reg(dst, "w"))
        }
        Inst::Fence(_) => unreachable!("aarch64 orders with ldar/stlr"),
        Inst::AddMem { .. } => unreachable!("aarch64 has no add to memory"),
        Inst::Mov { dst, src } => format!("mov {}, {}", n.reg(dst, ""), n.reg(src, "")),
        Inst::Li { dst, imm } => format!("mov {}, #{imm}", n.reg(dst, "")),
        Inst::Alu { op, dst, a: x, b } => {
            let name = match op {
                AluOp::Add => "add",
                AluOp::Sub => "sub",
                AluOp::And => "and",
                AluOp::Or => "orr",
                AluOp::Xor => "eor",
                AluOp::Shl => "lsl",
                AluOp::Shr => "lsr",
            };
            let b = match b {
                Rhs::R(r) => n.reg(r, ""),
                Rhs::I(i) => format!("#{i}"),
            };
            format!("{name} {}, {}, {b}", n.reg(dst, ""), n.reg(x, ""))
        }
        Inst::Cmp { a: x, b } => match b {
            Rhs::R(r) => format!("cmp {}, {}", n.reg(x, ""), n.reg(r, "")),
            Rhs::I(i) => format!("cmp {}, #{i}", n.reg(x, "")),
        },
        Inst::Bcc { cond, to } => {
            let t = n.target(to);
            if far(to, n) {
                format!("b.{} 29f\nb {t}\n29:", cc(cond.negate()))
            } else {
                format!("b.{} {t}", cc(cond))
            }
        }
        Inst::Brr { .. } => unreachable!("aarch64 branches on flags"),
        Inst::Jmp { to } => format!("b {}", n.target(to)),
        Inst::Inject(point) => format!(
            "adrp {s}, {{delays}}\nadd {s}, {s}, :lo12:{{delays}}\nldr {s}, [{s}, #{}]\ncbz {s}, 98f\n97:\nyield\nsubs {s}, {s}, #1\nb.ne 97b\n98:",
            8 * point,
            s = n.reg(Reg::Scratch, "")
        ),
    }
}

/// A stub in `__rseq_failure` may lie beyond `b.cond`'s reach.
fn far(to: Goto, n: &Names) -> bool {
    matches!(to, Goto::Exit(op) if super::stub_number(n.s, op).is_some())
}

pub(super) fn tail(n: &Names) -> String {
    let mut t =
        String::from(".pushsection __rseq_failure, \"ax\"\n.inst {signature}\n23:\nb {aborted}\n");
    for op in 0..n.s.ops.len() {
        if let Some(k) = super::stub_number(n.s, op) {
            t += &format!("{}:\n", 1000 + k);
            for (m, v) in n.exit_vals(op).iter().enumerate() {
                t += &format!("str {}, [{{out}}, #{}]\n", n.reg(Reg::V(*v), ""), 8 * m);
            }
            t += &format!("b {{x{}}}\n", super::exit_of(n.s, op));
        }
    }
    t + ".popsection"
}
