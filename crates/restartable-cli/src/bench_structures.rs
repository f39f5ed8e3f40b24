//! `restartable bench structures`: the library's per-CPU structures (`Pool`,
//! `Stack`, `Buffer`) against the structures people use today, at 1, N and
//! 4N threads, measured in the same run.
//!
//! Two groups of variants, each compared only within itself:
//!
//! - object reuse: one operation takes an object, writes one word of it and
//!   gives it back;
//! - record buffer: one operation appends a 16-byte record; one consumer
//!   thread drains all the time while the producers run, and only producer
//!   operations count.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use clap::ValueEnum;
use crossbeam_utils::CachePadded;
use restartable::{Buffer, Full, Node, Pool, Stack};
use serde::Serialize;

use crate::measure::{
    self, print_ratios_table, Budget, Measured, Plan, RatiosRow, RunArgs, Workload,
};
use crate::plot;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Variant {
    /// `restartable::Pool`: `get`, write one word, drop the guard.
    Pool,
    /// `restartable::Stack`: pop a node (local CPU, then steal), write one
    /// word, push it back; pre-filled.
    Stack,
    /// crossbeam `ArrayQueue<Box<Obj>>`, pop + push, pre-filled.
    ArrayQueue,
    /// crossbeam `SegQueue<Box<Obj>>`, pop + push, pre-filled.
    SegQueue,
    /// One `Mutex<Vec<Box<Obj>>>`, pop + push (two lock acquisitions).
    MutexVec,
    /// `sharded_slab::Pool`: `create_with` + `clear`.
    ShardedSlab,
    /// A `thread_local!` `Vec<Box<Obj>>` cache, pop + push: the floor. It
    /// never shares an object between threads (an object freed on another
    /// thread than the one that took it would stay there), so it is no
    /// substitute for a shared pool; it shows what no sharing costs.
    ThreadLocal,
    /// `restartable::Buffer<[u64; 2]>` (per-CPU capacity 1024): `push`;
    /// the consumer calls `drain` once half a CPU's capacity is
    /// waiting (a drain fences each CPU it empties).
    Buffer,
    /// crossbeam `bounded` channel of 1024 x online CPUs records:
    /// `try_send`; the consumer takes everything with `try_iter`.
    Channel,
    /// One `Mutex<VecDeque<[u64; 2]>>` of 1024 x online CPUs records; the
    /// consumer swaps the whole deque out each time it takes the lock.
    MutexDeque,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    ObjectReuse,
    RecordBuffer,
}

impl Variant {
    const ALL: [Variant; 10] = [
        Variant::Pool,
        Variant::Stack,
        Variant::ArrayQueue,
        Variant::SegQueue,
        Variant::MutexVec,
        Variant::ShardedSlab,
        Variant::ThreadLocal,
        Variant::Buffer,
        Variant::Channel,
        Variant::MutexDeque,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Pool => "pool",
            Variant::Stack => "stack",
            Variant::ArrayQueue => "array_queue",
            Variant::SegQueue => "seg_queue",
            Variant::MutexVec => "mutex_vec",
            Variant::ShardedSlab => "sharded_slab",
            Variant::ThreadLocal => "thread_local",
            Variant::Buffer => "buffer",
            Variant::Channel => "channel",
            Variant::MutexDeque => "mutex_deque",
        }
    }

    /// What the variant is, for the chart's legend.
    fn about(self) -> &'static str {
        match self {
            Variant::Pool => "restartable::Pool (get, drop)",
            Variant::Stack => "restartable::Stack (pop, push)",
            Variant::ArrayQueue => "crossbeam ArrayQueue (pop, push)",
            Variant::SegQueue => "crossbeam SegQueue (pop, push)",
            Variant::MutexVec => "Mutex<Vec> (pop, push)",
            Variant::ShardedSlab => "sharded_slab::Pool (create, clear)",
            Variant::ThreadLocal => "thread-local Vec: never shares, the floor",
            Variant::Buffer => "restartable::Buffer (push; consumer drains)",
            Variant::Channel => "crossbeam bounded channel (try_send)",
            Variant::MutexDeque => "Mutex<VecDeque> (consumer swaps it out)",
        }
    }

    fn group(self) -> Group {
        match self {
            Variant::Buffer | Variant::Channel | Variant::MutexDeque => Group::RecordBuffer,
            _ => Group::ObjectReuse,
        }
    }

    /// A structure of this library rather than a baseline.
    fn ours(self) -> bool {
        matches!(self, Variant::Pool | Variant::Stack | Variant::Buffer)
    }

    /// A baseline that shares its objects between threads (every baseline
    /// but the thread-local floor): the candidates for the best baseline.
    fn shares(self) -> bool {
        !self.ours() && self != Variant::ThreadLocal
    }
}

