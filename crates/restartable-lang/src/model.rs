//! The model checker: runs a section's *lowered* form (the instructions
//! the assembler gets, per architecture) in an interpreter and compares
//! every way it can run with the author's sequential specification:
//!
//! - uninterrupted, for every case the author gives (ids in and out of
//!   range included);
//! - aborted at every instruction boundary between `start_ip` and the
//!   commit, in turn: an aborted attempt must publish nothing, and its
//!   retry must do what the specification says;
//! - aborted at every boundary, with each other section of the same
//!   structure run to completion before the retry (the interleavings a
//!   preemption allows on one CPU);
//! - with a remote actor that sets the structure's guard at any boundary,
//!   and fences (aborting the section if it is still inside) at any later
//!   one, then works on the data and clears the guard: the result must be
//!   one of the serial orders.
//!
//! What is "published" is the author's `observe` function: the part of
//! memory readers may look at. Accesses outside the memory the case
//! declares are faults, and fail the check (a missing id check shows up
//! so).

use std::collections::HashMap;

use quote::ToTokens;

use crate::arch::{exit_of, Arch};
use crate::ir::{Op, Section, ValKind};
use crate::machine::{self, Alloc, Goto, Inst, Reg, Rhs, Variant};

/// Memory of the model: disjoint regions at fixed addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    regions: Vec<(u64, Vec<u8>)>,
}

/// An access outside every region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The address.
    pub addr: u64,
    /// A store (else a load).
    pub write: bool,
}

impl Memory {
    /// Empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new zeroed region of `len` bytes, 64-byte aligned, with unmapped
    /// space around it; returns its address.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let base = 0x1000_0000 + 0x10_0000 * self.regions.len() as u64;
        self.regions.push((base, vec![0; len]));
        base
    }

    fn find(&self, addr: u64, bytes: u64) -> Option<(usize, usize)> {
        self.regions
            .iter()
            .enumerate()
            .find_map(|(n, (base, data))| {
                let off = addr.checked_sub(*base)?;
                (off + bytes <= data.len() as u64).then_some((n, off as usize))
            })
    }

    /// Reads `bytes` (1, 2, 4, 8) little-endian, zero-extended.
    pub fn read(&self, addr: u64, bytes: u64) -> Result<u64, Fault> {
        let (n, off) = self.find(addr, bytes).ok_or(Fault { addr, write: false })?;
        let mut v = [0u8; 8];
        v[..bytes as usize].copy_from_slice(&self.regions[n].1[off..off + bytes as usize]);
        Ok(u64::from_le_bytes(v))
    }

    /// Writes the low `bytes` of `value`.
    pub fn write(&mut self, addr: u64, bytes: u64, value: u64) -> Result<(), Fault> {
        let (n, off) = self.find(addr, bytes).ok_or(Fault { addr, write: true })?;
        self.regions[n].1[off..off + bytes as usize]
            .copy_from_slice(&value.to_le_bytes()[..bytes as usize]);
        Ok(())
    }

    /// Reads a `u64`; panics outside memory (for specifications).
    pub fn get(&self, addr: u64) -> u64 {
        self.read(addr, 8)
            .expect("the specification reads declared memory")
    }

    /// Writes a `u64`; panics outside memory (for specifications).
    pub fn set(&mut self, addr: u64, value: u64) {
        self.write(addr, 8, value)
            .expect("the specification writes declared memory")
    }
}

/// How one run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed, with the values returned.
    Committed(Vec<u64>),
    /// Left through exit `n` (declaration order) with its values.
    Exit(usize, Vec<u64>),
    /// Aborted.
    Aborted,
    /// Touched memory outside every region.
    Fault(Fault),
    /// Ran into the compare-twice failure.
    CompareTwice,
}

/// One starting point: memory, the id the thread runs with, the inputs.
#[derive(Clone, Debug)]
pub struct Case {
    /// Initial memory.
    pub memory: Memory,
    /// The id (`cpu_id` or `mm_cid`) the thread has.
    pub id: u32,
    /// The inputs, as words, in declaration order.
    pub inputs: Vec<u64>,
}

