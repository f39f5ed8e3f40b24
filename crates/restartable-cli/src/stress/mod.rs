//! `restartable stress`: many more threads than CPUs hammer one per-CPU
//! structure while they yield, sleep and get signalled every few operations
//! (and, optionally, delay loops run inside every critical section); the
//! check at the end is exact. In the style of the kernel's rseq selftests
//! (`tools/testing/selftests/rseq/param_test.c`).
//!
//! Without a mode, [`matrix`] runs every mode briefly, each in a process of
//! its own, and prints one line per mode.

mod language;
pub mod managed;
mod matrix;
pub mod sections;
mod watchdog;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use clap::ValueEnum;
use restartable::section::{Index, Order, Thread};
use restartable::{Counter, PerCpuU64};
use serde::{Deserialize, Serialize};

use crate::signals;
use managed::Managed;
use sections::Structure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The library's `Counter` (works on the fallback path too).
    Counter,
    /// Thousands of short-lived threads, each registering and counting once.
    Churn,
    /// A per-CPU counter incremented by the `add` section.
    Increment,
    /// A per-CPU spinlock (compare-store, release) guarding a plain counter.
    Spinlock,
    /// Per-CPU intrusive lists: pop, then push back.
    List,
    /// Per-CPU pointer buffers: compare2-store pop, store-then-store push.
    Buffer,
    /// Per-CPU record buffers copied in and out with memcpy-then-store.
    Memcpy,
    /// `**(*p + off) += 1` through a table of per-CPU pointers.
    DerefAdd,
    /// The library's `PerCpuU64` (fetch-update and compare-store through a
    /// guarded section; works on the fallback path too, mixed with rseq).
    FetchUpdate,
    /// The library's `PerCpu` (two counters under the per-CPU lock) while a
    /// manager thread swaps every slot out through the fence.
    Percpu,
    /// The library's `Stack` free list (pop with stealing, push, pop-all)
    /// while a manager takes every CPU's list through the fence.
    Stack,
    /// The library's `Pool` (small caches that spill and refill) while a
    /// manager flushes every cache through the fence.
    Pool,
    /// The library's `Buffer`: producers append records while a manager
    /// drains every CPU's buffer through the fence.
    Drain,
    /// The section language's per-CPU ring (`ring_take`, then
    /// `ring_append`).
    Ring,
    /// The section language's per-CPU bounded stack of 32-bit values
    /// (`stack_pop`, then `stack_push`).
    BoundedStack,
    /// The section language's per-CPU histogram (`histogram_add`).
    Histogram,
}

impl Mode {
    /// The modes on library structures, which have a fallback path (and so
    /// take `--skip-registration`).
    fn on_library(self) -> bool {
        matches!(
            self,
            Mode::Counter
                | Mode::FetchUpdate
                | Mode::Percpu
                | Mode::Stack
                | Mode::Pool
                | Mode::Drain
        )
    }

    /// The modes that drive raw critical sections (and so honour `--index`
    /// and `--order`, and have no fallback).
    fn raw_sections(self) -> bool {
        !self.on_library() && self != Mode::Churn
    }

    /// The modes on sections written in the section language: raw
    /// sections (they need rseq), indexed by CPU with a fixed commit
    /// order.
    fn generated(self) -> bool {
        matches!(self, Mode::Ring | Mode::BoundedStack | Mode::Histogram)
    }

    /// Whether `--index` applies: the raw-section modes and percpu.
    fn takes_index(self) -> bool {
        (self.raw_sections() && !self.generated()) || self == Mode::Percpu
    }

