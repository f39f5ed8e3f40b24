//! The machine form of a section: each [`Op`] lowered to instructions of a
//! small vocabulary that every architecture renders one to one (a few
//! render as an inverted branch over a far jump). The model checker runs
//! this form, so what it checks is what the assembler gets.

use crate::arch::Traits;
use crate::ir::*;

/// A register of the machine form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reg {
    /// The thread's rseq area.
    Area,
    /// The buffer exits and the commit hand values back through.
    Out,
    /// Free for one instruction's needs (arming, large immediates,
    /// compare-twice).
    Scratch,
    /// The copy's counter.
    K0,
    /// The copy's data word.
    K1,
    /// The zero register (riscv64's `zero`; nowhere else).
    Zero,
    /// A value of the section.
    V(Val),
}

/// Right-hand operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rhs {
    /// A register.
    R(Reg),
    /// An immediate.
    I(i64),
}

/// Where a branch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goto {
    /// The abort handler (only the kernel goes there).
    Abort,
    /// The exit taken by op `n` of the body (a range check or a
    /// comparison; each op has its own stub, carrying its own values).
    Exit(usize),
    /// A local label (the copy's loop).
    Local(u32),
    /// The compare-twice failure.
    CtFail,
}

/// Memory ordering fences (riscv64 acquire and release mappings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// `fence r, rw`: after a load, for acquire.
    Acquire,
    /// `fence rw, w`: before a store, for release.
    Release,
}

/// One instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inst {
    /// Store the descriptor's address to `rseq_cs` (the arming; renders as
    /// an address computation and a store, both before `start_ip`).
    Arm,
    /// `start_ip`.
    Start,
    /// `dst = id` (32-bit, zero-extended) from the area.
    ReadId {
        /// Destination.
        dst: Reg,
    },
    /// `dst = *(base + index + off)`.
    Load {
        /// Destination.
        dst: Reg,
        /// Base.
        base: Reg,
        /// Optional index register (copy only).
        index: Option<Reg>,
        /// Offset.
        off: i64,
        /// Width.
        width: Width,
        /// Sign-extend.
        signed: bool,
        /// Load-acquire (the base alone addresses it where the arch needs).
        acquire: bool,
    },
    /// `*(base + index + off) = src`.
    Store {
        /// Source.
        src: Reg,
        /// Base.
        base: Reg,
        /// Optional index register (copy only).
        index: Option<Reg>,
        /// Offset.
        off: i64,
        /// Width.
        width: Width,
        /// Store-release.
        release: bool,
    },
    /// A fence.
    Fence(Fence),
    /// Sign extension of the low `width` of `dst` (after an acquire load).
    Extend {
        /// Register.
        dst: Reg,
        /// Width.
        width: Width,
    },
    /// `dst = src`.
    Mov {
        /// Destination.
        dst: Reg,
        /// Source.
        src: Reg,
    },
    /// `dst = imm` (small).
    Li {
        /// Destination.
        dst: Reg,
        /// Value.
        imm: i64,
    },
    /// `dst = a op b`.
    Alu {
        /// Operation.
        op: AluOp,
        /// Destination.
        dst: Reg,
        /// Left.
        a: Reg,
        /// Right.
        b: Rhs,
    },
    /// Compare, setting flags.
    Cmp {
        /// Left.
        a: Reg,
        /// Right.
        b: Rhs,
    },
    /// Branch on the flags of the last `Cmp`.
    Bcc {
        /// Condition.
        cond: Cond,
        /// Target.
        to: Goto,
    },
    /// Compare two registers and branch (riscv64).
    Brr {
        /// Condition.
        cond: Cond,
        /// Left.
        a: Reg,
        /// Right.
        b: Reg,
        /// Target.
        to: Goto,
    },
    /// Unconditional branch.
    Jmp {
        /// Target.
        to: Goto,
    },
    /// A local label.
    Label(u32),
    /// A delay-injection point (feature `inject`).
    Inject(u8),
    /// `post_commit_ip`: the commit store ends right before it.
    PostCommit,
    /// `*(base + off) += b` in one instruction (x86-64): the commit of a
    /// load, add and store to the same word, fused.
    AddMem {
        /// Base.
        base: Reg,
        /// Offset.
        off: i64,
        /// What to add.
        b: Rhs,
        /// Width.
        width: Width,
    },
}

