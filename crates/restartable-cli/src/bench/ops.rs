//! `restartable bench ops`: each critical section against its nearest
//! alternative built from atomics or a mutex, at 1, N and 4N threads,
//! measured in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use clap::ValueEnum;
use crossbeam_utils::CachePadded;
use restartable::section::{Index, Order, Outcome, Thread};
use serde::Serialize;

use super::harness::{self, Budget, Measured, Plan, Workload};
use super::report::{self, print_table, TableRow};
use super::RunArgs;
use crate::stress::sections::{self, Record, Structure};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Variant {
    /// `add` section on the current CPU's word.
    SectionAdd,
    /// `fetch_add` on the current CPU's atomic (rseq CPU id).
    PercpuFetchAdd,
    /// `compare_store` section incrementing the current CPU's word.
    SectionCompareStore,
    /// `compare_exchange` loop on the current CPU's atomic.
    PercpuCas,
    /// Per-CPU intrusive lists: `pop` section, push with `compare_store`.
    SectionList,
    /// One lock-free stack with a tagged head (index + ABA tag), pop + push.
    TaggedStack,
    /// One `Mutex<Vec<u64>>`, pop + push.
    MutexVec,
    /// Per-CPU record buffers, 32-byte records copied out and back in with
    /// `memcpy_then_store`.
    SectionMemcpy,
    /// One `Mutex<Vec<Record>>`, 32-byte records popped and pushed back.
    MutexCopy,
    /// Per-CPU spinlock: lock with `compare_store`, increment, unlock with
    /// a release store (the shape of the reference C library's spinlock
    /// benchmark loop).
    SectionSpinlock,
    /// Per-CPU pointer buffers: pop with `compare2_store`, push back with
    /// `store_then_store` (the shape of its pointer-buffer loop).
    SectionBuffer,
    /// `restartable::Counter::inc`, whose section reads the id itself: the
    /// yardstick that scales the reference library's figures to this run.
    Counter,
}

impl Variant {
    const ALL: [Variant; 12] = [
        Variant::SectionAdd,
        Variant::PercpuFetchAdd,
        Variant::SectionCompareStore,
        Variant::PercpuCas,
        Variant::SectionList,
        Variant::TaggedStack,
        Variant::MutexVec,
        Variant::SectionMemcpy,
        Variant::MutexCopy,
        Variant::SectionSpinlock,
        Variant::SectionBuffer,
        Variant::Counter,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::SectionAdd => "section_add",
            Variant::PercpuFetchAdd => "percpu_fetch_add",
            Variant::SectionCompareStore => "section_compare_store",
            Variant::PercpuCas => "percpu_cas",
            Variant::SectionList => "section_list",
            Variant::TaggedStack => "tagged_stack",
            Variant::MutexVec => "mutex_vec",
            Variant::SectionMemcpy => "section_memcpy",
            Variant::MutexCopy => "mutex_copy",
            Variant::SectionSpinlock => "section_spinlock",
            Variant::SectionBuffer => "section_buffer",
            Variant::Counter => "counter",
        }
    }

    /// The section variant this one is compared with.
    fn section(self) -> Variant {
        match self {
            Variant::SectionAdd | Variant::PercpuFetchAdd => Variant::SectionAdd,
            Variant::SectionCompareStore | Variant::PercpuCas => Variant::SectionCompareStore,
            Variant::SectionList | Variant::TaggedStack | Variant::MutexVec => Variant::SectionList,
            Variant::SectionMemcpy | Variant::MutexCopy => Variant::SectionMemcpy,
            // Rows of their own, for comparison with the C library's loops.
            Variant::SectionSpinlock => Variant::SectionSpinlock,
            Variant::SectionBuffer => Variant::SectionBuffer,
            Variant::Counter => Variant::Counter,
        }
    }
}

#[derive(Serialize)]
struct Row {
    variant: Variant,
    threads: u32,
    ns_per_op: f64,
    mops: f64,
    exact: bool,
    /// The section this variant is compared with.
    section: Variant,
    /// Its section's Mops/s over this variant's at the same thread count
    /// (above 1: the section is faster).
    vs_section: Option<f64>,
}

/// The reference C library's benchmark loops at one thread (ns per
/// operation), measured on the development machine on a day its `counter`
/// row took [`REFERENCE_COUNTER`] ns, with the row shaped like each.
const REFERENCE: [(&str, Variant, f64); 4] = [
    ("increment", Variant::SectionAdd, 0.51),
    ("spinlock", Variant::SectionSpinlock, 1.13),
    ("list pop+push", Variant::SectionList, 1.58),
    ("pointer buffer pop+push", Variant::SectionBuffer, 2.30),
];
const REFERENCE_COUNTER: f64 = 0.59;