    /// Whether `--order` applies: the hand-driven raw-section modes.
    fn takes_order(self) -> bool {
        self.raw_sections() && !self.generated()
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Counter => "counter",
            Mode::Churn => "churn",
            Mode::Increment => "increment",
            Mode::Spinlock => "spinlock",
            Mode::List => "list",
            Mode::Buffer => "buffer",
            Mode::Memcpy => "memcpy",
            Mode::DerefAdd => "deref-add",
            Mode::FetchUpdate => "fetch-update",
            Mode::Percpu => "percpu",
            Mode::Stack => "stack",
            Mode::Pool => "pool",
            Mode::Drain => "drain",
            Mode::Ring => "ring",
            Mode::BoundedStack => "bounded-stack",
            Mode::Histogram => "histogram",
        }
    }

    pub const ALL: [Mode; 16] = [
        Mode::Counter,
        Mode::Churn,
        Mode::Increment,
        Mode::Spinlock,
        Mode::List,
        Mode::Buffer,
        Mode::Memcpy,
        Mode::DerefAdd,
        Mode::FetchUpdate,
        Mode::Percpu,
        Mode::Stack,
        Mode::Pool,
        Mode::Drain,
        Mode::Ring,
        Mode::BoundedStack,
        Mode::Histogram,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexArg {
    /// Index per-CPU data by CPU number.
    Cpu,
    /// Index per-CPU data by concurrency id (Linux 6.3+).
    MmCid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderArg {
    Relaxed,
    Release,
}

impl Options {
    /// `--index`, or its default.
    fn index(&self) -> IndexArg {
        self.index.unwrap_or(IndexArg::Cpu)
    }

    /// `--order`, or its default.
    fn order(&self) -> OrderArg {
        self.order.unwrap_or(OrderArg::Relaxed)
    }

    /// Worker threads of `mode`: `--threads`, or 6 per usable CPU (churn:
    /// 4000 in all).
    fn workers(&self, mode: Mode) -> u64 {
        let default = match mode {
            Mode::Churn => 4000,
            _ => 6 * crate::cpus::usable() as u64,
        };
        self.threads.map_or(default, u64::from)
    }

    /// `--skip-registration` names at most every worker.
    fn check_skip_registration(&self, workers: u64) -> Result<(), String> {
        if u64::from(self.skip_registration) > workers {
            return Err(format!(
                "--skip-registration {} exceeds the {workers} worker threads (--threads)",
                self.skip_registration
            ));
        }
        Ok(())
    }
}

impl IndexArg {
    /// The option's value, as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            IndexArg::Cpu => "cpu",
            IndexArg::MmCid => "mm-cid",
        }
    }
}

impl From<restartable::section::Index> for IndexArg {
    fn from(index: restartable::section::Index) -> Self {
        match index {
            restartable::section::Index::Cpu => IndexArg::Cpu,
            restartable::section::Index::MmCid => IndexArg::MmCid,
        }
    }
}

impl OrderArg {
    /// The option's value, as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OrderArg::Relaxed => "relaxed",
            OrderArg::Release => "release",
        }
    }
}

/// Operations per worker when `--ops` is not given.
const DEFAULT_OPS: u64 = 200_000;