/// Which optional checks a build compiles in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Variant {
    /// Delay loops at every boundary.
    pub inject: bool,
    /// Compare-twice before the commit.
    pub twice: bool,
}

/// Register slots given to the section's temporaries.
#[derive(Clone, Debug)]
pub struct Alloc {
    /// For each value: its register slot (`None` for values never used).
    pub slot: Vec<Option<usize>>,
    /// Slots used.
    pub slots: usize,
    /// Inputs used by the body.
    pub inputs_used: Vec<bool>,
    /// For each value: the index of the last op that needs it.
    pub last_use: Vec<usize>,
}

/// Gives values register slots, reusing a slot once its value is dead.
/// A value defined by op `i` shares a slot with one op `i` reads only
/// where every architecture allows it: a load's base, an ALU op's left
/// operand. For the compare-twice build, the id stays live to the commit,
/// and so do plain loads' values and addresses when that fits every
/// architecture's budget, so it can read them again there.
pub fn allocate(s: &Section, v: Variant) -> Alloc {
    if v.twice {
        let a = allocate_with(s, true, true);
        if registers_needed(s, &a)
            <= crate::arch::Arch::ALL
                .iter()
                .map(|a| a.traits().budget)
                .min()
                .unwrap_or(0)
        {
            return a;
        }
    }
    allocate_with(s, v.twice, false)
}

fn allocate_with(s: &Section, twice: bool, keep_loads: bool) -> Alloc {
    let n = s.values.len();
    let end = s.ops.len();
    let mut last = vec![0usize; n];
    let mut inputs_used = vec![false; s.inputs.len()];
    for (i, op) in s.ops.iter().enumerate() {
        for u in op.uses() {
            last[u] = last[u].max(i);
            if let ValKind::Input(k) = s.values[u].kind {
                inputs_used[k] = true;
            }
        }
        if let Some(d) = op.def() {
            last[d] = last[d].max(i);
        }
        if let (true, Op::ReadId { dst, .. } | Op::CheckId { expect: dst, .. }) = (twice, op) {
            last[*dst] = end;
        }
    }
    if keep_loads {
        for op in &s.ops {
            if let Op::Load {
                dst,
                addr,
                acquire: false,
                ..
            } = op
            {
                last[*dst] = end;
                last[addr.base] = end;
            }
        }
    }
    for &v in &s.ret_vals {
        last[v] = end;
    }
    let mut slot = vec![None; n];
    // Per slot: the value in it and the last op that needs it.
    let mut held: Vec<(Val, usize)> = Vec::new();
    // Inputs and constants enter in registers of their own, which become
    // free for temporaries after their last use.
    for (v, value) in s.values.iter().enumerate() {
        let used = s.ops.iter().any(|op| op.uses().contains(&v)) || s.ret_vals.contains(&v);
        if value.kind != ValKind::Temp && used {
            slot[v] = Some(held.len());
            held.push((v, last[v]));
        }
    }
    for (i, op) in s.ops.iter().enumerate() {
        let Some(d) = op.def() else { continue };
        if s.values[d].kind != ValKind::Temp {
            continue;
        }
        let shareable = |occupant: Val| match op {
            Op::Load { addr, .. } => addr.base == occupant,
            Op::Alu { a, b, .. } => *a == occupant && *b != Operand::Val(occupant),
            _ => false,
        };
        let free = held.iter().position(|&(_, until)| until < i).or_else(|| {
            held.iter()
                .position(|&(o, until)| until == i && shareable(o))
        });
        let k = match free {
            Some(k) => k,
            None => {
                held.push((d, 0));
                held.len() - 1
            }
        };
        held[k] = (d, last[d]);
        slot[d] = Some(k);
    }
    Alloc {
        slots: held.len(),
        slot,
        inputs_used,
        last_use: last,
    }
}

/// Registers the section needs from the `asm!` block: the area, the
/// value slots (inputs, constants and temporaries, a slot reused once its
/// value is dead), the scratch register (which the delay loops use too),
/// the out pointer and the copy's two. The same in every build.
pub fn registers_needed(s: &Section, a: &Alloc) -> usize {
    let copy = if s.ops.iter().any(|op| matches!(op, Op::Copy { .. })) {
        2
    } else {
        0
    };
    1 + a.slots + 1 + usize::from(s.has_out()) + copy
}