impl Group {
    fn title(self) -> &'static str {
        match self {
            Group::ObjectReuse => "Object reuse: take an object, write one word, give it back",
            Group::RecordBuffer => {
                "Record buffer: producers append 16-byte records, one consumer drains"
            }
        }
    }
}

#[derive(Serialize)]
struct Row {
    variant: Variant,
    group: Group,
    threads: u32,
    ns_per_op: f64,
    mops: f64,
    /// Nothing lost or duplicated: objects all accounted for and touched
    /// once per operation; records all seen by the consumer, intact.
    exact: bool,
    /// Record buffer: pushes that found the structure full, yielded and
    /// retried (null for object reuse).
    full: Option<u64>,
    /// Each baseline of the group (by name): this variant's Mops/s over
    /// the baseline's at the same thread count (above 1: this variant is
    /// faster).
    vs: BTreeMap<&'static str, f64>,
    /// The fastest baseline of the group at this thread count, not counting
    /// the thread-local floor.
    best_baseline: Option<Variant>,
    /// `vs` of `best_baseline`.
    vs_best: Option<f64>,
}

// ---------------------------------------------------------------------------
// Object reuse

/// The reused object: 32 bytes, of which an operation writes one word (a
/// touch count). Every object made and dropped is tallied, and its touches
/// are added up when it is dropped, so a run can check that no object was
/// lost or duplicated and that every operation touched exactly one.
#[derive(Debug)]
struct Obj([u64; 4]);

static MADE: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static TOUCHES: AtomicU64 = AtomicU64::new(0);

impl Obj {
    fn new() -> Obj {
        MADE.fetch_add(1, Ordering::Relaxed);
        Obj([0; 4])
    }

    #[inline(always)]
    fn touch(&mut self) {
        self.0[0] += 1;
    }
}

impl Default for Obj {
    fn default() -> Obj {
        Obj::new()
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        TOUCHES.fetch_add(self.0[0], Ordering::Relaxed);
    }
}

/// sharded_slab resets an object when it is released; these objects carry
/// nothing to reset (a `Pool` does not reset them either), and the touch
/// count must survive for the final check.
impl sharded_slab::Clear for Obj {
    fn clear(&mut self) {}
}

/// (made, dropped, touches) so far.
fn tally() -> [u64; 3] {
    [&MADE, &DROPPED, &TOUCHES].map(|c| c.load(Ordering::Relaxed))
}

/// Takes an object from `take`, yielding until one is there.
#[inline(always)]
fn take<T>(mut take: impl FnMut() -> Option<T>) -> T {
    loop {
        match take() {
            Some(o) => return o,
            None => std::thread::yield_now(),
        }
    }
}

struct PoolWork(Pool<Obj>);
impl Workload for PoolWork {
    #[inline(always)]
    fn op(&self) {
        self.0.get().touch();
    }
}

struct StackWork(Stack<Obj>);
impl Workload for StackWork {
    #[inline(always)]
    fn op(&self) {
        let mut node = take(|| self.0.pop());
        node.touch();
        self.0.push(node);
    }
}

struct ArrayQueueWork(crossbeam_queue::ArrayQueue<Box<Obj>>);
impl Workload for ArrayQueueWork {
    #[inline(always)]
    fn op(&self) {
        let mut o = take(|| self.0.pop());
        o.touch();
        // Cannot fail: this thread just made room. Dropping it would show.
        let _ = self.0.push(o);
    }
}

struct SegQueueWork(crossbeam_queue::SegQueue<Box<Obj>>);
impl Workload for SegQueueWork {
    #[inline(always)]
    fn op(&self) {
        let mut o = take(|| self.0.pop());
        o.touch();
        self.0.push(o);
    }
}

// Boxed like every structure here: an object is its own allocation, handed
// around by pointer, never copied in and out of the structure.
#[allow(clippy::vec_box)]
struct MutexVecWork(Mutex<Vec<Box<Obj>>>);
impl Workload for MutexVecWork {
    #[inline(always)]
    fn op(&self) {
        let mut o = take(|| self.0.lock().ok().and_then(|mut v| v.pop()));
        o.touch();
        if let Ok(mut v) = self.0.lock() {
            v.push(o);
        }
    }
}