/// The options of `restartable stress`, declared once: clap parses them
/// and the run reads them.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// What to stress [default: every mode briefly, one line each].
    pub mode: Option<Mode>,
    /// Worker threads, 1 to 10000 [default: 6 x the CPUs this process may
    /// run on (its affinity); churn: 4000
    /// threads in all, 64 alive at a time].
    #[arg(long, value_parser = |s: &str| crate::parse::count(s, 1, 10_000).map(|n| n as u32))]
    pub threads: Option<u32>,
    /// Operations per worker thread, 1 to 10^9 [default: 200000; without a
    /// mode: 2000]. Not for churn, where each thread counts once.
    #[arg(long, value_parser = |s: &str| crate::parse::count(s, 1, 1_000_000_000))]
    pub ops: Option<u64>,
    /// Yield the CPU every N operations (0: never).
    #[arg(long, default_value_t = 97, value_parser = every)]
    pub yield_every: u64,
    /// Raise a signal in the worker every N operations (0: never).
    #[arg(long, default_value_t = 0, value_parser = every)]
    pub signal_every: u64,
    /// Sleep a millisecond every N operations (0: never).
    #[arg(long, default_value_t = 0, value_parser = every)]
    pub sleep_every: u64,
    /// Per-thread timer signal interval in microseconds, at least 10 (0: no
    /// signal storm). The handler adds to the library's `Counter`, checked too.
    #[arg(long, default_value_t = 50, value_parser = parse_signal_us)]
    pub signal_us: u64,
    /// Delay loop inside every critical section: POINT=LOOPS, comma-separated
    /// (points 0-4, 4 being every other boundary of a generated section;
    /// needs a build with the `inject` feature).
    #[arg(long, value_delimiter = ',', value_parser = parse_inject)]
    pub inject: Vec<(usize, u64)>,
    /// Which id indexes the per-CPU data (raw-section modes and percpu;
    /// default cpu).
    #[arg(long, value_enum)]
    pub index: Option<IndexArg>,
    /// Memory order of the commits (raw-section modes; default relaxed).
    #[arg(long, value_enum)]
    pub order: Option<OrderArg>,
    /// This many worker threads opt out of rseq and take the fallback path
    /// while the others run sections (the modes on library structures:
    /// counter, fetch-update, percpu, stack, pool, drain).
    #[arg(long, default_value_t = 0, value_parser = |s: &str| crate::parse::count(s, 0, 10_000).map(|n| n as u32))]
    pub skip_registration: u32,
    /// Give up (exit status 3) if the run has not finished after this many
    /// seconds (0: wait forever).
    #[arg(long, default_value_t = 300, value_parser = |s: &str| crate::parse::count(s, 0, 1_000_000))]
    pub timeout: u64,
    /// Pin worker i to the i-th CPU (mod their number) of this process's
    /// affinity, so a fence must reach CPUs outside the fencing thread's
    /// own; needs at least two CPUs there. A worker whose CPU has gone
    /// offline since (hot-plug) takes the next one; the kernel moves a
    /// pinned worker off a CPU that goes offline under it.
    #[arg(long)]
    pub pin_workers: bool,
    /// Print JSON instead of text (one object; an array without a mode).
    #[arg(long)]
    pub json: bool,
}

/// An interval in operations (0: never).
fn every(s: &str) -> Result<u64, String> {
    crate::parse::count(s, 0, u64::MAX)
}

fn parse_signal_us(s: &str) -> Result<u64, String> {
    let us = crate::parse::count(s, 0, 60_000_000)?;
    if us != 0 && us < 10 {
        return Err("signals more often than every 10 microseconds leave no time for work; use 10 or more (0 turns them off)".to_owned());
    }
    Ok(us)
}

fn parse_inject(s: &str) -> Result<(usize, u64), String> {
    let (point, loops) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not POINT=LOOPS"))?;
    let point: usize = point
        .trim()
        .parse()
        .map_err(|_| format!("`{point}` is not an injection point"))?;
    let loops: u64 = loops
        .trim()
        .parse()
        .map_err(|_| format!("`{loops}` is not a loop count"))?;
    if loops > 1_000_000 {
        return Err(format!(
            "{loops} loops is too long a delay (at most 1000000)"
        ));
    }
    Ok((point, loops))
}

/// The exact check at the end of a run: what was found against what was
/// expected, and anything else that must hold (no torn update, nothing
/// handed out twice).
pub struct Verdict {
    pub found: u64,
    pub expected: u64,
    pub exact: bool,
    pub detail: String,
}

impl Verdict {
    /// Exact when `found == expected` and `also` holds.
    pub fn new(found: u64, expected: u64, also: bool, detail: String) -> Verdict {
        Verdict {
            found,
            expected,
            exact: found == expected && also,
            detail,
        }
    }
}