/// A sequential specification: what the operation does, given memory, id
/// and inputs, as `Committed` or `Exit`.
pub type Spec<'a> = &'a dyn Fn(&mut Memory, u32, &[u64]) -> Outcome;

/// Another section of the same structure, with its inputs and its
/// specification, run between an abort and the retry.
pub struct Other<'a> {
    /// The section.
    pub section: &'a Section,
    /// Its inputs.
    pub inputs: Vec<u64>,
    /// Its specification.
    pub spec: Spec<'a>,
}

/// A remote thread using the guard-and-fence protocol: it sets the guard,
/// fences (aborting a section in progress), works on the data, and clears
/// the guard.
pub struct Remote<'a> {
    /// Sets the guard.
    pub set_guard: &'a dyn Fn(&mut Memory),
    /// Works on the data under the guard.
    pub work: &'a dyn Fn(&mut Memory),
    /// Clears the guard.
    pub clear_guard: &'a dyn Fn(&mut Memory),
}

/// What the checker is given.
pub struct Check<'a> {
    /// The section under test.
    pub section: &'a Section,
    /// Its specification.
    pub spec: Spec<'a>,
    /// The published part of memory.
    pub observe: &'a dyn Fn(&Memory) -> Vec<u64>,
    /// Starting points.
    pub cases: Vec<Case>,
    /// Other sections of the structure.
    pub others: Vec<Other<'a>>,
    /// A remote actor, if the structure has a guard.
    pub remote: Option<Remote<'a>>,
}

/// What a passing check covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Runs of the lowered code, over every architecture.
    pub runs: u64,
    /// Instruction boundaries at which an abort was forced.
    pub aborts: u64,
}

/// The interpreter of one lowered section.
struct Machine<'a> {
    s: &'a Section,
    insts: Vec<Inst>,
    labels: HashMap<u32, usize>,
    alloc: Alloc,
    consts: Vec<u64>,
}

/// The register a value lives in: its slot (so a sharing mistake of the
/// allocator shows), or a fixed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Fixed(Reg),
    Slot(usize),
}

impl<'a> Machine<'a> {
    fn new(s: &'a Section, arch: Arch, v: Variant) -> Result<Self, String> {
        let insts = machine::lower(s, arch.traits(), v);
        let labels = insts
            .iter()
            .enumerate()
            .filter_map(|(n, i)| match i {
                Inst::Label(l) => Some((*l, n)),
                _ => None,
            })
            .collect();
        let consts = s.consts.iter().map(|c| const_value(c).ok_or_else(|| format!("constant `{c}` of `{}` is not a literal: the model checker takes literal constants only (pass others as inputs)", s.name))).collect::<Result<_, _>>()?;
        Ok(Machine {
            s,
            insts,
            labels,
            alloc: machine::allocate(s, v),
            consts,
        })
    }

    fn key(&self, r: Reg) -> Key {
        match r {
            Reg::V(v) => Key::Slot(self.alloc.slot[v].expect("a slot")),
            r => Key::Fixed(r),
        }
    }