/// Lowers a section for one architecture.
pub fn lower(s: &Section, t: &Traits, v: Variant) -> Vec<Inst> {
    let alloc = allocate(s, v);
    let mut l = Lowering {
        t,
        out: Vec::new(),
        fused_load: None,
    };
    let r = Reg::V;
    if v.inject {
        l.out.push(Inst::Inject(0));
    }
    l.out.push(Inst::Arm);
    l.out.push(Inst::Start);
    let mut id = None;
    let fused = t.mem_add.then(|| fused_add(s, t.tso)).flatten();
    l.fused_load = fused.map(|_| s.commit_index() - 2);
    for (i, op) in s.ops.iter().enumerate() {
        if let Some((b, addr)) = fused.filter(|_| i == s.commit_index()) {
            if v.inject {
                l.out.push(Inst::Inject(3));
            }
            if v.twice {
                l.twice(s, &alloc, id, i);
            }
            let (base, off) = l.address(r(addr.base), addr.offset, Width::W64, false);
            l.out.push(Inst::AddMem {
                base,
                off,
                b,
                width: Width::W64,
            });
            continue;
        }
        if fused.is_some() && i + 2 >= s.commit_index() && i < s.commit_index() {
            // The load and the add of the fused commit.
            continue;
        }
        if v.inject && i > 0 {
            // Point 2 after the id's check, 3 before the commit, 4 at
            // every other boundary (so the points of the hand-driven
            // stress options keep their meaning).
            let point = match i {
                _ if i == s.commit_index() => 3,
                1 => 2,
                _ => 4,
            };
            l.out.push(Inst::Inject(point));
        }
        match op {
            Op::ReadId { dst, bound, .. } => {
                if v.inject {
                    l.out.push(Inst::Inject(1));
                }
                l.out.push(Inst::ReadId { dst: r(*dst) });
                id = Some(*dst);
                if let Some(b) = bound {
                    l.branch(Cond::Geu, r(*dst), Rhs::R(r(*b)), Goto::Exit(i));
                }
            }
            Op::CheckId { expect, .. } => {
                if v.inject {
                    l.out.push(Inst::Inject(1));
                }
                l.out.push(Inst::ReadId { dst: Reg::Scratch });
                l.branch(Cond::Ne, Reg::Scratch, Rhs::R(r(*expect)), Goto::Exit(i));
                id = Some(*expect);
            }
            Op::Load {
                dst,
                addr,
                width,
                signed,
                acquire,
            } => l.load(r(*dst), *addr, *width, *signed, *acquire),
            Op::Store { addr, src, width } => l.store(r(*src), *addr, *width, false),
            Op::Alu { dst, op, a, b } => {
                let b = match b {
                    Operand::Val(b) => Rhs::R(r(*b)),
                    Operand::Imm(i) => Rhs::I(*i),
                };
                l.alu(*op, r(*dst), r(*a), b);
            }
            Op::Exit { cond, a, b, .. } => {
                let b = match b {
                    Operand::Val(b) => Rhs::R(r(*b)),
                    Operand::Imm(i) => Rhs::I(*i),
                };
                l.branch(*cond, r(*a), b, Goto::Exit(i));
            }
            Op::Copy { dst, src, len } => l.copy(r(*dst), r(*src), r(*len)),
            Op::Commit {
                addr,
                src,
                width,
                release,
            } => {
                if v.twice {
                    l.twice(s, &alloc, id, i);
                }
                l.store(r(*src), *addr, *width, *release);
            }
        }
    }
    l.out.push(Inst::PostCommit);
    for (k, &val) in s.ret_vals.iter().enumerate() {
        l.out.push(Inst::Store {
            src: r(val),
            base: Reg::Out,
            index: None,
            off: 8 * k as i64,
            width: Width::W64,
            release: false,
        });
    }
    l.out
}

