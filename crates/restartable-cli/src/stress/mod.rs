//! `restartable stress`: many more threads than CPUs hammer one per-CPU
//! structure while they yield, sleep and get signalled every few operations
//! (and, optionally, delay loops run inside every critical section); the
//! check at the end is exact. In the style of the kernel's rseq selftests
//! (RSEQ_NOTES §6).

pub mod managed;
pub mod percpu;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use clap::ValueEnum;
use restartable::section::{Index, Order, Thread};
use restartable::{Counter, PerCpuU64};
use serde::Serialize;

use crate::signals;
use managed::Managed;
use percpu::Structure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexArg {
    /// Index per-CPU data by CPU number.
    Cpu,
    /// Index per-CPU data by concurrency id (Linux 6.3+).
    MmCid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrderArg {
    Relaxed,
    Release,
}

pub struct Options {
    pub mode: Mode,
    pub threads: Option<u32>,
    pub ops: u64,
    pub yield_every: u64,
    pub signal_every: u64,
    pub sleep_every: u64,
    pub signal_us: u64,
    pub inject: Vec<(usize, u64)>,
    pub index: IndexArg,
    pub order: OrderArg,
    pub skip_registration: u32,
    pub timeout: u64,
    pub pin_workers: bool,
    pub json: bool,
}

#[derive(Serialize, Default)]
struct Report {
    mode: Option<Mode>,
    index: Option<IndexArg>,
    order: Option<OrderArg>,
    threads: u64,
    ops: u64,
    expected: u64,
    sum: u64,
    exact: bool,
    check: String,
    signals_handled: u64,
    /// Worker threads whose operations ran as rseq critical sections.
    rseq_threads: u64,
    /// Worker threads on the fallback path.
    fallback_threads: u64,
    /// "rseq", "fallback" or "mixed", from the workers' registrations.
    path: &'static str,
    owners: Vec<&'static str>,
    fallback_reason: Option<String>,
    inject: Vec<(usize, u64)>,
    compare_twice: bool,
    /// How the fallback paths fence other CPUs: "membarrier" or "migration".
    fence: &'static str,
    /// Aborted critical sections (null when built without `abort-stats`).
    aborts: Option<u64>,
    /// Operations completed on the fallback path (null without `abort-stats`).
    fallback_ops: Option<u64>,
    /// Operations that fell back after too many consecutive aborts.
    retries_exhausted: Option<u64>,
    /// Rounds of 16 aborted attempts the test structures went through
    /// before trying again (they have no fallback path).
    rounds_exhausted: u64,
    /// Rounds of remote work (through the fence) the manager thread did
    /// while the workers ran (modes percpu, stack, pool, drain).
    manager_rounds: Option<u64>,
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

/// Runs `threads` workers, each calling `op` `ops` times with disturbances.
fn run_workers(
    threads: u64,
    opts: &Options,
    paths: &Paths,
    op: &(dyn Fn() + Sync),
) -> Result<(), String> {
    let disturb = Disturb {
        yield_every: opts.yield_every,
        signal_every: opts.signal_every,
        sleep_every: opts.sleep_every,
    };
    let failures = std::thread::scope(|s| {
        let mut spawn_error = None;
        let handles: Vec<_> = (0..threads)
            .map_while(|n| {
                let skip = n < u64::from(opts.skip_registration);
                let disturb = &disturb;
                let spawned =
                    std::thread::Builder::new().spawn_scoped(s, move || -> Result<(), String> {
                        if skip {
                            restartable::opt_out_current_thread();
                        }
                        if opts.pin_workers {
                            signals::pin_to((n as usize) % restartable::online_cpus())?;
                        }
                        let _timer = match opts.signal_us {
                            0 => None,
                            us => Some(signals::ThreadTimer::start(us)?),
                        };
                        for i in 1..=opts.ops {
                            op();
                            disturb.after(i);
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

/// Whether `mode` drives raw critical sections (and so honours `--index`,
/// `--order` and has no fallback).
fn raw_sections(mode: Mode) -> bool {
    !matches!(mode, Mode::Counter | Mode::Churn | Mode::FetchUpdate)
        && managed(mode, 1, 1, false).is_none()
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
/// returns the manager's rounds.
fn run_managed(
    threads: u64,
    opts: &Options,
    paths: &Paths,
    structure: &dyn Managed,
) -> Result<u64, String> {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let manager = std::thread::Builder::new()
            .spawn_scoped(s, || -> Result<u64, String> {
                let mut rounds = 0;
                while !done.load(Ordering::Relaxed) {
                    if let Err(e) = structure.manage() {
                        // Workers may be waiting for the manager (a full
                        // buffer) or for the same missing fence: end the
                        // run now.
                        eprintln!("restartable: {e}");
                        std::process::exit(1);
                    }
                    rounds += 1;
                    std::thread::yield_now();
                }
                Ok(rounds)
            })
            .map_err(|e| format!("cannot start the manager thread: {e}"))?;
        let workers = run_workers(threads, opts, paths, &|| structure.op());
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
        Mode::Counter | Mode::Churn | Mode::FetchUpdate => return None,
        Mode::Percpu | Mode::Stack | Mode::Pool | Mode::Drain => return None,
        Mode::Increment => Box::new(percpu::Increment::new()),
        Mode::Spinlock => Box::new(percpu::Spinlock::new()),
        Mode::List => Box::new(percpu::List::new(items)),
        Mode::Buffer => Box::new(percpu::Buffer::new(items)),
        Mode::Memcpy => Box::new(percpu::MemcpyBuffer::new(items)),
        Mode::DerefAdd => Box::new(percpu::DerefAdd::new()),
    })
}

/// Ends the process with a message if the run has not finished after
/// `secs` seconds: with injected delays longer than the signal interval a
/// section (or the signal handler's own) can abort forever.
fn watchdog(secs: u64) {
    if secs == 0 {
        return;
    }
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(secs));
        eprintln!(
            "restartable: stress run not finished after {secs} s: critical sections keep aborting \
(are signals more frequent than a section with its injected delays takes?); giving up"
        );
        std::process::exit(3);
    });
}

pub fn run(opts: Options) -> Result<(), String> {
    watchdog(opts.timeout);
    // First use outside any signal handler: allocates the slots.
    COUNTER.add(0);
    WORDS.add(0);
    for &(point, loops) in &opts.inject {
        if !restartable::inject::set_delay(point, loops) {
            return Err(if restartable::inject::ENABLED {
                format!(
                    "injection point {point} does not exist (0..{})",
                    restartable::inject::POINTS
                )
            } else {
                "--inject needs a build with the `inject` feature (cargo build --features inject)"
                    .to_owned()
            });
        }
    }
    let index = match opts.index {
        IndexArg::Cpu => Index::Cpu,
        IndexArg::MmCid => Index::MmCid,
    };
    let order = match opts.order {
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
    let default_threads = 6 * restartable::online_cpus() as u64;
    let mut manager_rounds = None;
    let (threads, ops_done, check) = match opts.mode {
        Mode::Counter => {
            let threads = opts.threads.map_or(default_threads, u64::from);
            run_workers(threads, &opts, &paths, &|| COUNTER.inc())?;
            (threads, threads * opts.ops, None)
        }
        Mode::FetchUpdate => {
            let threads = opts.threads.map_or(default_threads, u64::from);
            let cpus = restartable::possible_cpus();
            run_workers(threads, &opts, &paths, &|| {
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
                        match WORDS.compare_store(v, v + 1) {
                            Ok(()) => break,
                            Err(_) => continue,
                        }
                    }
                    WORDS.fetch_update(|v| v - 1);
                }
            })?;
            // The signal handler adds one to WORDS too.
            let ops = threads * opts.ops + signals::DELIVERED.load(Ordering::Relaxed);
            let sum = WORDS.sum();
            let check = if sum == ops {
                Ok(format!("sum {sum}, expected {ops}"))
            } else {
                Err(format!("sum {sum}, expected {ops}"))
            };
            (threads, ops, Some(check))
        }
        Mode::Percpu | Mode::Stack | Mode::Pool | Mode::Drain => {
            let threads = opts.threads.map_or(default_threads, u64::from);
            let by_mm_cid = opts.index == IndexArg::MmCid;
            let mut s = managed(opts.mode, threads, opts.ops, by_mm_cid)
                .ok_or("no structure for this mode")?;
            manager_rounds = Some(run_managed(threads, &opts, &paths, &*s)?);
            let ops = threads * opts.ops;
            (threads, ops, Some(s.verify(ops)))
        }
        Mode::Churn => {
            let threads = opts.threads.map_or(4000, u64::from);
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
            (threads, threads, None)
        }
        mode => {
            if opts.skip_registration > 0 {
                return Err(format!(
                    "mode {mode:?} drives raw critical sections and has no fallback; --skip-registration works with counter, fetch-update, percpu, stack, pool and drain"
                ));
            }
            let threads = opts.threads.map_or(default_threads, u64::from);
            let Some(t) = Thread::current() else {
                return Err(format!(
                    "mode {mode:?} tests critical sections and needs rseq, which this thread cannot use: {}",
                    restartable::registration().fallback.map_or("no sections on this target".to_owned(), |r| r.to_string())
                ));
            };
            if t.id(index).is_none() {
                return Err(
                    "--index mm-cid needs a kernel that provides mm_cid (Linux 6.3+)".to_owned(),
                );
            }
            let s = structure(mode, threads).ok_or("no structure for this mode")?;
            run_workers(threads, &opts, &paths, &|| match Thread::current() {
                Some(t) => s.op(&t, index, order),
                None => panic!("a worker thread lost rseq"),
            })?;
            (
                threads,
                threads * opts.ops,
                Some(s.verify(threads * opts.ops)),
            )
        }
    };

    let handled = signals::DELIVERED.load(Ordering::Relaxed);
    let (expected, sum) = match opts.mode {
        Mode::Counter | Mode::Churn => (ops_done + handled, COUNTER.sum()),
        _ => (handled, COUNTER.sum()),
    };
    let (structure_ok, check) = match check {
        None => (true, format!("counter sum {sum}, expected {expected}")),
        Some(Ok(what)) => (true, what),
        Some(Err(what)) => (false, what),
    };
    let rseq_threads = RSEQ_THREADS.load(Ordering::Relaxed);
    let fallback_threads = FALLBACK_THREADS.load(Ordering::Relaxed);
    let stats = restartable::stats::stats();
    let exhausted = percpu::EXHAUSTED.load(Ordering::Relaxed);
    let report = Report {
        mode: Some(opts.mode),
        // Only the raw-section modes choose the index and the commit order.
        index: (raw_sections(opts.mode) || opts.mode == Mode::Percpu).then_some(opts.index),
        order: raw_sections(opts.mode).then_some(opts.order),
        threads,
        ops: ops_done,
        expected,
        sum,
        exact: sum == expected && structure_ok,
        check,
        signals_handled: handled,
        rseq_threads,
        fallback_threads,
        path: match (rseq_threads, fallback_threads) {
            (_, 0) => "rseq",
            (0, _) => "fallback",
            _ => "mixed",
        },
        owners: paths.owners.into_inner().unwrap_or_default(),
        fallback_reason: paths.reason.into_inner().unwrap_or_default(),
        inject: opts.inject.clone(),
        compare_twice: restartable::inject::COMPARE_TWICE,
        fence: match restartable::fence::method() {
            restartable::fence::Method::Membarrier => "membarrier",
            restartable::fence::Method::Migration => "migration",
        },
        aborts: stats.map(|s| s.aborts),
        fallback_ops: stats.map(|s| s.fallback_ops),
        retries_exhausted: stats.map(|s| s.retries_exhausted),
        rounds_exhausted: exhausted,
        manager_rounds,
    };
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        let work = match opts.mode {
            Mode::Churn => format!("{} short-lived threads counting once", report.threads),
            _ => format!("{} threads x {} ops", report.threads, opts.ops),
        };
        let flavour = if raw_sections(opts.mode) {
            format!(" ({:?}, {:?})", opts.index, opts.order)
        } else {
            String::new()
        };
        println!(
            "stress {:?}{flavour}: {work}, path {} (owners: {}), {} signals handled: {}",
            opts.mode,
            report.path,
            report.owners.join(", "),
            report.signals_handled,
            if report.exact { "exact" } else { "MISMATCH" }
        );
        println!("check: {}", report.check);
        if let Some(rounds) = report.manager_rounds {
            println!(
                "manager: {rounds} rounds of remote work through the fence ({})",
                report.fence
            );
        }
        if let Some(why) = &report.fallback_reason {
            println!("fallback reason: {why}");
        }
        match stats {
            Some(s) => println!(
                "aborts {}, fallback ops {}, retries exhausted {} (library) + {} (test structures)",
                s.aborts, s.fallback_ops, s.retries_exhausted, exhausted
            ),
            None => println!("aborts: not counted (build with --features abort-stats)"),
        }
    }
    if report.exact {
        Ok(())
    } else {
        Err(format!(
            "verification failed: {} (counter sum {sum}, expected {expected})",
            report.check
        ))
    }
}
