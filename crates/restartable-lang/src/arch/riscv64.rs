//! RISC-V 64. Branches compare two registers and reach ±4 KiB, so exits
//! hand their values back inline and leave through a `j` to the Rust
//! label; immediates are 12 bits, sign-extended; `lw` sign-extends, so
//! unsigned 32-bit loads are `lwu`; acquire and release are plain accesses
//! with `fence r,rw` after and `fence rw,w` before (the RVWMO mapping). The
//! abort handler, after the signature word, sits in `__rseq_failure` and
//! leaves with `auipc`+`jr`, which reach ±2 GiB.

use super::{Names, Traits};
use crate::ir::{AluOp, Cond, Width};
use crate::machine::{Fence, Goto, Inst, Reg, Rhs};

pub(super) static TRAITS: Traits = Traits {
    name: "riscv64",
    target_arch: "riscv64",
    // x1-x31, less sp, gp, tp, s0 (frame pointer) and s1 (LLVM's base
    // pointer).
    budget: 26,
    two_operand: false,
    flags: false,
    tso: false,
    indexed: false,
    fences: true,
    acquire_base_only: false,
    release_base_only: false,
    inline_exits: true,
    mem_add: false,
    mem_offset: |off, _| (-2048..2048).contains(&off),
    alu_imm: |op, imm| match op {
        AluOp::Shl | AluOp::Shr => (0..64).contains(&imm),
        AluOp::Sub => (-2047..=2048).contains(&imm),
        _ => (-2048..2048).contains(&imm),
    },
};

/// The branch for `cond`, with its operands in branch order.
fn branch(cond: Cond, a: String, b: String) -> String {
    let (op, x, y) = match cond {
        Cond::Eq => ("beq", a, b),
        Cond::Ne => ("bne", a, b),
        Cond::Ltu => ("bltu", a, b),
        Cond::Geu => ("bgeu", a, b),
        Cond::Gtu => ("bltu", b, a),
        Cond::Leu => ("bgeu", b, a),
        Cond::Lts => ("blt", a, b),
        Cond::Ges => ("bge", a, b),
        Cond::Gts => ("blt", b, a),
        Cond::Les => ("bge", b, a),
    };
    format!("{op} {x}, {y},")
}

fn mem(n: &Names, base: Reg, off: i64) -> String {
    format!("{off}({})", n.reg(base, ""))
}

pub(super) fn spell(i: &Inst, n: &Names) -> String {
    let r = |r: Reg| n.reg(r, "");
    match *i {
        Inst::Arm => format!("lla {s}, 20b\nsd {s}, {{rseq_cs}}({a})", s = r(Reg::Scratch), a = r(Reg::Area)),
        Inst::Start => "21:".into(),
        Inst::PostCommit => "22:".into(),
        Inst::Label(l) => format!("{l}:"),
        Inst::ReadId { dst } => format!("lwu {}, {{id}}({})", r(dst), r(Reg::Area)),
        Inst::Load { dst, base, off, width, signed, .. } => {
            let op = match (width, signed) {
                (Width::W64, _) => "ld",
                (Width::W32, false) => "lwu",
                (Width::W32, true) => "lw",
                (Width::W16, false) => "lhu",
                (Width::W16, true) => "lh",
                (Width::W8, false) => "lbu",
                (Width::W8, true) => "lb",
            };
            format!("{op} {}, {}", r(dst), mem(n, base, off))
        }
        Inst::Store { src, base, off, width, .. } => {
            let op = match width {
                Width::W64 => "sd",
                Width::W32 => "sw",
                Width::W16 => "sh",
                Width::W8 => "sb",
            };
            format!("{op} {}, {}", r(src), mem(n, base, off))
        }
        Inst::Fence(Fence::Acquire) => "fence r, rw".into(),
        Inst::Fence(Fence::Release) => "fence rw, w".into(),
        Inst::Extend { .. } => unreachable!("riscv64 loads sign-extend themselves"),
        Inst::AddMem { .. } => unreachable!("riscv64 has no add to memory"),
        Inst::Mov { dst, src } => format!("mv {}, {}", r(dst), r(src)),
        Inst::Li { dst, imm } => format!("li {}, {imm}", r(dst)),
        Inst::Alu { op, dst, a, b } => match b {
            Rhs::R(b) => {
                let name = match op {
                    AluOp::Add => "add",
                    AluOp::Sub => "sub",
                    AluOp::And => "and",
                    AluOp::Or => "or",
                    AluOp::Xor => "xor",
                    AluOp::Shl => "sll",
                    AluOp::Shr => "srl",
                };
                format!("{name} {}, {}, {}", r(dst), r(a), r(b))
            }
            Rhs::I(i) => {
                let (name, i) = match op {
                    AluOp::Add => ("addi", i),
                    AluOp::Sub => ("addi", -i),
                    AluOp::And => ("andi", i),
                    AluOp::Or => ("ori", i),
                    AluOp::Xor => ("xori", i),
                    AluOp::Shl => ("slli", i),
                    AluOp::Shr => ("srli", i),
                };
                format!("{name} {}, {}, {i}", r(dst), r(a))
            }
        },
        Inst::Cmp { .. } | Inst::Bcc { .. } => unreachable!("riscv64 has no flags"),
        Inst::Brr { cond, a, b, to } => match to {
            Goto::Local(_) => format!("{} {}", branch(cond, r(a), r(b)), n.target(to)),
            Goto::Exit(op) => {
                let mut s = format!("{} 29f\n", branch(cond.negate(), r(a), r(b)));
                for (m, v) in n.exit_vals(op).iter().enumerate() {
                    s += &format!("sd {}, {}({{out}})\n", r(Reg::V(*v)), 8 * m);
                }
                s + &format!("j {{x{}}}\n29:", super::exit_of(n.s, op))
            }
            to => format!("{} 29f\nj {}\n29:", branch(cond.negate(), r(a), r(b)), n.target(to)),
        },
        Inst::Jmp { to } => format!("j {}", n.target(to)),
        Inst::Inject(point) => format!(
            "lla {s}, {{delays}}\nld {s}, {}({s})\nbeqz {s}, 98f\n97:\naddi {s}, {s}, -1\nbnez {s}, 97b\n98:",
            8 * point,
            s = n.reg(Reg::Scratch, "")
        ),
    }
}

pub(super) fn tail(n: &Names) -> String {
    let s = n.reg(Reg::Scratch, "");
    format!(
        ".pushsection __rseq_failure, \"ax\"\n.balign 4\n.long {{signature}}\n23:\n19:\nauipc {s}, %pcrel_hi({{aborted}})\njr %pcrel_lo(19b)({s})\n.popsection"
    )
}