/// A body ending `x = load64(A); y = x + b; commit!(store64(A, y))`, with
/// `x` and `y` used nowhere else and a relaxed commit (or any, where every
/// store is a release): what to add, and where, for a one-instruction
/// commit.
fn fused_add(s: &Section, tso: bool) -> Option<(Rhs, Addr)> {
    let c = s.commit_index();
    let [Op::Load {
        dst: x,
        addr: la,
        width: Width::W64,
        signed: false,
        acquire: false,
    }, Op::Alu {
        dst: y,
        op: AluOp::Add,
        a,
        b,
    }, Op::Commit {
        addr,
        src,
        width: Width::W64,
        release,
    }] = s.ops.get(c.checked_sub(2)?..=c)?
    else {
        return None;
    };
    let only_here = |v: Val, at: usize| {
        !s.ret_vals.contains(&v)
            && s.ops
                .iter()
                .enumerate()
                .all(|(n, op)| n == at || !op.uses().contains(&v))
    };
    let b = match b {
        Operand::Val(b) if b != x => Rhs::R(Reg::V(*b)),
        Operand::Imm(i) => Rhs::I(*i),
        Operand::Val(_) => return None,
    };
    (a == x
        && src == y
        && la == addr
        && (!release || tso)
        && only_here(*x, c - 1)
        && only_here(*y, c))
    .then_some((b, *addr))
}

struct Lowering<'a> {
    t: &'a Traits,
    out: Vec<Inst>,
    /// The load a fused commit does itself (no register holds its value).
    fused_load: Option<usize>,
}

