//! The arch-neutral form of a section: what the parser produces and every
//! architecture lowers. One op is one step of the body; every value is
//! named by its index in [`Section::values`].

use proc_macro2::{Span, TokenStream};

/// A value: an index into [`Section::values`].
pub type Val = usize;

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValKind {
    /// Input `n` of the section (passed in a register).
    Input(usize),
    /// Constant `n` of [`Section::consts`]: a Rust expression evaluated by
    /// the caller and passed in a register.
    Const(usize),
    /// Defined by an op of the body.
    Temp,
}

/// A named value.
#[derive(Clone, Debug)]
pub struct Value {
    /// The name in the source (`t3` for unnamed intermediate values).
    pub name: String,
    /// Where it comes from.
    pub kind: ValKind,
}

/// Access widths, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 1 byte.
    W8,
    /// 2 bytes.
    W16,
    /// 4 bytes.
    W32,
    /// 8 bytes (also pointers).
    W64,
}

impl Width {
    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            Width::W8 => 1,
            Width::W16 => 2,
            Width::W32 => 4,
            Width::W64 => 8,
        }
    }
    /// Size in bits.
    pub fn bits(self) -> u32 {
        self.bytes() as u32 * 8
    }
}

/// Integer operations on 64-bit values (wrapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a & b`
    And,
    /// `a | b`
    Or,
    /// `a ^ b`
    Xor,
    /// `a << k`, `k` a literal below 64
    Shl,
    /// `a >> k` (logical), `k` a literal below 64
    Shr,
}

impl AluOp {
    /// What the op computes.
    pub fn eval(self, a: u64, b: u64) -> u64 {
        match self {
            AluOp::Add => a.wrapping_add(b),
            AluOp::Sub => a.wrapping_sub(b),
            AluOp::And => a & b,
            AluOp::Or => a | b,
            AluOp::Xor => a ^ b,
            AluOp::Shl => a << (b & 63),
            AluOp::Shr => a >> (b & 63),
        }
    }
}

/// Comparisons that leave through an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// unsigned `<`
    Ltu,
    /// unsigned `<=`
    Leu,
    /// unsigned `>`
    Gtu,
    /// unsigned `>=`
    Geu,
    /// signed `<`
    Lts,
    /// signed `<=`
    Les,
    /// signed `>`
    Gts,
    /// signed `>=`
    Ges,
}

impl Cond {
    /// Whether `a cond b` holds.
    pub fn eval(self, a: u64, b: u64) -> bool {
        let (x, y) = (a as i64, b as i64);
        match self {
            Cond::Eq => a == b,
            Cond::Ne => a != b,
            Cond::Ltu => a < b,
            Cond::Leu => a <= b,
            Cond::Gtu => a > b,
            Cond::Geu => a >= b,
            Cond::Lts => x < y,
            Cond::Les => x <= y,
            Cond::Gts => x > y,
            Cond::Ges => x >= y,
        }
    }
    /// The condition that holds exactly when this one does not.
    pub fn negate(self) -> Cond {
        match self {
            Cond::Eq => Cond::Ne,
            Cond::Ne => Cond::Eq,
            Cond::Ltu => Cond::Geu,
            Cond::Leu => Cond::Gtu,
            Cond::Gtu => Cond::Leu,
            Cond::Geu => Cond::Ltu,
            Cond::Lts => Cond::Ges,
            Cond::Les => Cond::Gts,
            Cond::Gts => Cond::Les,
            Cond::Ges => Cond::Lts,
        }
    }
    /// The same test with the operands swapped (`a < b` is `b > a`).
    pub fn swap(self) -> Cond {
        match self {
            Cond::Eq | Cond::Ne => self,
            Cond::Ltu => Cond::Gtu,
            Cond::Leu => Cond::Geu,
            Cond::Gtu => Cond::Ltu,
            Cond::Geu => Cond::Leu,
            Cond::Lts => Cond::Gts,
            Cond::Les => Cond::Ges,
            Cond::Gts => Cond::Lts,
            Cond::Ges => Cond::Les,
        }
    }
}

/// The right-hand side of an op: a value or a small literal (below 2048,
/// which every architecture's immediates reach).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A value.
    Val(Val),
    /// A literal in `0..2048` (shift amounts: `0..64`).
    Imm(i64),
}

/// `base + offset` (bytes); larger forms are computed by earlier ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    /// The base value.
    pub base: Val,
    /// A literal offset in `0..2048`.
    pub offset: i64,
}

