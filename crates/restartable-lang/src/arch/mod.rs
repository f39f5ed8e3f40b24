//! The architectures: each file holds only its traps (as [`Traits`]) and
//! how each instruction of the machine form is spelled. Everything they
//! share, the descriptor and its tables, is written once here.
//!
//! The descriptor layout is `struct rseq_cs` of the kernel's
//! `include/uapi/linux/rseq.h`: `version` (u32, 0), `flags` (u32, 0),
//! `start_ip`, `post_commit_offset`, `abort_ip` (u64 each), 32-byte
//! aligned. Its address goes into `__rseq_cs_ptr_array` and every exit,
//! as a (`start_ip`, exit) pair, into `__rseq_exit_point_array`: the
//! sections debuggers and tools read (see librseq's documentation of them).

mod aarch64;
mod riscv64;
mod x86_64;

use crate::ir::{Section, Val, Width};
use crate::machine::{self, Alloc, Goto, Inst, Reg, Variant};

/// An architecture the language emits code for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86-64.
    X86_64,
    /// AArch64.
    Aarch64,
    /// RISC-V 64 (RV64GC).
    Riscv64,
}

impl Arch {
    /// Every architecture, in the order their `cfg`s are emitted.
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Riscv64];

    /// The traps of this architecture.
    pub fn traits(self) -> &'static Traits {
        match self {
            Arch::X86_64 => &x86_64::TRAITS,
            Arch::Aarch64 => &aarch64::TRAITS,
            Arch::Riscv64 => &riscv64::TRAITS,
        }
    }

    fn spell(self, i: &Inst, n: &Names) -> String {
        match self {
            Arch::X86_64 => x86_64::spell(i, n),
            Arch::Aarch64 => aarch64::spell(i, n),
            Arch::Riscv64 => riscv64::spell(i, n),
        }
    }

    fn tail(self, n: &Names) -> String {
        match self {
            Arch::X86_64 => x86_64::tail(n),
            Arch::Aarch64 => aarch64::tail(n),
            Arch::Riscv64 => riscv64::tail(n),
        }
    }
}

/// What an architecture's code generation must respect.
pub struct Traits {
    /// Its name in errors and docs.
    pub name: &'static str,
    /// Its `target_arch`.
    pub target_arch: &'static str,
    /// General-purpose registers an `asm!` block can be given: all of
    /// them, less the stack, frame and base pointers and whatever else the
    /// Rust Reference ("Inline assembly", register operands) reserves.
    pub budget: usize,
    /// ALU instructions overwrite their first operand (x86-64).
    pub two_operand: bool,
    /// Compares set flags that a branch then reads; otherwise branches
    /// compare two registers themselves (riscv64).
    pub flags: bool,
    /// Every store is a release and every load an acquire (x86-64).
    pub tso: bool,
    /// Memory operands can add an index register.
    pub indexed: bool,
    /// Acquire and release are plain accesses with fences (riscv64).
    pub fences: bool,
    /// Load-acquire takes a base register and no offset (aarch64).
    pub acquire_base_only: bool,
    /// Store-release takes a base register and no offset (aarch64).
    pub release_base_only: bool,
    /// A memory-destination add exists, so a load-add-store commit is one
    /// instruction (x86-64).
    pub mem_add: bool,
    /// Exits hand their values back inside the section and leave at the
    /// Rust label, rather than through a stub out of line (riscv64, whose
    /// conditional branches reach only ±4 KiB).
    pub inline_exits: bool,
    /// Whether a load or store can take this offset directly.
    pub mem_offset: fn(i64, Width) -> bool,
    /// Whether an ALU instruction (or a compare, as `Sub`) can take this
    /// immediate.
    pub alu_imm: fn(crate::ir::AluOp, i64) -> bool,
}

/// How operands are named in the template.
pub(crate) struct Names<'a> {
    pub(crate) t: &'a Traits,
    pub(crate) s: &'a Section,
    pub(crate) alloc: &'a Alloc,
    pub(crate) insts: &'a [Inst],
    /// Index of the instruction being spelled.
    pub(crate) at: usize,
}