/// One run's report (`--json` prints it as is).
#[derive(Serialize, Deserialize, Default)]
pub struct Report {
    mode: Option<Mode>,
    index: Option<IndexArg>,
    order: Option<OrderArg>,
    threads: u64,
    ops: u64,
    /// What the mode's exact check counted: the structure's total, items or
    /// records found (for counter and churn: the counter, signal handler's
    /// adds included).
    sum: u64,
    /// What that count must be.
    expected: u64,
    /// The structure's check and the signal handler's both held.
    exact: bool,
    check: String,
    signals_handled: u64,
    /// The counter the signal handler adds to, and what it must hold.
    signal_sum: u64,
    signal_expected: u64,
    /// Worker threads whose operations ran as rseq critical sections.
    rseq_threads: u64,
    /// Worker threads on the fallback path.
    fallback_threads: u64,
    /// "rseq", "fallback" or "mixed", from the workers' registrations.
    path: String,
    owners: Vec<String>,
    fallback_reason: Option<String>,
    inject: Vec<(usize, u64)>,
    compare_twice: bool,
    /// How the fallback paths fence other CPUs: "membarrier" or "migration".
    fence: String,
    /// Aborted critical sections (null when built without `abort-stats`).
    aborts: Option<u64>,
    /// Operations completed on the fallback path (null without `abort-stats`).
    fallback_ops: Option<u64>,
    /// Of those, operations that fell back after too many consecutive aborts.
    retries_exhausted: Option<u64>,
    /// The fallback operations by cause (`restartable::stats::Cause`).
    fallback_causes: Option<BTreeMap<String, u64>>,
    /// Rounds of 16 aborted attempts the test structures went through
    /// before trying again (they have no fallback path).
    rounds_exhausted: u64,
    /// Rounds of remote work (through the fence) the manager thread did
    /// while the workers ran (modes percpu, stack, pool, drain).
    manager_rounds: Option<u64>,
    /// Seconds the run took.
    seconds: f64,
}

/// The counter the signal handler adds to (and the `counter` mode uses).
static COUNTER: Counter = Counter::new();
/// The words of the `fetch-update` mode.
static WORDS: PerCpuU64 = PerCpuU64::new();
static RSEQ_THREADS: AtomicU64 = AtomicU64::new(0);
static FALLBACK_THREADS: AtomicU64 = AtomicU64::new(0);

fn on_signal() {
    COUNTER.inc();
    WORDS.add(1);
}

struct Paths {
    owners: Mutex<Vec<&'static str>>,
    reason: Mutex<Option<String>>,
}

impl Paths {
    /// Records which path the calling worker took.
    fn note(&self) {
        let reg = restartable::registration();
        if reg.rseq_available() {
            RSEQ_THREADS.fetch_add(1, Ordering::Relaxed);
        } else {
            FALLBACK_THREADS.fetch_add(1, Ordering::Relaxed);
            if let (Ok(mut r), Some(why)) = (self.reason.lock(), reg.fallback) {
                r.get_or_insert_with(|| why.to_string());
            }
        }
        if let Ok(mut o) = self.owners.lock() {
            if !o.contains(&reg.owner.as_str()) {
                o.push(reg.owner.as_str());
            }
        }
    }
}

/// What a worker does every few operations.
struct Disturb {
    yield_every: u64,
    signal_every: u64,
    sleep_every: u64,
}

impl Disturb {
    fn after(&self, i: u64) {
        if self.yield_every > 0 && i.is_multiple_of(self.yield_every) {
            std::thread::yield_now();
        }
        if self.signal_every > 0 && i.is_multiple_of(self.signal_every) {
            signals::raise_here();
        }
        if self.sleep_every > 0 && i.is_multiple_of(self.sleep_every) {
            signals::sleep_ms(1);
        }
    }
}

/// The CPUs workers are pinned to with `--pin-workers`: this process's
/// affinity, which must hold at least two.
fn pin_set(opts: &Options) -> Result<Vec<usize>, String> {
    if !opts.pin_workers {
        return Ok(Vec::new());
    }
    let cpus = signals::affinity()?;
    if cpus.len() < 2 {
        return Err(format!(
            "--pin-workers needs at least two CPUs to pin workers to, but this process may run only on CPU {}: pinning would test nothing",
            cpus.first().map_or("?".to_owned(), usize::to_string)
        ));
    }
    Ok(cpus)
}