    /// Runs once. `abort_after`: force an abort once that many
    /// instructions ran inside the section. `hook(steps, memory)` runs at
    /// every boundary inside the section, before the next instruction.
    /// Returns the outcome and the number of boundaries seen.
    fn run(
        &self,
        mem: &mut Memory,
        id: u32,
        inputs: &[u64],
        abort_after: Option<u64>,
        hook: &mut dyn FnMut(u64, &mut Memory) -> bool,
    ) -> (Outcome, u64) {
        let mut regs: HashMap<Key, u64> = HashMap::new();
        for (v, value) in self.s.values.iter().enumerate() {
            let Some(k) = self.alloc.slot[v] else {
                continue;
            };
            if let ValKind::Input(n) = value.kind {
                regs.insert(Key::Slot(k), inputs[n]);
            }
            if let ValKind::Const(n) = value.kind {
                regs.insert(Key::Slot(k), self.consts[n]);
            }
        }
        let out = mem.alloc(8 * self.s.out_len().max(1));
        regs.insert(Key::Fixed(Reg::Out), out);
        regs.insert(Key::Fixed(Reg::Zero), 0);
        let mut flags = (0u64, 0u64);
        let mut pc = 0;
        let mut inside = false;
        let mut steps = 0u64;
        let get =
            |regs: &HashMap<Key, u64>, r: Reg| -> u64 { *regs.get(&self.key(r)).unwrap_or(&0) };
        let rhs = |regs: &HashMap<Key, u64>, b: Rhs| match b {
            Rhs::R(r) => get(regs, r),
            Rhs::I(i) => i as u64,
        };
        let result = loop {
            // Once the commit ran, the next ip is post_commit_ip: outside.
            if inside && self.insts.get(pc) != Some(&Inst::PostCommit) {
                if !hook(steps, mem) || abort_after == Some(steps) {
                    break Outcome::Aborted;
                }
                steps += 1;
            }
            let Some(inst) = self.insts.get(pc) else {
                let vals = (0..self.s.ret_vals.len())
                    .map(|k| mem.read(out + 8 * k as u64, 8).unwrap_or(0))
                    .collect();
                break Outcome::Committed(vals);
            };
            pc += 1;
            let mut goto = None;
            match inst {
                Inst::Arm | Inst::Inject(_) | Inst::Fence(_) | Inst::Label(_) => {}
                Inst::Start => inside = true,
                Inst::PostCommit => inside = false,
                Inst::ReadId { dst } => {
                    regs.insert(self.key(*dst), id as u64);
                }
                Inst::Load {
                    dst,
                    base,
                    index,
                    off,
                    width,
                    signed,
                    ..
                } => {
                    let addr = get(&regs, *base)
                        .wrapping_add(index.map_or(0, |i| get(&regs, i)))
                        .wrapping_add(*off as u64);
                    match mem.read(addr, width.bytes()) {
                        Ok(mut v) => {
                            if *signed {
                                let sh = 64 - width.bits();
                                v = (((v << sh) as i64) >> sh) as u64;
                            }
                            regs.insert(self.key(*dst), v);
                        }
                        Err(f) => break Outcome::Fault(f),
                    }
                }
                Inst::Store {
                    src,
                    base,
                    index,
                    off,
                    width,
                    ..
                } => {
                    let addr = get(&regs, *base)
                        .wrapping_add(index.map_or(0, |i| get(&regs, i)))
                        .wrapping_add(*off as u64);
                    if let Err(f) = mem.write(addr, width.bytes(), get(&regs, *src)) {
                        break Outcome::Fault(f);
                    }
                }
                Inst::AddMem {
                    base,
                    off,
                    b,
                    width,
                } => {
                    let addr = get(&regs, *base).wrapping_add(*off as u64);
                    let v = match mem.read(addr, width.bytes()) {
                        Ok(v) => v.wrapping_add(rhs(&regs, *b)),
                        Err(f) => break Outcome::Fault(f),
                    };
                    if let Err(f) = mem.write(addr, width.bytes(), v) {
                        break Outcome::Fault(f);
                    }
                }
                Inst::Extend { dst, width } => {
                    let sh = 64 - width.bits();
                    let v = get(&regs, *dst);
                    regs.insert(self.key(*dst), (((v << sh) as i64) >> sh) as u64);
                }
                Inst::Mov { dst, src } => {
                    let v = get(&regs, *src);
                    regs.insert(self.key(*dst), v);
                }
                Inst::Li { dst, imm } => {
                    regs.insert(self.key(*dst), *imm as u64);
                }
                Inst::Alu { op, dst, a, b } => {
                    let v = op.eval(get(&regs, *a), rhs(&regs, *b));
                    regs.insert(self.key(*dst), v);
                }
                Inst::Cmp { a, b } => flags = (get(&regs, *a), rhs(&regs, *b)),
                Inst::Bcc { cond, to } => {
                    if cond.eval(flags.0, flags.1) {
                        goto = Some(*to);
                    }
                }
                Inst::Brr { cond, a, b, to } => {
                    if cond.eval(get(&regs, *a), get(&regs, *b)) {
                        goto = Some(*to);
                    }
                }
                Inst::Jmp { to } => goto = Some(*to),
            }
            match goto {
                None => {}
                Some(Goto::Local(l)) => pc = self.labels[&l],
                Some(Goto::Abort) => break Outcome::Aborted,
                Some(Goto::CtFail) => break Outcome::CompareTwice,
                Some(Goto::Exit(op)) => {
                    let vals = match &self.s.ops[op] {
                        Op::Exit { vals, .. } => {
                            vals.iter().map(|v| get(&regs, Reg::V(*v))).collect()
                        }
                        _ => Vec::new(),
                    };
                    break Outcome::Exit(exit_of(self.s, op), vals);
                }
            }
        };
        (result, steps)
    }
}