struct ShardedSlabWork(sharded_slab::Pool<Obj>);
impl Workload for ShardedSlabWork {
    #[inline(always)]
    fn op(&self) {
        let key = take(|| self.0.create_with(Obj::touch));
        self.0.clear(key);
    }
}

thread_local! {
    #[allow(clippy::vec_box)] // as for MutexVecWork
    static CACHE: RefCell<Vec<Box<Obj>>> = const { RefCell::new(Vec::new()) };
}

/// A per-thread cache: see [`Variant::ThreadLocal`].
struct ThreadLocalWork;
impl Workload for ThreadLocalWork {
    #[inline(always)]
    fn op(&self) {
        let mut o = CACHE
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Box::new(Obj::new()));
        o.touch();
        CACHE.with_borrow_mut(|c| c.push(o));
    }
    fn thread_done(&self) {
        drop(CACHE.take());
    }
}

/// Runs the object-reuse workload `make` builds (objects it makes count),
/// then `finish` drops it with every object it holds: exact when every
/// object made was dropped and the touches add up to the operations.
fn reuse<W: Workload>(
    make: impl FnOnce() -> W,
    threads: u32,
    budget: Budget,
    finish: impl FnOnce(W),
) -> (Measured, bool) {
    let before = tally();
    let work = make();
    let m = measure::run(&work, threads, budget);
    finish(work);
    let [made, dropped, touches] = tally();
    let exact = made - before[0] == dropped - before[1] && touches - before[2] == m.ops;
    (m, exact)
}

fn boxes(n: usize) -> impl Iterator<Item = Box<Obj>> {
    (0..n).map(|_| Box::new(Obj::new()))
}

fn measure_reuse(variant: Variant, threads: u32, budget: Budget, fill: usize) -> (Measured, bool) {
    match variant {
        Variant::Pool => reuse(|| PoolWork(Pool::new(Obj::new)), threads, budget, drop),
        Variant::Stack => reuse(
            || {
                let stack = Stack::new();
                for _ in 0..fill {
                    stack.push(Node::new(Obj::new()));
                }
                StackWork(stack)
            },
            threads,
            budget,
            // Dropping the stack drops the nodes on every CPU's list.
            drop,
        ),
        Variant::ArrayQueue => reuse(
            || {
                let q = crossbeam_queue::ArrayQueue::new(fill);
                boxes(fill).for_each(|o| drop(q.push(o)));
                ArrayQueueWork(q)
            },
            threads,
            budget,
            drop,
        ),
        Variant::SegQueue => reuse(
            || {
                SegQueueWork(boxes(fill).fold(crossbeam_queue::SegQueue::new(), |q, o| {
                    q.push(o);
                    q
                }))
            },
            threads,
            budget,
            drop,
        ),
        Variant::MutexVec => reuse(
            || MutexVecWork(Mutex::new(boxes(fill).collect())),
            threads,
            budget,
            drop,
        ),
        Variant::ShardedSlab => reuse(
            || ShardedSlabWork(sharded_slab::Pool::new()),
            threads,
            budget,
            drop,
        ),
        Variant::ThreadLocal => reuse(|| ThreadLocalWork, threads, budget, drop),
        Variant::Buffer | Variant::Channel | Variant::MutexDeque => {
            unreachable!("a record variant")
        }
    }
}

// ---------------------------------------------------------------------------
// Record buffer

type Record = [u64; 2];

/// Records per CPU in `Buffer`; the other record structures hold this many
/// per online CPU.
const PER_CPU: usize = 1024;

/// A structure producers append records to and one consumer drains.
trait Records: Sync {
    /// Appends `record`, or hands it back when the structure is full.
    fn try_push(&self, record: Record) -> Result<(), Record>;
    /// Gives every record found now to `f`; how many there were.
    fn drain(&self, f: &mut dyn FnMut(&[Record])) -> Result<usize, String>;
    /// Whether a drain now is worth its cost.
    fn worth_draining(&self) -> bool {
        true
    }
}