/// Runs `threads` workers, each calling `op` `ops` times with disturbances.
fn run_workers(
    threads: u64,
    ops: u64,
    opts: &Options,
    paths: &Paths,
    op: &(dyn Fn() + Sync),
) -> Result<(), String> {
    let disturb = Disturb {
        yield_every: opts.yield_every,
        signal_every: opts.signal_every,
        sleep_every: opts.sleep_every,
    };
    let pins = pin_set(opts)?;
    let failures = std::thread::scope(|s| {
        let mut spawn_error = None;
        let handles: Vec<_> = (0..threads)
            .map_while(|n| {
                let skip = n < u64::from(opts.skip_registration);
                let (disturb, pins) = (&disturb, &pins);
                let spawned =
                    std::thread::Builder::new().spawn_scoped(s, move || -> Result<(), String> {
                        if skip {
                            restartable::opt_out_current_thread();
                        }
                        // A CPU taken offline since the set was read
                        // (hot-plug) refuses the pin: take the next one.
                        let _ = (0..pins.len())
                            .map(|k| pins[(n as usize + k) % pins.len()])
                            .any(|cpu| signals::pin_to(cpu).is_ok());
                        let _timer = match opts.signal_us {
                            0 => None,
                            us => Some(signals::ThreadTimer::start(us)?),
                        };
                        let mut progress = watchdog::Progress::default();
                        for i in 1..=ops {
                            op();
                            disturb.after(i);
                            progress.one();
                        }
                        paths.note();
                        Ok(())
                    });
                spawned
                    .map_err(|e| spawn_error = Some(format!("cannot start worker thread: {e}")))
                    .ok()
            })
            .collect();
        let mut failures: Vec<String> = handles
            .into_iter()
            .filter_map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("worker panicked".to_owned()))
                    .err()
            })
            .collect();
        failures.extend(spawn_error);
        failures
    });
    match failures.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// The library structure a managed mode stresses.
fn managed(mode: Mode, threads: u64, ops: u64, by_mm_cid: bool) -> Option<Box<dyn Managed>> {
    let items = (16 * restartable::possible_cpus() as u64).max(threads * 2);
    Some(match mode {
        Mode::Percpu => Box::new(managed::Storage::new(by_mm_cid)),
        Mode::Stack => Box::new(managed::FreeList::new(items)),
        Mode::Pool => Box::new(managed::Objects::new()),
        Mode::Drain => Box::new(managed::Records::new(threads, ops)),
        _ => return None,
    })
}

/// Runs the workers while a manager thread does remote work in a loop;
/// returns the manager's rounds. The workers start once the manager's
/// first round has begun, so its remote work always overlaps theirs.
fn run_managed(
    threads: u64,
    ops: u64,
    opts: &Options,
    paths: &Paths,
    structure: &dyn Managed,
) -> Result<u64, String> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let manager = std::thread::Builder::new()
            .spawn_scoped(s, || -> Result<u64, String> {
                let mut rounds = 0;
                started.wait();
                loop {
                    if let Err(e) = structure.manage() {
                        // Workers may be waiting for the manager (a full
                        // buffer) or for the same missing fence: end the
                        // run now.
                        eprintln!("restartable: {e}");
                        std::process::exit(1);
                    }
                    rounds += 1;
                    if done.load(Ordering::Relaxed) {
                        return Ok(rounds);
                    }
                    std::thread::yield_now();
                }
            })
            .map_err(|e| format!("cannot start the manager thread: {e}"))?;
        started.wait();
        let workers = run_workers(threads, ops, opts, paths, &|| structure.op());
        done.store(true, Ordering::Relaxed);
        let rounds = manager
            .join()
            .unwrap_or_else(|_| Err("manager panicked".to_owned()));
        workers?;
        rounds
    })
}