/// The value of a literal constant (`2048`, `-1`, `(4096u64)`).
fn const_value(c: &proc_macro2::TokenStream) -> Option<u64> {
    match syn::parse2::<syn::Expr>(c.clone()).ok()? {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => i.base10_parse::<u64>().ok(),
        syn::Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => match *expr {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(i),
                ..
            }) => i.base10_parse::<u64>().ok().map(u64::wrapping_neg),
            _ => None,
        },
        syn::Expr::Paren(p) => const_value(&p.expr.to_token_stream()),
        _ => None,
    }
}

fn none(_: u64, _: &mut Memory) -> bool {
    true
}

/// Runs every check on every architecture, with and without the
/// compare-twice re-check; the first difference is the error, described.
pub fn check(c: &Check) -> Result<Report, String> {
    let mut report = Report::default();
    for arch in Arch::ALL {
        for twice in [false, true] {
            let v = Variant {
                inject: false,
                twice,
            };
            let m = Machine::new(c.section, arch, v)?;
            let others: Vec<Machine> = c
                .others
                .iter()
                .map(|o| Machine::new(o.section, arch, v))
                .collect::<Result<_, _>>()?;
            for (n, case) in c.cases.iter().enumerate() {
                let at = |what: &str| {
                    format!(
                        "{} (compare-twice {twice}), case {n} (id {}): {what}",
                        arch.traits().name,
                        case.id
                    )
                };
                check_case(c, &m, &others, case, &mut report).map_err(|e| at(&e))?;
            }
        }
    }
    Ok(report)
}

fn expect(c: &Check, mem: &Memory, id: u32, inputs: &[u64]) -> (Outcome, Memory) {
    let mut m = mem.clone();
    let o = (c.spec)(&mut m, id, inputs);
    (o, m)
}

