//! `restartable bench`: each benchmark runs the library's structures and
//! the alternatives people use in the same run, at 1, N and 4N threads,
//! and reports ratios against the baselines measured there.

mod alloc;
mod counter;
mod harness;
mod ops;
mod plot;
mod remote;
mod report;
mod structures;

use clap::{Args, Subcommand};

pub use harness::{MAX_OPS, MAX_THREADS};

#[derive(Subcommand)]
pub enum What {
    /// The per-CPU allocator against the C library's malloc, mimalloc,
    /// jemalloc and tcmalloc, each row in a process of its own.
    Alloc(AllocArgs),
    /// `Counter` against a shared atomic, per-CPU atomics and a thread-local.
    Counter(CounterArgs),
    /// Each critical section against its nearest atomic or mutex equivalent.
    Ops(OpsArgs),
    /// The cost of remote operations (fences; `Buffer::drain`,
    /// `Pool::flush`, `Stack::pop_all_cpus` with data on every CPU) and the
    /// allocator's per-CPU footprint at the CPUs online now; `--from` shows
    /// how saved runs at several online CPU counts grow with CPUs.
    Remote(RemoteArgs),
    /// The per-CPU structures (`Pool`, `Stack`, `Buffer`, `PerCpuU64`,
    /// `PerCpu`) against queues, mutexes, channels and sharded_slab, on the
    /// rseq path, the fallback path, or both.
    Structures(StructuresArgs),
}

/// The options every benchmark shares.
#[derive(Args)]
pub struct RunArgs {
    /// Thread counts to run, comma-separated, each 1 to 4096 [default:
    /// 1,N,4N with N = the CPUs this process may run on (its affinity)].
    #[arg(long, value_delimiter = ',', value_parser = |s: &str| crate::parse::count(s, 1, MAX_THREADS.into()).map(|n| n as u32))]
    pub threads: Vec<u32>,
    /// Seconds per run, 0.001 to 3600 (conflicts with --ops).
    #[arg(long, default_value_t = 1.0, value_parser = crate::parse::duration, conflicts_with = "ops")]
    pub duration: f64,
    /// Operations per thread per run, 1 to 10^9, instead of a fixed
    /// duration.
    #[arg(long, value_parser = |s: &str| crate::parse::count(s, 1, MAX_OPS))]
    pub ops: Option<u64>,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct AllocArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Allocators to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    allocators: Vec<alloc::Allocator>,
    /// Workloads to run, comma-separated [default: all]; `many` runs at
    /// 256 threads at least.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<alloc::Work>,
    /// Also write an SVG chart of throughput against threads to this file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// Measure one row in this process and print it as JSON (how the
    /// command runs each row in a process of its own).
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Args)]
pub struct CounterArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    variants: Vec<counter::Variant>,
}

#[derive(Args)]
pub struct OpsArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    variants: Vec<ops::Variant>,
}

#[derive(Args)]
pub struct StructuresArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    variants: Vec<structures::Variant>,
    /// Which path the library's structures take: `rseq` (critical
    /// sections), `fallback` (as with RESTARTABLE_DISABLE=1: no thread uses
    /// rseq), or `both` (the fallback rows come from a second process of
    /// this program, with its own baselines).
    #[arg(long, value_enum, default_value = "rseq")]
    path: structures::Path,
    /// Also write an SVG chart of throughput against threads to this file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct RemoteArgs {
    /// Fences timed per fence row, 1 to 10^6; the drain, flush and
    /// take-all rows time a tenth as many (at least 1). Each row runs a
    /// tenth of its count unmeasured first.
    #[arg(long, default_value_t = 200, conflicts_with = "from", value_parser = |s: &str| crate::parse::count(s, 1, 1_000_000))]
    iterations: u64,
    /// Records (Buffer), objects (Pool) or nodes (Stack) each CPU's thread
    /// puts on its CPU per round, 1 to 65536.
    #[arg(long, default_value_t = 64, conflicts_with = "from", value_parser = |s: &str| crate::parse::count(s, 1, 65_536).map(|n| n as usize))]
    records: usize,
    /// Print one JSON object instead of a table (with --from: the growth
    /// table).
    #[arg(long)]
    json: bool,
    /// Also write an SVG chart of time per operation and footprint against
    /// online CPUs to this file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// Measure nothing: read these saved --json outputs (runs at different
    /// online CPU counts) and show how each figure grows with CPUs.
    #[arg(long, num_args = 1.., value_name = "FILE.json")]
    from: Vec<std::path::PathBuf>,
}

pub fn run(what: What) -> Result<(), String> {
    match what {
        What::Alloc(args) => alloc::run(
            &args.run,
            alloc::Options {
                allocators: harness::unique(args.allocators),
                workloads: harness::unique(args.workloads),
                plot: args.plot,
                child: args.child,
            },
        ),
        What::Counter(args) => counter::run(&args.run, harness::unique(args.variants)),
        What::Ops(args) => ops::run(&args.run, harness::unique(args.variants)),
        What::Remote(args) => remote::run(remote::Options {
            iterations: args.iterations,
            records: args.records,
            json: args.json,
            plot: args.plot,
            from: args.from,
        }),
        What::Structures(args) => structures::run(
            &args.run,
            harness::unique(args.variants),
            args.path,
            args.plot,
        ),
    }
}