/// One step of a body.
#[derive(Clone, Debug)]
pub enum Op {
    /// Read the current id (`cpu_id` or `mm_cid`, 32 bits, zero-extended);
    /// leave through `exit` when it is not below `bound`.
    ReadId {
        /// The id.
        dst: Val,
        /// Exclusive upper bound; `None` only in unchecked sections
        /// (the model checker's deliberately broken examples).
        bound: Option<Val>,
        /// Exit taken when out of range.
        exit: usize,
    },
    /// Read the current id and leave through `exit` unless it is
    /// `expect` (the id the caller chose its data by). The id is then
    /// `expect`, so it needs no register of its own.
    CheckId {
        /// The id the caller expects.
        expect: Val,
        /// Exit taken when the thread runs with another id.
        exit: usize,
    },
    /// `dst = *addr`, zero- or sign-extended to 64 bits.
    Load {
        /// Loaded value.
        dst: Val,
        /// Where.
        addr: Addr,
        /// How wide.
        width: Width,
        /// Sign-extend instead of zero-extend.
        signed: bool,
        /// A load-acquire.
        acquire: bool,
    },
    /// A speculative store to memory the section owns until it commits.
    Store {
        /// Where.
        addr: Addr,
        /// What (the low `width` bytes).
        src: Val,
        /// How wide.
        width: Width,
    },
    /// `dst = a op b`.
    Alu {
        /// Result.
        dst: Val,
        /// Operation.
        op: AluOp,
        /// Left operand.
        a: Val,
        /// Right operand.
        b: Operand,
    },
    /// Leave through `exit`, carrying `vals`, when `a cond b`.
    Exit {
        /// Test.
        cond: Cond,
        /// Left.
        a: Val,
        /// Right.
        b: Operand,
        /// Which exit.
        exit: usize,
        /// Values it carries.
        vals: Vec<Val>,
    },
    /// Copy `len` bytes from `src` to `dst` (owned memory), 8 at a time
    /// then byte by byte: the one loop of the language.
    Copy {
        /// Destination (owned).
        dst: Val,
        /// Source.
        src: Val,
        /// Byte count.
        len: Val,
    },
    /// The commit: the one store that publishes the section's effect.
    Commit {
        /// Where.
        addr: Addr,
        /// What.
        src: Val,
        /// How wide.
        width: Width,
        /// A store-release.
        release: bool,
    },
}

impl Op {
    /// Values the op reads.
    pub fn uses(&self) -> Vec<Val> {
        match self {
            Op::ReadId { bound, .. } => bound.iter().copied().collect(),
            Op::CheckId { expect, .. } => vec![*expect],
            Op::Load { addr, .. } => vec![addr.base],
            Op::Store { addr, src, .. } | Op::Commit { addr, src, .. } => vec![addr.base, *src],
            Op::Alu { a, b, .. } => operand_uses(*a, *b),
            Op::Exit { a, b, vals, .. } => {
                let mut v = operand_uses(*a, *b);
                v.extend(vals);
                v
            }
            Op::Copy { dst, src, len } => vec![*dst, *src, *len],
        }
    }
    /// The value the op defines.
    pub fn def(&self) -> Option<Val> {
        match self {
            Op::ReadId { dst, .. } | Op::Load { dst, .. } | Op::Alu { dst, .. } => Some(*dst),
            _ => None,
        }
    }
}

fn operand_uses(a: Val, b: Operand) -> Vec<Val> {
    match b {
        Operand::Val(b) => vec![a, b],
        Operand::Imm(_) => vec![a],
    }
}

/// Which per-thread id the section reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// `cpu_id`.
    Cpu,
    /// `mm_cid`.
    MmCid,
}

/// An input of the section.
#[derive(Clone)]
pub struct Input {
    /// Its name.
    pub name: syn::Ident,
    /// Its Rust type (an integer or a raw pointer).
    pub ty: syn::Type,
}

/// A named exit.
#[derive(Clone)]
pub struct ExitDecl {
    /// Its name (a variant of the generated `Exit` enum).
    pub name: syn::Ident,
    /// The types of the values it carries.
    pub fields: Vec<syn::Type>,
}

/// A whole section, parsed and checked.
#[derive(Clone)]
pub struct Section {
    /// Doc comments and other attributes for the generated module.
    pub attrs: Vec<syn::Attribute>,
    /// Visibility of the generated module.
    pub vis: syn::Visibility,
    /// Name of the generated module.
    pub name: syn::Ident,
    /// Which id it reads.
    pub index: IdKind,
    /// Inputs, in order.
    pub inputs: Vec<Input>,
    /// Constant expressions passed in registers.
    pub consts: Vec<TokenStream>,
    /// Every value.
    pub values: Vec<Value>,
    /// Named exits.
    pub exits: Vec<ExitDecl>,
    /// Types of the committed value (a tuple when more than one).
    pub ret: Vec<syn::Type>,
    /// Values returned on commit.
    pub ret_vals: Vec<Val>,
    /// Per value: derived from memory the section owns until it commits
    /// (`#[owned(..)]`).
    pub owned: Vec<bool>,
    /// The body.
    pub ops: Vec<Op>,
    /// Where each op came from, for errors after parsing.
    pub spans: Vec<Span>,
    /// The section's source, as tokens printed.
    pub source: String,
}

impl Section {
    /// Index of the commit op (always the last).
    pub fn commit_index(&self) -> usize {
        self.ops.len() - 1
    }
    /// Whether any exit or the commit hands values back through memory.
    pub fn has_out(&self) -> bool {
        !self.ret_vals.is_empty()
            || self
                .ops
                .iter()
                .any(|op| matches!(op, Op::Exit { vals, .. } if !vals.is_empty()))
    }
    /// Number of values handed back at most (the out buffer's length).
    pub fn out_len(&self) -> usize {
        let exits = self.ops.iter().map(|op| match op {
            Op::Exit { vals, .. } => vals.len(),
            _ => 0,
        });
        exits.chain([self.ret_vals.len()]).max().unwrap_or(0)
    }
}