fn check_case(
    c: &Check,
    m: &Machine,
    others: &[Machine],
    case: &Case,
    report: &mut Report,
) -> Result<(), String> {
    let observe = c.observe;
    let (want, want_mem) = expect(c, &case.memory, case.id, &case.inputs);
    // Uninterrupted.
    let mut mem = case.memory.clone();
    let (got, steps) = m.run(&mut mem, case.id, &case.inputs, None, &mut none);
    report.runs += 1;
    if got != want || observe(&mem) != observe(&want_mem) {
        return Err(format!("uninterrupted run gave {got:?} and published {:?}; the specification says {want:?} and {:?}", observe(&mem), observe(&want_mem)));
    }
    // An abort at every boundary, then the retry.
    for k in 0..steps {
        let mut mem = case.memory.clone();
        let (o, _) = m.run(&mut mem, case.id, &case.inputs, Some(k), &mut none);
        report.runs += 1;
        report.aborts += 1;
        if o != Outcome::Aborted {
            return Err(format!("forced abort after {k} instructions gave {o:?}"));
        }
        if observe(&mem) != observe(&case.memory) {
            return Err(format!("an attempt aborted after {k} of {steps} instructions published {:?} (before: {:?}): a store to published memory before the commit", observe(&mem), observe(&case.memory)));
        }
        let (o, _) = m.run(&mut mem, case.id, &case.inputs, None, &mut none);
        report.runs += 1;
        if o != want || observe(&mem) != observe(&want_mem) {
            return Err(format!("the retry after an abort at instruction {k} gave {o:?}, published {:?}; the specification says {want:?}, {:?}", observe(&mem), observe(&want_mem)));
        }
        // Another section of the structure between the abort and the retry.
        for (other, o_spec) in others.iter().zip(&c.others) {
            let mut mem = case.memory.clone();
            let _ = m.run(&mut mem, case.id, &case.inputs, Some(k), &mut none);
            let (oo, _) = other.run(&mut mem, case.id, &o_spec.inputs, None, &mut none);
            let mut spec_mem = case.memory.clone();
            let so = (o_spec.spec)(&mut spec_mem, case.id, &o_spec.inputs);
            if oo != so {
                return Err(format!("`{}` run after an abort of `{}` at instruction {k} gave {oo:?}; its specification says {so:?} (the aborted attempt left something behind)", o_spec.section.name, c.section.name));
            }
            let (o, _) = m.run(&mut mem, case.id, &case.inputs, None, &mut none);
            let w = (c.spec)(&mut spec_mem, case.id, &case.inputs);
            report.runs += 2;
            if o != w || observe(&mem) != observe(&spec_mem) {
                return Err(format!("`{}`, aborted at instruction {k}, then `{}`, then the retry: {o:?}, published {:?}; serially: {w:?}, {:?}", c.section.name, o_spec.section.name, observe(&mem), observe(&spec_mem)));
            }
        }
    }
    if let Some(r) = &c.remote {
        check_remote(c, m, case, r, steps, report)?;
    }
    Ok(())
}

/// The remote actor sets the guard after `k` instructions and fences after
/// `j >= k` (or after the section finished).
fn check_remote(
    c: &Check,
    m: &Machine,
    case: &Case,
    r: &Remote,
    steps: u64,
    report: &mut Report,
) -> Result<(), String> {
    let observe = c.observe;
    // The serial orders.
    let mut first = case.memory.clone();
    let w_first = (c.spec)(&mut first, case.id, &case.inputs);
    (r.set_guard)(&mut first);
    (r.work)(&mut first);
    (r.clear_guard)(&mut first);
    let mut guarded = case.memory.clone();
    (r.set_guard)(&mut guarded);
    let w_guarded = (c.spec)(&mut guarded, case.id, &case.inputs);
    (r.work)(&mut guarded);
    (r.clear_guard)(&mut guarded);
    let mut last = case.memory.clone();
    (r.set_guard)(&mut last);
    (r.work)(&mut last);
    (r.clear_guard)(&mut last);
    let w_last = (c.spec)(&mut last, case.id, &case.inputs);
    let serial = [
        (w_first, observe(&first)),
        (w_guarded, observe(&guarded)),
        (w_last, observe(&last)),
    ];
    for k in 0..=steps {
        for j in k..=steps + 1 {
            let mut mem = case.memory.clone();
            let mut hook = |n: u64, mem: &mut Memory| {
                if n == k {
                    (r.set_guard)(mem);
                }
                n != j
            };
            let (mut o, _) = m.run(&mut mem, case.id, &case.inputs, None, &mut hook);
            if k >= steps {
                // The section finished before the guard was set.
                (r.set_guard)(&mut mem);
            }
            (r.work)(&mut mem);
            (r.clear_guard)(&mut mem);
            if o == Outcome::Aborted {
                o = m.run(&mut mem, case.id, &case.inputs, None, &mut none).0;
            }
            report.runs += 1;
            let seen = (o, observe(&mem));
            if !serial.contains(&seen) {
                return Err(format!("with the guard set after {k} instructions and the fence after {j}: {:?}, published {:?}; no serial order gives that (they give {serial:?})", seen.0, seen.1));
            }
        }
    }
    Ok(())
}