impl Lowering<'_> {
    fn push(&mut self, i: Inst) {
        self.out.push(i);
    }

    /// `base + off` into a register the instruction can take alone.
    fn address(&mut self, base: Reg, off: i64, width: Width, base_only: bool) -> (Reg, i64) {
        if off == 0 || (!base_only && (self.t.mem_offset)(off, width)) {
            return (base, off);
        }
        self.alu(AluOp::Add, Reg::Scratch, base, Rhs::I(off));
        (Reg::Scratch, 0)
    }

    fn load(&mut self, dst: Reg, a: Addr, width: Width, signed: bool, acquire: bool) {
        let base_only = acquire && self.t.acquire_base_only;
        let (base, off) = self.address(Reg::V(a.base), a.offset, width, base_only);
        let extend = acquire && signed && self.t.acquire_base_only;
        self.push(Inst::Load {
            dst,
            base,
            index: None,
            off,
            width,
            signed: signed && !extend,
            acquire: acquire && !self.t.fences,
        });
        if extend {
            self.push(Inst::Extend { dst, width });
        }
        if acquire && self.t.fences {
            self.push(Inst::Fence(Fence::Acquire));
        }
    }

    fn store(&mut self, src: Reg, a: Addr, width: Width, release: bool) {
        let release = release && !self.t.tso;
        let (base, off) = self.address(
            Reg::V(a.base),
            a.offset,
            width,
            release && self.t.release_base_only,
        );
        if release && self.t.fences {
            self.push(Inst::Fence(Fence::Release));
        }
        self.push(Inst::Store {
            src,
            base,
            index: None,
            off,
            width,
            release: release && !self.t.fences,
        });
    }

    fn alu(&mut self, op: AluOp, dst: Reg, a: Reg, b: Rhs) {
        let b = match b {
            Rhs::I(i) if !(self.t.alu_imm)(op, i) => {
                self.push(Inst::Li {
                    dst: Reg::Scratch,
                    imm: i,
                });
                Rhs::R(Reg::Scratch)
            }
            b => b,
        };
        if self.t.two_operand && dst != a {
            self.push(Inst::Mov { dst, src: a });
            self.push(Inst::Alu { op, dst, a: dst, b });
        } else {
            self.push(Inst::Alu { op, dst, a, b });
        }
    }

    fn branch(&mut self, cond: Cond, a: Reg, b: Rhs, to: Goto) {
        if self.t.flags {
            let b = match b {
                Rhs::I(i) if !(self.t.alu_imm)(AluOp::Sub, i) => {
                    self.push(Inst::Li {
                        dst: Reg::Scratch,
                        imm: i,
                    });
                    Rhs::R(Reg::Scratch)
                }
                b => b,
            };
            self.push(Inst::Cmp { a, b });
            self.push(Inst::Bcc { cond, to });
            return;
        }
        let b = match b {
            Rhs::R(b) => b,
            Rhs::I(0) => Reg::Zero,
            Rhs::I(i) => {
                self.push(Inst::Li {
                    dst: Reg::Scratch,
                    imm: i,
                });
                Reg::Scratch
            }
        };
        self.push(Inst::Brr { cond, a, b, to });
    }

    /// The bounded copy: words while 8 or more bytes remain, then bytes.
    fn copy(&mut self, dst: Reg, src: Reg, len: Reg) {
        let (k0, k1) = (Reg::K0, Reg::K1);
        self.push(Inst::Li { dst: k0, imm: 0 });
        self.push(Inst::Label(26));
        self.alu(AluOp::Add, k1, k0, Rhs::I(8));
        self.branch(Cond::Gtu, k1, Rhs::R(len), Goto::Local(27));
        self.element(dst, src, Width::W64);
        self.alu(AluOp::Add, k0, k0, Rhs::I(8));
        self.push(Inst::Jmp {
            to: Goto::Local(26),
        });
        self.push(Inst::Label(27));
        self.branch(Cond::Geu, k0, Rhs::R(len), Goto::Local(28));
        self.element(dst, src, Width::W8);
        self.alu(AluOp::Add, k0, k0, Rhs::I(1));
        self.push(Inst::Jmp {
            to: Goto::Local(27),
        });
        self.push(Inst::Label(28));
    }

    fn element(&mut self, dst: Reg, src: Reg, width: Width) {
        if self.t.indexed {
            self.push(Inst::Load {
                dst: Reg::K1,
                base: src,
                index: Some(Reg::K0),
                off: 0,
                width,
                signed: false,
                acquire: false,
            });
            self.push(Inst::Store {
                src: Reg::K1,
                base: dst,
                index: Some(Reg::K0),
                off: 0,
                width,
                release: false,
            });
        } else {
            self.push(Inst::Alu {
                op: AluOp::Add,
                dst: Reg::Scratch,
                a: src,
                b: Rhs::R(Reg::K0),
            });
            self.push(Inst::Load {
                dst: Reg::K1,
                base: Reg::Scratch,
                index: None,
                off: 0,
                width,
                signed: false,
                acquire: false,
            });
            self.push(Inst::Alu {
                op: AluOp::Add,
                dst: Reg::Scratch,
                a: dst,
                b: Rhs::R(Reg::K0),
            });
            self.push(Inst::Store {
                src: Reg::K1,
                base: Reg::Scratch,
                index: None,
                off: 0,
                width,
                release: false,
            });
        }
    }

    /// Compare-twice, right before the commit at op `at`: the id again,
    /// and every plain load whose value and address are still in their
    /// registers, and (for loads of owned memory) that no store or copy
    /// followed, reads the same value again.
    fn twice(&mut self, s: &Section, a: &Alloc, id: Option<Val>, at: usize) {
        if let Some(id) = id {
            self.push(Inst::ReadId { dst: Reg::Scratch });
            self.branch(Cond::Ne, Reg::Scratch, Rhs::R(Reg::V(id)), Goto::CtFail);
        }
        for (n, op) in s.ops[..at].iter().enumerate() {
            // A load from owned memory that a store or copy followed may
            // see the section's own speculative write: no re-check then.
            let owned = matches!(op, Op::Load { addr, .. } if s.owned.get(addr.base).copied().unwrap_or(true));
            let written_since = owned
                && s.ops[n..at]
                    .iter()
                    .any(|o| matches!(o, Op::Store { .. } | Op::Copy { .. }));
            if self.fused_load == Some(n) || written_since {
                continue;
            }
            if let Op::Load {
                dst,
                addr,
                width,
                signed,
                acquire: false,
            } = op
            {
                if a.last_use[*dst] >= at
                    && (a.last_use[addr.base] >= at || a.slot[addr.base].is_none())
                {
                    if addr.offset != 0 && !(self.t.mem_offset)(addr.offset, *width) {
                        continue;
                    }
                    let (base, off) = (Reg::V(addr.base), addr.offset);
                    self.push(Inst::Load {
                        dst: Reg::Scratch,
                        base,
                        index: None,
                        off,
                        width: *width,
                        signed: *signed,
                        acquire: false,
                    });
                    self.branch(Cond::Ne, Reg::Scratch, Rhs::R(Reg::V(*dst)), Goto::CtFail);
                }
            }
        }
    }
}