impl Names<'_> {
    /// The operand name of a register, without braces' modifier.
    pub(crate) fn base(&self, r: Reg) -> String {
        match r {
            Reg::Area => "area".into(),
            Reg::Out => "out".into(),
            Reg::Scratch => "scratch".into(),
            Reg::K0 => "k0".into(),
            Reg::K1 => "k1".into(),
            Reg::Zero => "zero".into(),
            Reg::V(v) => value_operand(self.alloc, v),
        }
    }

    /// `{name}` or `{name:modifier}`.
    pub(crate) fn reg(&self, r: Reg, modifier: &str) -> String {
        if r == Reg::Zero {
            return "zero".into();
        }
        if modifier.is_empty() {
            format!("{{{}}}", self.base(r))
        } else {
            format!("{{{}:{modifier}}}", self.base(r))
        }
    }

    /// A local label reference, `26b` or `27f`, from the current
    /// instruction.
    pub(crate) fn local(&self, n: u32) -> String {
        let before = self.insts[..self.at].contains(&Inst::Label(n));
        format!("{n}{}", if before { 'b' } else { 'f' })
    }

    /// Where a branch to `to` goes, for architectures with stubs out of
    /// line: the stub of an exit that carries values, else the Rust label.
    pub(crate) fn target(&self, to: Goto) -> String {
        match to {
            Goto::Abort => "23f".into(),
            Goto::CtFail => "{ct_fail}".into(),
            Goto::Local(n) => self.local(n),
            Goto::Exit(op) => match stub_number(self.s, op) {
                Some(k) => format!("{}f", 1000 + k),
                None => format!("{{x{}}}", exit_of(self.s, op)),
            },
        }
    }

    /// The values exit op `op` carries.
    pub(crate) fn exit_vals(&self, op: usize) -> &[Val] {
        match &self.s.ops[op] {
            crate::ir::Op::Exit { vals, .. } => vals,
            _ => &[],
        }
    }
}

/// The exit (index into the declared exits) op `op` leaves through.
pub(crate) fn exit_of(s: &Section, op: usize) -> usize {
    match &s.ops[op] {
        crate::ir::Op::Exit { exit, .. }
        | crate::ir::Op::ReadId { exit, .. }
        | crate::ir::Op::CheckId { exit, .. } => *exit,
        _ => unreachable!("op {op} is no exit"),
    }
}

/// The stub number of exit op `op` if it carries values.
pub(crate) fn stub_number(s: &Section, op: usize) -> Option<usize> {
    let carrying =
        |o: &crate::ir::Op| matches!(o, crate::ir::Op::Exit { vals, .. } if !vals.is_empty());
    if !carrying(&s.ops[op]) {
        return None;
    }
    Some(s.ops[..op].iter().filter(|o| carrying(o)).count())
}

/// The template operand of a value.
pub(crate) fn value_operand(a: &Alloc, v: Val) -> String {
    format!("t{}", a.slot[v].expect("every value used has a slot"))
}

/// The whole `asm!` template of a section: descriptor and tables, the
/// body, `post_commit_ip`, and the architecture's abort handler and stubs.
pub fn template(s: &Section, arch: Arch, v: Variant) -> String {
    let insts = machine::lower(s, arch.traits(), v);
    let alloc = machine::allocate(s, v);
    let mut out = String::new();
    let mut line = |l: &str| {
        out.push_str(l);
        out.push('\n');
    };
    for l in [
        ".pushsection __rseq_cs, \"awR\"",
        ".balign 32",
        "20:",
        ".long 0, 0",
        ".quad 21f, 22f - 21f, 23f",
        ".popsection",
        ".pushsection __rseq_cs_ptr_array, \"awR\"",
        ".balign 8",
        ".quad 20b",
        ".popsection",
    ] {
        line(l);
    }
    for (at, i) in insts.iter().enumerate() {
        let n = Names {
            t: arch.traits(),
            s,
            alloc: &alloc,
            insts: &insts,
            at,
        };
        line(&arch.spell(i, &n));
        if *i == Inst::Start {
            for exit in exit_points(s, &n, v) {
                line(".pushsection __rseq_exit_point_array, \"awR\"");
                line(".balign 8");
                line(&format!(".quad 21b, {exit}"));
                line(".popsection");
            }
        }
    }
    let n = Names {
        t: arch.traits(),
        s,
        alloc: &alloc,
        insts: &insts,
        at: insts.len(),
    };
    line(&arch.tail(&n));
    out
}

/// Every place the section can leave other than its commit and abort.
fn exit_points(s: &Section, n: &Names, v: Variant) -> Vec<String> {
    let mut points: Vec<String> = Vec::new();
    for op in 0..s.ops.len() {
        if matches!(
            s.ops[op],
            crate::ir::Op::Exit { .. }
                | crate::ir::Op::ReadId { bound: Some(_), .. }
                | crate::ir::Op::CheckId { .. }
        ) {
            let t = n.exit_point(op);
            if !points.contains(&t) {
                points.push(t);
            }
        }
    }
    if v.twice {
        points.push("{ct_fail}".into());
    }
    points
}

impl Names<'_> {
    fn exit_point(&self, op: usize) -> String {
        match stub_number(self.s, op) {
            Some(k) if !self.t.inline_exits => format!("{}f", 1000 + k),
            _ => format!("{{x{}}}", exit_of(self.s, op)),
        }
    }
}