/// The reference loops scaled to this run by its one-thread `counter` row,
/// against the rows shaped like them; nothing when those rows did not run.
fn print_reference(rows: &[Row]) {
    let at_one = |v: Variant| {
        rows.iter()
            .find(|r| r.variant == v && r.threads == 1)
            .map(|r| r.ns_per_op)
    };
    let Some(counter) = at_one(Variant::Counter) else {
        return;
    };
    let scale = counter / REFERENCE_COUNTER;
    let mut lines = Vec::new();
    for (name, variant, ns) in REFERENCE {
        if let Some(ours) = at_one(variant) {
            let theirs = ns * scale;
            lines.push(format!(
                "  {name}: reference {ns:.2} ns x {scale:.2} = {theirs:.2} ns; {} {ours:.2} ns = {:.2}x the reference",
                variant.name(),
                ours / theirs
            ));
        }
    }
    if !lines.is_empty() {
        println!("the reference C library's loops at 1 thread, measured when counter took {REFERENCE_COUNTER} ns, scaled by this run's counter ({counter:.2} ns); below 1x is faster than the reference:");
        for l in lines {
            println!("{l}");
        }
    }
}

/// A `Structure` from the stress modes, driven on the rseq path.
struct Sections<S: Structure>(S);
impl<S: Structure> Workload for Sections<S> {
    #[inline(always)]
    fn op(&self) {
        if let Some(t) = Thread::current() {
            self.0.op(&t, Index::Cpu, Order::Relaxed);
        }
    }
}

/// `compare_store` incrementing the current CPU's word.
struct CompareStore(Vec<CachePadded<AtomicU64>>);
impl Workload for CompareStore {
    #[inline(always)]
    fn op(&self) {
        let Some(t) = Thread::current() else { return };
        loop {
            let Some(id) = t.id(Index::Cpu) else { return };
            let word = &self.0[id.as_usize() % self.0.len()];
            let old = word.load(Ordering::Relaxed);
            // SAFETY: the word of `id` is written only by sections with that id.
            if let Outcome::Committed(()) =
                unsafe { t.compare_store(id, Order::Relaxed, word.as_ptr(), old, old + 1) }
            {
                return;
            }
        }
    }
}

struct Counter(restartable::Counter);
impl Workload for Counter {
    #[inline(always)]
    fn op(&self) {
        self.0.inc();
    }
}

struct FetchAdd(Vec<CachePadded<AtomicU64>>);
impl Workload for FetchAdd {
    #[inline(always)]
    fn op(&self) {
        self.0[restartable::current_cpu() % self.0.len()].fetch_add(1, Ordering::Relaxed);
    }
}

struct Cas(Vec<CachePadded<AtomicU64>>);
impl Workload for Cas {
    #[inline(always)]
    fn op(&self) {
        let word = &self.0[restartable::current_cpu() % self.0.len()];
        let mut old = word.load(Ordering::Relaxed);
        while let Err(seen) =
            word.compare_exchange_weak(old, old + 1, Ordering::Relaxed, Ordering::Relaxed)
        {
            old = seen;
        }
    }
}

/// A Treiber stack over an array of nodes; the head packs a node index
/// (low 32 bits, `u32::MAX` for empty) and an ABA tag (high 32 bits).
struct TaggedStack {
    head: CachePadded<AtomicU64>,
    next: Vec<AtomicU64>,
}

const EMPTY: u64 = u32::MAX as u64;

impl TaggedStack {
    fn new(nodes: usize) -> Self {
        let next: Vec<AtomicU64> = (0..nodes as u64)
            .map(|i| AtomicU64::new(if i + 1 < nodes as u64 { i + 1 } else { EMPTY }))
            .collect();
        TaggedStack {
            head: CachePadded::new(AtomicU64::new(if nodes > 0 { 0 } else { EMPTY })),
            next,
        }
    }
    fn pop(&self) -> Option<u64> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let index = head & EMPTY;
            if index == EMPTY {
                return None;
            }
            let next = self.next[index as usize].load(Ordering::Relaxed);
            let new = (head & !EMPTY).wrapping_add(1 << 32) | next;
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(index),
                Err(seen) => head = seen,
            }
        }
    }
    fn push(&self, index: u64) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            self.next[index as usize].store(head & EMPTY, Ordering::Relaxed);
            let new = (head & !EMPTY).wrapping_add(1 << 32) | index;
            match self
                .head
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => head = seen,
            }
        }
    }
    fn count(&self) -> usize {
        let mut n = 0;
        let mut i = self.head.load(Ordering::Acquire) & EMPTY;
        while i != EMPTY && n <= self.next.len() {
            n += 1;
            i = self.next[i as usize].load(Ordering::Relaxed);
        }
        n
    }
}

impl Workload for TaggedStack {
    #[inline(always)]
    fn op(&self) {
        if let Some(node) = self.pop() {
            self.push(node);
        }
    }
}

