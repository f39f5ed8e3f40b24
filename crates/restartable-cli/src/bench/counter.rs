//! `restartable bench counter`: our `Counter` against the ways people count
//! today, at several thread counts, measured in the same run.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::ValueEnum;
use crossbeam_utils::CachePadded;
use restartable::Counter;
use serde::Serialize;

use super::harness::{self, Budget, Measured, Plan, Workload};
use super::report::{self, print_table, TableRow};
use super::RunArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Variant {
    /// restartable::Counter (an rseq critical section per add).
    Counter,
    /// One AtomicU64 shared by every thread.
    SharedAtomic,
    /// Per-CPU AtomicU64 slots, indexed by sched_getcpu(), fetch_add.
    SchedGetcpuAtomic,
    /// Per-CPU AtomicU64 slots, indexed by `restartable::current_cpu()` (the
    /// rseq `cpu_id`; its fallback where rseq is off), fetch_add.
    RseqCpuAtomic,
    /// A plain thread-local counter: the floor.
    ThreadLocal,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Counter,
        Variant::SharedAtomic,
        Variant::SchedGetcpuAtomic,
        Variant::RseqCpuAtomic,
        Variant::ThreadLocal,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Counter => "counter",
            Variant::SharedAtomic => "shared_atomic",
            Variant::SchedGetcpuAtomic => "sched_getcpu_atomic",
            Variant::RseqCpuAtomic => "rseq_cpu_atomic",
            Variant::ThreadLocal => "thread_local",
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
    /// `counter`'s Mops/s over this variant's at the same thread count:
    /// how many times slower than Counter (null without a counter row).
    vs_counter: Option<f64>,
}

struct CounterWork(Counter);
impl Workload for CounterWork {
    #[inline(always)]
    fn op(&self) {
        self.0.inc();
    }
}

struct SharedAtomic(CachePadded<AtomicU64>);
impl Workload for SharedAtomic {
    #[inline(always)]
    fn op(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

struct PerCpuAtomic<const RSEQ: bool>(Vec<CachePadded<AtomicU64>>);
impl<const RSEQ: bool> Workload for PerCpuAtomic<RSEQ> {
    #[inline(always)]
    fn op(&self) {
        let cpu = if RSEQ {
            restartable::current_cpu()
        } else {
            // SAFETY: sched_getcpu has no preconditions.
            (unsafe { libc::sched_getcpu() }).max(0) as usize
        };
        let slot = &self.0[cpu % self.0.len()];
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local!(static LOCAL: Cell<u64> = const { Cell::new(0) });
struct ThreadLocal(AtomicU64);
impl Workload for ThreadLocal {
    #[inline(always)]
    fn op(&self) {
        LOCAL.set(std::hint::black_box(LOCAL.get()) + 1);
    }
    fn thread_done(&self) {
        self.0.fetch_add(LOCAL.replace(0), Ordering::Relaxed);
    }
}

fn per_cpu_slots() -> Vec<CachePadded<AtomicU64>> {
    (0..restartable::possible_cpus())
        .map(|_| CachePadded::new(AtomicU64::new(0)))
        .collect()
}

/// Runs one variant: (measurement, exact).
fn measure(variant: Variant, threads: u32, budget: Budget) -> Result<(Measured, bool), String> {
    match variant {
        Variant::Counter => {
            let w = CounterWork(Counter::new());
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.sum() == m.ops))
        }
        Variant::SharedAtomic => {
            let w = SharedAtomic(CachePadded::new(AtomicU64::new(0)));
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.load(Ordering::Relaxed) == m.ops))
        }
        Variant::SchedGetcpuAtomic => {
            let w = PerCpuAtomic::<false>(per_cpu_slots());
            let m = harness::run(&w, threads, budget)?;
            let exact = w.0.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>() == m.ops;
            Ok((m, exact))
        }
        Variant::RseqCpuAtomic => {
            let w = PerCpuAtomic::<true>(per_cpu_slots());
            let m = harness::run(&w, threads, budget)?;
            let exact = w.0.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>() == m.ops;
            Ok((m, exact))
        }
        Variant::ThreadLocal => {
            let w = ThreadLocal(AtomicU64::new(0));
            let m = harness::run(&w, threads, budget)?;
            Ok((m, w.0.load(Ordering::Relaxed) == m.ops))
        }
    }
}

pub fn run(args: &RunArgs, variants: Vec<Variant>) -> Result<(), String> {
    let plan = Plan::new(args);
    let variants = if variants.is_empty() {
        Variant::ALL.to_vec()
    } else {
        variants
    };
    let measured = plan.run(&variants, Variant::name, measure)?;
    let ratios = report::ratios(&measured, |_| Variant::Counter);
    let rows: Vec<Row> = measured
        .into_iter()
        .zip(ratios)
        .map(|((v, t, m, exact), ratio)| Row {
            variant: v,
            threads: t,
            ns_per_op: m.ns_per_op,
            mops: m.mops,
            exact,
            vs_counter: ratio,
        })
        .collect();
    if args.json {
        report::print_json(&rows)?;
    } else {
        println!(
            "restartable bench counter: {}, {}",
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
                    r.vs_counter,
                    r.exact,
                )
            })
            .collect();
        print_table("x counter", &table);
        println!("x counter: counter's Mops/s over this variant's at the same thread count; above 1 means counter is faster.");
    }
    if rows.iter().all(|r| r.exact) {
        Ok(())
    } else {
        Err("a variant's final sum was not exact".to_owned())
    }
}