impl Records for Buffer<Record> {
    #[inline(always)]
    fn try_push(&self, record: Record) -> Result<(), Record> {
        self.push(record).map_err(|Full(r)| r)
    }
    fn drain(&self, f: &mut dyn FnMut(&[Record])) -> Result<usize, String> {
        Buffer::drain(self, |_cpu, records| f(records)).map_err(|e| format!("drain failed: {e}"))
    }
    /// A drain fences every CPU with records (an interrupt there), so the
    /// consumer waits for half a CPU's buffer first instead of
    /// fencing for every few records.
    fn worth_draining(&self) -> bool {
        self.len() >= PER_CPU / 2
    }
}

struct Channel(
    crossbeam_channel::Sender<Record>,
    crossbeam_channel::Receiver<Record>,
);
impl Records for Channel {
    #[inline(always)]
    fn try_push(&self, record: Record) -> Result<(), Record> {
        self.0.try_send(record).map_err(|e| e.into_inner())
    }
    fn drain(&self, f: &mut dyn FnMut(&[Record])) -> Result<usize, String> {
        Ok(self.1.try_iter().map(|r| f(&[r])).count())
    }
}

/// The shared deque and, for the consumer alone, the one it swaps in.
struct MutexDeque {
    queue: Mutex<VecDeque<Record>>,
    spare: Mutex<VecDeque<Record>>,
    capacity: usize,
}
impl Records for MutexDeque {
    #[inline(always)]
    fn try_push(&self, record: Record) -> Result<(), Record> {
        match self.queue.lock() {
            Ok(mut q) if q.len() < self.capacity => {
                q.push_back(record);
                Ok(())
            }
            _ => Err(record),
        }
    }
    fn drain(&self, f: &mut dyn FnMut(&[Record])) -> Result<usize, String> {
        let poisoned = |_| "a producer panicked".to_owned();
        let mut spare = self.spare.lock().map_err(poisoned)?;
        std::mem::swap(&mut *self.queue.lock().map_err(poisoned)?, &mut *spare);
        let (a, b) = spare.as_slices();
        f(a);
        f(b);
        let n = spare.len();
        spare.clear();
        Ok(n)
    }
}

thread_local!(static SEQ: Cell<u64> = const { Cell::new(0) });

/// Sum of 0..n, wrapping.
fn triangle(n: u64) -> u64 {
    (n as u128 * n.saturating_sub(1) as u128 / 2) as u64
}

/// Producer threads: each pushes `[i, !i]` for i = 0, 1, 2, ...
struct Producers<R> {
    records: R,
    full: CachePadded<AtomicU64>,
    /// Sum of the `i`s pushed, added by each thread when it is done.
    sum: CachePadded<AtomicU64>,
}

impl<R: Records> Workload for Producers<R> {
    #[inline(always)]
    fn op(&self) {
        let i = SEQ.get();
        SEQ.set(i + 1);
        let mut record = [i, !i];
        while let Err(back) = self.records.try_push(record) {
            self.full.fetch_add(1, Ordering::Relaxed);
            std::thread::yield_now();
            record = back;
        }
    }
    fn thread_done(&self) {
        self.sum
            .fetch_add(triangle(SEQ.replace(0)), Ordering::Relaxed);
    }
}

/// What the consumer saw.
#[derive(Default)]
struct Seen {
    records: u64,
    sum: u64,
    damaged: u64,
}

impl Seen {
    fn add(&mut self, records: &[Record]) {
        for r in records {
            self.records += 1;
            self.sum = self.sum.wrapping_add(r[0]);
            self.damaged += u64::from(r[1] != !r[0]);
        }
    }
}

/// Runs producers against `records` while one consumer drains it, then
/// drains once more: exact when every record pushed was seen once, intact.
/// Returns (measurement, full retries, what went wrong).
fn produce<R: Records>(
    records: R,
    threads: u32,
    budget: Budget,
) -> (Measured, u64, Option<String>) {
    let work = Producers {
        records,
        full: CachePadded::new(AtomicU64::new(0)),
        sum: CachePadded::new(AtomicU64::new(0)),
    };
    let stop = AtomicBool::new(false);
    let mut seen = Seen::default();
    let (m, consumed) = std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut seen = Seen::default();
            while !stop.load(Ordering::Acquire) {
                if !work.records.worth_draining() || work.records.drain(&mut |r| seen.add(r))? == 0
                {
                    std::thread::yield_now();
                }
            }
            Ok::<_, String>(seen)
        });
        let m = measure::run(&work, threads, budget);
        stop.store(true, Ordering::Release);
        (
            m,
            consumer
                .join()
                .unwrap_or_else(|_| Err("the consumer panicked".to_owned())),
        )
    });
    let full = work.full.load(Ordering::Relaxed);
    let problem = consumed
        .and_then(|consumed| {
            let last = work.records.drain(&mut |r| seen.add(r))?;
            Ok((consumed, last))
        })
        .map(|(consumed, last)| {
            let (records, sum) = (consumed.records + seen.records, consumed.sum.wrapping_add(seen.sum));
            let damaged = consumed.damaged + seen.damaged;
            let expected = work.sum.load(Ordering::Relaxed);
            (records != m.ops || sum != expected || damaged != 0).then(|| {
                format!(
                    "{} records pushed, the consumer saw {} and the final drain {last} ({damaged} damaged; sum of sequence numbers {sum}, expected {expected})",
                    m.ops, consumed.records
                )
            })
        })
        .unwrap_or_else(Some);
    (m, full, problem)
}