struct MutexVec(Mutex<Vec<u64>>);
impl Workload for MutexVec {
    #[inline(always)]
    fn op(&self) {
        let item = self.0.lock().ok().and_then(|mut v| v.pop());
        if let (Some(item), Ok(mut v)) = (item, self.0.lock()) {
            v.push(item);
        }
    }
}

struct MutexCopy(Mutex<Vec<Record>>);
impl Workload for MutexCopy {
    #[inline(always)]
    fn op(&self) {
        let record = self.0.lock().ok().and_then(|mut v| v.pop());
        if let (Some(record), Ok(mut v)) = (record, self.0.lock()) {
            v.push(std::hint::black_box(record));
        }
    }
}

fn slots() -> Vec<CachePadded<AtomicU64>> {
    (0..restartable::possible_cpus())
        .map(|_| CachePadded::new(AtomicU64::new(0)))
        .collect()
}

fn sum(slots: &[CachePadded<AtomicU64>]) -> u64 {
    slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
}

/// Runs one variant: (measurement, exact).
fn measure(variant: Variant, threads: u32, budget: Budget) -> Result<(Measured, bool), String> {
    let items = 16 * restartable::possible_cpus();
    match variant {
        Variant::SectionAdd => {
            let w = Sections(sections::Increment::new());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.verify(m.ops).exact))
        }
        Variant::PercpuFetchAdd => {
            let w = FetchAdd(slots());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, sum(&w.0) == m.ops))
        }
        Variant::SectionCompareStore => {
            let w = CompareStore(slots());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, sum(&w.0) == m.ops))
        }
        Variant::PercpuCas => {
            let w = Cas(slots());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, sum(&w.0) == m.ops))
        }
        Variant::SectionList => {
            let w = Sections(sections::List::new(items));
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.verify(m.ops).exact))
        }
        Variant::TaggedStack => {
            let w = TaggedStack::new(items);
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.count() == items))
        }
        Variant::MutexVec => {
            let w = MutexVec(Mutex::new((0..items as u64).collect()));
            let m = harness::run(&w, threads, budget)?;
            let mut v = w.0.into_inner().unwrap_or_default();
            v.sort_unstable();
            Ok((m, v == (0..items as u64).collect::<Vec<_>>()))
        }
        Variant::SectionMemcpy => {
            let w = Sections(sections::MemcpyBuffer::new(items));
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.verify(m.ops).exact))
        }
        Variant::MutexCopy => {
            let w = MutexCopy(Mutex::new((0..items as u64).map(Record::new).collect()));
            let m = harness::run(&w, threads, budget)?;
            let v = w.0.into_inner().unwrap_or_default();
            Ok((m, v.len() == items && v.iter().all(Record::valid)))
        }
        Variant::SectionSpinlock => {
            let w = Sections(sections::Spinlock::new());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.verify(m.ops).exact))
        }
        Variant::SectionBuffer => {
            let w = Sections(sections::Buffer::new(items));
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.verify(m.ops).exact))
        }
        Variant::Counter => {
            let w = Counter(restartable::Counter::new());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.sum() == m.ops))
        }
    }
}

pub fn run(args: &RunArgs, variants: Vec<Variant>) -> Result<(), String> {
    if Thread::current().is_none() {
        return Err(format!(
            "bench ops measures critical sections and needs rseq, which this thread cannot use: {}",
            restartable::registration()
                .fallback
                .map_or("no sections on this target".to_owned(), |r| r.to_string())
        ));
    }
    let plan = Plan::new(args);
    let variants = if variants.is_empty() {
        Variant::ALL.to_vec()
    } else {
        variants
    };
    let measured = plan.run(&variants, Variant::name, measure)?;
    let ratios = report::ratios(&measured, Variant::section);
    let rows: Vec<Row> = measured
        .into_iter()
        .zip(ratios)
        .map(|((v, t, m, exact), ratio)| Row {
            variant: v,
            threads: t,
            ns_per_op: m.ns_per_op,
            mops: m.mops,
            exact,
            section: v.section(),
            vs_section: ratio,
        })
        .collect();
    if args.json {
        report::print_json(&rows)?;
    } else {
        println!(
            "restartable bench ops: {}, {}; each row compared with the section of its group",
            report::cpus(),
            report::rseq_state()
        );
        let table: Vec<TableRow> = rows
            .iter()
            .map(|r| {
                (
                    r.variant.name(),
                    r.threads,
                    r.ns_per_op,
                    r.mops,
                    r.vs_section,
                    r.exact,
                )
            })
            .collect();
        print_table("x section", &table);
        println!("x section: its section's Mops/s over this variant's at the same thread count; above 1 means the section is faster.");
        println!("list, stack and mutex rows are one pop plus one push; memcpy rows copy a 32-byte record out and back.");
        print_reference(&rows);
    }
    if rows.iter().all(|r| r.exact) {
        Ok(())
    } else {
        Err("a variant's final state was not exact".to_owned())
    }
}