fn structure(mode: Mode, threads: u64) -> Option<Box<dyn Structure>> {
    let items = (16 * restartable::possible_cpus()).max(threads as usize * 2);
    Some(match mode {
        Mode::Increment => Box::new(sections::Increment::new()),
        Mode::Spinlock => Box::new(sections::Spinlock::new()),
        Mode::List => Box::new(sections::List::new(items)),
        Mode::Buffer => Box::new(sections::Buffer::new(items)),
        Mode::Memcpy => Box::new(sections::MemcpyBuffer::new(items)),
        Mode::DerefAdd => Box::new(sections::DerefAdd::new()),
        Mode::Ring => Box::new(language::Ring::new(items)),
        Mode::BoundedStack => Box::new(language::BoundedStack::new(items)),
        Mode::Histogram => Box::new(language::Histogram::new()),
        _ => return None,
    })
}

/// Checks the options against the mode before anything runs.
fn check_options(mode: Mode, opts: &Options) -> Result<(), String> {
    if mode == Mode::Churn && opts.ops.is_some() {
        return Err(
            "stress churn: each thread counts once, so --ops does not apply; --threads sets how many threads are started"
                .to_owned(),
        );
    }
    if opts.index.is_some() && !mode.takes_index() {
        return Err(format!(
            "mode {} has no index choice; --index works with percpu and the hand-driven raw-section modes (increment, spinlock, list, buffer, memcpy, deref-add)",
            mode.name()
        ));
    }
    if opts.order.is_some() && !mode.takes_order() {
        return Err(format!(
            "mode {} has no commit order choice; --order works with the hand-driven raw-section modes (increment, spinlock, list, buffer, memcpy, deref-add)",
            mode.name()
        ));
    }
    if opts.skip_registration > 0 && !mode.on_library() {
        return Err(format!(
            "mode {} drives raw critical sections and has no fallback; --skip-registration works with counter, fetch-update, percpu, stack, pool and drain",
            mode.name()
        ));
    }
    for &(point, loops) in &opts.inject {
        if !restartable::inject::ENABLED {
            return Err("--inject needs a build with the `inject` feature: cargo run --release -p restartable-cli --features inject -- stress ...".to_owned());
        }
        if !restartable::inject::set_delay(point, loops) {
            return Err(format!(
                "injection point {point} does not exist (0..{})",
                restartable::inject::POINTS
            ));
        }
    }
    Ok(())
}

pub fn run(opts: Options) -> Result<(), String> {
    match opts.mode {
        None => matrix::run(&opts),
        Some(mode) => run_mode(mode, &opts),
    }
}