fn measure_records(
    variant: Variant,
    threads: u32,
    budget: Budget,
) -> (Measured, u64, Option<String>) {
    let capacity = PER_CPU * restartable::online_cpus().max(1);
    match variant {
        Variant::Buffer => produce(Buffer::<Record>::new(PER_CPU), threads, budget),
        Variant::Channel => {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            produce(Channel(tx, rx), threads, budget)
        }
        Variant::MutexDeque => produce(
            MutexDeque {
                queue: Mutex::new(VecDeque::with_capacity(capacity)),
                spare: Mutex::new(VecDeque::with_capacity(capacity)),
                capacity,
            },
            threads,
            budget,
        ),
        _ => unreachable!("an object variant"),
    }
}

// ---------------------------------------------------------------------------

/// What the ratios compare: throughput of all threads together. Not
/// `ns_per_op`, the mean over threads of each thread's time per operation:
/// with more threads than CPUs, or the consumer thread competing for a CPU,
/// threads get unequal shares of CPU time, and that mean can rank two
/// variants opposite to their throughput.
fn throughput(m: &Measured) -> f64 {
    m.mops
}

pub fn run(args: &RunArgs, variants: Vec<Variant>, plot: Option<PathBuf>) -> Result<(), String> {
    if let Some(path) = &plot {
        // Fail before the runs, not after them, if the chart cannot be
        // written there.
        // (Opened for appending: an existing chart is kept until the new
        // one replaces it.)
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("cannot write the chart {}: {e}", path.display()))?;
    }
    let plan = Plan::new(args);
    let mut variants = if variants.is_empty() {
        Variant::ALL.to_vec()
    } else {
        variants
    };
    variants.sort_unstable();
    variants.dedup();
    // Enough objects that no thread waits for one: 64 per thread of the
    // largest run.
    let fill = 4 * 16 * plan.threads.iter().copied().max().unwrap_or(1) as usize;
    let mut full = BTreeMap::new();
    let mut problems = Vec::new();
    let measured = plan.run(&variants, Variant::name, |v, t, budget| match v.group() {
        Group::ObjectReuse => {
            let (m, exact) = measure_reuse(v, t, budget, fill);
            if !exact {
                problems.push(format!(
                    "{} x{t}: objects lost, duplicated or not touched once per operation",
                    v.name()
                ));
            }
            (m, exact)
        }
        Group::RecordBuffer => {
            let (m, retries, problem) = measure_records(v, t, budget);
            full.insert((v, t), retries);
            if let Some(p) = &problem {
                problems.push(format!("{} x{t}: {p}", v.name()));
            }
            (m, problem.is_none())
        }
    });
    let baselines: Vec<Variant> = variants.iter().copied().filter(|v| !v.ours()).collect();
    let vs: Vec<(Variant, Vec<Option<f64>>)> = baselines
        .iter()
        .map(|&b| (b, measure::ratios_of(&measured, |_| b, throughput)))
        .collect();
    let rows: Vec<Row> = measured
        .iter()
        .enumerate()
        .map(|(i, &(v, t, m, exact))| {
            let vs: BTreeMap<&'static str, f64> = vs
                .iter()
                .filter(|(b, _)| b.group() == v.group())
                .filter_map(|(b, r)| Some((b.name(), r[i]?)))
                .collect();
            // The fastest baseline is the one this variant's speedup is lowest against.
            let best = baselines
                .iter()
                .filter(|b| b.group() == v.group() && b.shares())
                .filter_map(|b| Some((*b, *vs.get(b.name())?)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            Row {
                variant: v,
                group: v.group(),
                threads: t,
                ns_per_op: m.ns_per_op,
                mops: m.mops,
                exact,
                full: full.get(&(v, t)).copied(),
                vs,
                best_baseline: best.map(|b| b.0),
                vs_best: best.map(|b| b.1),
            }
        })
        .collect();
    let groups: Vec<Group> = [Group::ObjectReuse, Group::RecordBuffer]
        .into_iter()
        .filter(|g| variants.iter().any(|v| v.group() == *g))
        .collect();
    if args.json {
        measure::print_json(&rows)?;
    } else {
        print_text(&rows, &groups, &baselines);
    }
    if let Some(path) = &plot {
        plot::throughput_svg(
            path,
            &chart_title(),
            &chart_note(&plan),
            &panels(&rows, &groups, &variants),
        )?;
        if !args.json {
            println!("chart written to {}", path.display());
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("not exact: {}", problems.join("; ")))
    }
}

fn rseq_state() -> String {
    let reg = restartable::registration();
    if reg.rseq_available() {
        format!("rseq in use (registered by {})", reg.owner.as_str())
    } else {
        "rseq NOT in use: fallback path".to_owned()
    }
}

fn print_text(rows: &[Row], groups: &[Group], baselines: &[Variant]) {
    println!(
        "restartable bench structures: {} online CPUs, {}",
        restartable::online_cpus(),
        rseq_state()
    );
    for &group in groups {
        let columns: Vec<String> = baselines
            .iter()
            .filter(|b| b.group() == group)
            .map(|b| format!("vs {}", b.name()))
            .collect();
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        let table: Vec<RatiosRow> = rows
            .iter()
            .filter(|r| r.group == group)
            .map(|r| {
                let xs = names.iter().map(|c| r.vs.get(&c[3..]).copied()).collect();
                (
                    r.variant.name(),
                    r.threads,
                    r.ns_per_op,
                    r.mops,
                    xs,
                    r.exact,
                )
            })
            .collect();
        println!();
        println!("{}", group.title());
        print_ratios_table(&names, &table);
        if group == Group::RecordBuffer {
            let full: Vec<String> = rows
                .iter()
                .filter(|r| r.full.is_some_and(|f| f > 0))
                .map(|r| {
                    format!(
                        "{} x{}: {}",
                        r.variant.name(),
                        r.threads,
                        r.full.unwrap_or(0)
                    )
                })
                .collect();
            println!(
                "full (pushes that found the structure full, yielded and retried): {}",
                if full.is_empty() {
                    "none".to_owned()
                } else {
                    full.join(", ")
                }
            );
            println!("When the consumer cannot keep up, the structure stays full and the consumer's pace sets the throughput; producers then get very unequal shares (some finish a handful of operations), which inflates ns/op/thread: compare Mops/s.");
        }
    }
    println!();
    println!("vs NAME: this variant's Mops/s over NAME's at the same thread count (above 1: this variant is faster); from throughput rather than ns/op/thread, which threads' unequal shares of the CPUs skew.");
}

fn chart_title() -> String {
    "restartable: per-CPU structures against baselines, throughput by thread count".to_owned()
}

/// The machine and what was measured, for the chart's footer.
fn chart_note(plan: &Plan) -> Vec<String> {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let budget = match plan.budget {
        Budget::Time(d) => format!("{} s per point", d.as_secs_f64()),
        Budget::Ops(n) => format!("{n} operations per thread per point"),
    };
    vec![
        format!(
            "Machine: {} online CPUs ({model}); {}; {budget}.",
            restartable::online_cpus(),
            rseq_state()
        ),
        "Higher is better. Thick solid lines: this library's structures; dashed lines: baselines measured in the same run. Each point: total operations per second of all threads.".to_owned(),
    ]
}

fn panels(rows: &[Row], groups: &[Group], variants: &[Variant]) -> Vec<plot::Panel> {
    groups
        .iter()
        .map(|&group| plot::Panel {
            title: group.title().to_owned(),
            lines: variants
                .iter()
                .filter(|v| v.group() == group)
                .map(|&v| plot::Line {
                    name: v.name(),
                    about: v.about(),
                    points: {
                        let mut p: Vec<(u32, f64)> = rows
                            .iter()
                            .filter(|r| r.variant == v)
                            .map(|r| (r.threads, r.mops))
                            .collect();
                        p.sort_by_key(|&(t, _)| t);
                        p
                    },
                    ours: v.ours(),
                })
                .collect(),
        })
        .collect()
}
