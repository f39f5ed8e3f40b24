//! x86-64 (Intel syntax, as `asm!` takes it). TSO, so release and acquire
//! are plain accesses; two-operand ALU; 32-bit sign-extended immediates;
//! `jcc` reaches anywhere. The signature hides inside a `ud1` encoding
//! (`0f b9 3d` then the 4 bytes), so falling into it traps.

use super::{Names, Traits};
use crate::ir::{AluOp, Cond, Width};
use crate::machine::{Inst, Reg, Rhs};

pub(super) static TRAITS: Traits = Traits {
    name: "x86-64",
    target_arch: "x86_64",
    // 16, less rsp, rbp (frame pointer) and rbx (LLVM's base pointer).
    budget: 13,
    two_operand: true,
    flags: true,
    tso: true,
    indexed: true,
    fences: false,
    acquire_base_only: false,
    release_base_only: false,
    inline_exits: false,
    mem_add: true,
    mem_offset: |off, _| i32::try_from(off).is_ok(),
    alu_imm: |_, imm| i32::try_from(imm).is_ok(),
};

fn modifier(w: Width) -> &'static str {
    match w {
        Width::W8 => "l",
        Width::W16 => "x",
        Width::W32 => "e",
        Width::W64 => "",
    }
}

fn ptr(w: Width) -> &'static str {
    match w {
        Width::W8 => "byte",
        Width::W16 => "word",
        Width::W32 => "dword",
        Width::W64 => "qword",
    }
}

fn mem(n: &Names, base: Reg, index: Option<Reg>, off: i64) -> String {
    let mut m = format!("[{}", n.reg(base, ""));
    if let Some(i) = index {
        m += &format!(" + {}", n.reg(i, ""));
    }
    if off != 0 {
        m += &format!(" + {off}");
    }
    m + "]"
}

fn rhs(n: &Names, b: Rhs) -> String {
    match b {
        Rhs::R(r) => n.reg(r, ""),
        Rhs::I(i) => i.to_string(),
    }
}

fn cc(c: Cond) -> &'static str {
    match c {
        Cond::Eq => "e",
        Cond::Ne => "ne",
        Cond::Ltu => "b",
        Cond::Leu => "be",
        Cond::Gtu => "a",
        Cond::Geu => "ae",
        Cond::Lts => "l",
        Cond::Les => "le",
        Cond::Gts => "g",
        Cond::Ges => "ge",
    }
}

pub(super) fn spell(i: &Inst, n: &Names) -> String {
    match *i {
        Inst::Arm => format!(
            "lea {s}, [rip + 20b]\nmov qword ptr [{a} + {{rseq_cs}}], {s}",
            s = n.reg(Reg::Scratch, ""),
            a = n.reg(Reg::Area, "")
        ),
        Inst::Start => "21:".into(),
        Inst::PostCommit => "22:".into(),
        Inst::Label(l) => format!("{l}:"),
        Inst::ReadId { dst } => format!("mov {}, dword ptr [{} + {{id}}]", n.reg(dst, "e"), n.reg(Reg::Area, "")),
        Inst::Load { dst, base, index, off, width, signed, .. } => {
            let m = mem(n, base, index, off);
            match (width, signed) {
                (Width::W64, _) => format!("mov {}, qword ptr {m}", n.reg(dst, "")),
                (Width::W32, false) => format!("mov {}, dword ptr {m}", n.reg(dst, "e")),
                (Width::W32, true) => format!("movsxd {}, dword ptr {m}", n.reg(dst, "")),
                (w, false) => format!("movzx {}, {} ptr {m}", n.reg(dst, "e"), ptr(w)),
                (w, true) => format!("movsx {}, {} ptr {m}", n.reg(dst, ""), ptr(w)),
            }
        }
        Inst::Store { src, base, index, off, width, .. } => {
            format!("mov {} ptr {}, {}", ptr(width), mem(n, base, index, off), n.reg(src, modifier(width)))
        }
        Inst::Fence(_) | Inst::Extend { .. } => unreachable!("x86-64 needs no fences or extensions"),
        Inst::Mov { dst, src } => format!("mov {}, {}", n.reg(dst, ""), n.reg(src, "")),
        Inst::Li { dst, imm } => format!("mov {}, {imm}", n.reg(dst, "")),
        Inst::Alu { op, dst, b, .. } => {
            let name = match op {
                AluOp::Add => "add",
                AluOp::Sub => "sub",
                AluOp::And => "and",
                AluOp::Or => "or",
                AluOp::Xor => "xor",
                AluOp::Shl => "shl",
                AluOp::Shr => "shr",
            };
            format!("{name} {}, {}", n.reg(dst, ""), rhs(n, b))
        }
        Inst::AddMem { base, off, b, width } => format!("add {} ptr {}, {}", ptr(width), mem(n, base, None, off), rhs(n, b)),
        Inst::Cmp { a, b } => format!("cmp {}, {}", n.reg(a, ""), rhs(n, b)),
        Inst::Bcc { cond, to } => format!("j{} {}", cc(cond), n.target(to)),
        Inst::Brr { .. } => unreachable!("x86-64 branches on flags"),
        Inst::Jmp { to } => format!("jmp {}", n.target(to)),
        Inst::Inject(point) => format!(
            "mov {s}, qword ptr [rip + {{delays}} + {}]\ntest {s}, {s}\njz 98f\n97:\npause\ndec {s}\njnz 97b\n98:",
            8 * point,
            s = n.reg(Reg::Scratch, "")
        ),
    }
}

/// The abort handler after its signature, and the stubs of exits that
/// hand values back, out of line.
pub(super) fn tail(n: &Names) -> String {
    let mut t = String::from(".pushsection __rseq_failure, \"ax\"\n.byte 0x0f, 0xb9, 0x3d\n.long {signature}\n23:\njmp {aborted}\n");
    for op in 0..n.s.ops.len() {
        if let Some(k) = super::stub_number(n.s, op) {
            t += &format!("{}:\n", 1000 + k);
            for (m, v) in n.exit_vals(op).iter().enumerate() {
                t += &format!(
                    "mov qword ptr [{{out}} + {}], {}\n",
                    8 * m,
                    n.reg(Reg::V(*v), "")
                );
            }
            t += &format!("jmp {{x{}}}\n", super::exit_of(n.s, op));
        }
    }
    t + ".popsection"
}