fn run_mode(mode: Mode, opts: &Options) -> Result<(), String> {
    check_options(mode, opts)?;
    let began = std::time::Instant::now();
    let threads = opts.workers(mode);
    opts.check_skip_registration(threads)?;
    let ops = opts.ops.unwrap_or(DEFAULT_OPS);
    watchdog::start(opts.timeout, threads * ops);
    // First use outside any signal handler: allocates the slots.
    COUNTER.add(0);
    WORDS.add(0);
    let (index_arg, order_arg) = (opts.index(), opts.order());
    let index = match index_arg {
        IndexArg::Cpu => Index::Cpu,
        IndexArg::MmCid => Index::MmCid,
    };
    let order = match order_arg {
        OrderArg::Relaxed => Order::Relaxed,
        OrderArg::Release => Order::Release,
    };
    if opts.signal_us > 0 || opts.signal_every > 0 {
        signals::install(on_signal)?;
    }
    let paths = Paths {
        owners: Mutex::new(Vec::new()),
        reason: Mutex::new(None),
    };
    let mut manager_rounds = None;
    // The structure's verdict; `None` where the counter is the structure.
    let verdict: Option<Verdict> = match mode {
        Mode::Counter => {
            run_workers(threads, ops, opts, &paths, &|| COUNTER.inc())?;
            None
        }
        Mode::FetchUpdate => {
            let cpus = restartable::possible_cpus();
            run_workers(threads, ops, opts, &paths, &|| {
                // Mix the entry points; each adds one in all. Every 8th
                // operation works on another CPU's word (through its guard
                // and the fence), racing the sections running there.
                let old = WORDS.fetch_update(|v| v + 1);
                if old % 8 == 3 {
                    let remote = (restartable::current_cpu() + 1) % cpus;
                    if WORDS.fetch_update_on(remote, |v| v + 1).is_ok() {
                        WORDS.fetch_update(|v| v.wrapping_sub(1));
                    }
                } else if old % 2 == 1 {
                    loop {
                        let cpu = restartable::current_cpu();
                        let v = WORDS.get(cpu).unwrap_or(0);
                        if WORDS.compare_store(v, v + 1).is_ok() {
                            break;
                        }
                    }
                    WORDS.fetch_update(|v| v - 1);
                }
            })?;
            // The signal handler adds one to WORDS too.
            let expected = threads * ops + signals::DELIVERED.load(Ordering::Relaxed);
            let sum = WORDS.sum();
            Some(Verdict::new(
                sum,
                expected,
                true,
                format!("sum {sum}, expected {expected}"),
            ))
        }
        Mode::Percpu | Mode::Stack | Mode::Pool | Mode::Drain => {
            let by_mm_cid = index_arg == IndexArg::MmCid;
            let mut s =
                managed(mode, threads, ops, by_mm_cid).ok_or("no structure for this mode")?;
            manager_rounds = Some(run_managed(threads, ops, opts, &paths, &*s)?);
            Some(s.verify(threads * ops)?)
        }
        Mode::Churn => {
            // At most 64 alive at once, so thread creation dominates.
            let mut started = 0;
            while started < threads {
                let batch = (threads - started).min(64);
                std::thread::scope(|s| {
                    for _ in 0..batch {
                        std::thread::Builder::new()
                            .spawn_scoped(s, || {
                                COUNTER.inc();
                                paths.note();
                            })
                            .map_err(|e| format!("cannot start thread: {e}"))?;
                    }
                    Ok::<(), String>(())
                })?;
                started += batch;
            }
            None
        }
        _ => {
            let Some(t) = Thread::current() else {
                return Err(format!(
                    "mode {} tests critical sections and needs rseq, which this thread cannot use: {}",
                    mode.name(),
                    restartable::registration().fallback.map_or("no sections on this target".to_owned(), |r| r.to_string())
                ));
            };
            if t.id(index).is_none() {
                return Err(
                    "--index mm-cid needs a kernel that provides mm_cid (Linux 6.3+)".to_owned(),
                );
            }
            let s = structure(mode, threads).ok_or("no structure for this mode")?;
            run_workers(threads, ops, opts, &paths, &|| match Thread::current() {
                Some(t) => s.op(&t, index, order),
                None => panic!("a worker thread lost rseq"),
            })?;
            Some(s.verify(threads * ops))
        }
    };

    let handled = signals::DELIVERED.load(Ordering::Relaxed);
    let counted = COUNTER.sum();
    // The counter holds the handler's adds, and in counter and churn modes
    // the workers' too.
    let work = match mode {
        Mode::Counter => threads * ops,
        Mode::Churn => threads,
        _ => 0,
    };
    let verdict = verdict.unwrap_or_else(|| {
        Verdict::new(
            counted,
            work + handled,
            true,
            format!("counter sum {counted}, expected {}", work + handled),
        )
    });
    let signals_exact = counted == work + handled;
    let rseq_threads = RSEQ_THREADS.load(Ordering::Relaxed);
    let fallback_threads = FALLBACK_THREADS.load(Ordering::Relaxed);
    let stats = restartable::stats::stats();
    let report = Report {
        mode: Some(mode),
        // Only the raw-section modes (and percpu) choose the index; only
        // the raw-section modes the commit order.
        index: mode.takes_index().then_some(index_arg),
        order: mode.takes_order().then_some(order_arg),
        threads,
        ops: if mode == Mode::Churn {
            threads
        } else {
            threads * ops
        },
        sum: verdict.found,
        expected: verdict.expected,
        exact: verdict.exact && signals_exact,
        check: verdict.detail,
        signals_handled: handled,
        signal_sum: counted,
        signal_expected: work + handled,
        rseq_threads,
        fallback_threads,
        path: match (rseq_threads, fallback_threads) {
            (_, 0) => "rseq",
            (0, _) => "fallback",
            _ => "mixed",
        }
        .to_owned(),
        owners: paths
            .owners
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        fallback_reason: paths.reason.into_inner().unwrap_or_default(),
        inject: opts.inject.clone(),
        compare_twice: restartable::inject::COMPARE_TWICE,
        fence: match restartable::fence::method() {
            restartable::fence::Method::Membarrier => "membarrier",
            restartable::fence::Method::Migration => "migration",
        }
        .to_owned(),
        aborts: stats.map(|s| s.aborts),
        fallback_ops: stats.map(|s| s.fallback_ops),
        retries_exhausted: stats.map(|s| s.retries_exhausted),
        fallback_causes: stats.map(|s| {
            restartable::stats::Cause::ALL
                .iter()
                .map(|&c| (c.as_str().to_owned(), s.of(c)))
                .collect()
        }),
        rounds_exhausted: sections::EXHAUSTED.load(Ordering::Relaxed),
        manager_rounds,
        seconds: began.elapsed().as_secs_f64(),
    };
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print_report(&report, opts, ops);
    }
    if report.exact {
        Ok(())
    } else {
        Err(format!(
            "verification failed: {} (signal handler's counter {}, expected {})",
            report.check, report.signal_sum, report.signal_expected
        ))
    }
}

fn print_report(report: &Report, opts: &Options, ops: u64) {
    let Some(mode) = report.mode else { return };
    let work = match mode {
        Mode::Churn => format!("{} short-lived threads counting once", report.threads),
        _ => format!(
            "{} thread{} x {ops} ops",
            report.threads,
            if report.threads == 1 { "" } else { "s" }
        ),
    };
    let flavour = if mode.takes_order() {
        format!(
            " (index {}, order {})",
            opts.index().name(),
            opts.order().name()
        )
    } else {
        String::new()
    };
    println!(
        "stress {}{flavour}: {work}, path {} (owners: {}), {} signals handled: {}",
        mode.name(),
        report.path,
        report.owners.join(", "),
        report.signals_handled,
        if report.exact { "exact" } else { "MISMATCH" }
    );
    println!("check: {}", report.check);
    if !matches!(mode, Mode::Counter | Mode::Churn) {
        println!(
            "signal handler's counter: {}, expected {}",
            report.signal_sum, report.signal_expected
        );
    }
    if let Some(rounds) = report.manager_rounds {
        println!(
            "manager: {rounds} rounds of remote work through the fence ({})",
            report.fence
        );
    }
    if let Some(why) = &report.fallback_reason {
        println!("fallback reason: {why}");
    }
    match (report.aborts, &report.fallback_causes) {
        (Some(aborts), Some(causes)) => {
            let causes: Vec<String> = causes
                .iter()
                .filter(|(_, &n)| n > 0)
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            println!(
                "aborts {aborts}, library operations on the fallback path {} ({}; every push, pop, lock and add counts, the manager's and handler's too), test structures' exhausted rounds {}",
                report.fallback_ops.unwrap_or(0),
                if causes.is_empty() {
                    "none".to_owned()
                } else {
                    causes.join(", ")
                },
                report.rounds_exhausted
            );
        }
        _ => println!("aborts: not counted (build with --features abort-stats)"),
    }
    println!("took {:.2} s", report.seconds);
}
