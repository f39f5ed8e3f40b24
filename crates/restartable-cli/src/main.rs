//! `restartable`: what this machine offers for rseq, stress tests of the
//! per-CPU operations, and benchmarks against the alternatives.

mod bench_counter;
mod bench_ops;
mod bench_structures;
mod info;
mod measure;
mod plot;
mod signals;
mod stress;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "restartable",
    version,
    about = "Linux restartable sequences (rseq): inspect, stress-test, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this machine supports: kernel, libc, registration, CPU ids.
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmark per-CPU operations against their alternatives.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Stress-test an operation under preemption, yields and a signal storm,
    /// and verify the result exactly.
    Stress(StressArgs),
}

#[derive(Subcommand)]
enum BenchWhat {
    /// `Counter` against a shared atomic, per-CPU atomics and a thread-local.
    Counter(BenchArgs),
    /// Each critical section against its nearest atomic or mutex equivalent.
    Ops(BenchOpsArgs),
    /// The per-CPU `Pool`, `Stack` and `Buffer` against queues, mutexes,
    /// channels and sharded_slab.
    Structures(BenchStructuresArgs),
}

#[derive(Args)]
struct BenchStructuresArgs {
    #[command(flatten)]
    run: measure::RunArgs,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    variants: Vec<bench_structures::Variant>,
    /// Also write an SVG chart of throughput against threads to this file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct BenchOpsArgs {
    #[command(flatten)]
    run: measure::RunArgs,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    variants: Vec<bench_ops::Variant>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    run: measure::RunArgs,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    variants: Vec<bench_counter::Variant>,
}

#[derive(Args)]
struct StressArgs {
    /// What to stress.
    mode: stress::Mode,
    /// Worker threads [default: 6 x online CPUs; for churn: 4000 threads in
    /// all, 64 alive at a time].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    threads: Option<u32>,
    /// Operations per worker thread (churn: each thread counts once).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    ops: u64,
    /// Yield the CPU every N operations (0: never).
    #[arg(long, default_value_t = 97)]
    yield_every: u64,
    /// Raise a signal in the worker every N operations (0: never).
    #[arg(long, default_value_t = 0)]
    signal_every: u64,
    /// Sleep a millisecond every N operations (0: never).
    #[arg(long, default_value_t = 0)]
    sleep_every: u64,
    /// Per-thread timer signal interval in microseconds, at least 10 (0: no
    /// signal storm). The handler adds to the library's `Counter`, checked too.
    #[arg(long, default_value_t = 50, value_parser = parse_signal_us)]
    signal_us: u64,
    /// Delay loop inside every critical section: POINT=LOOPS, comma-separated
    /// (points 0-3; needs the `inject` feature).
    #[arg(long, value_delimiter = ',', value_parser = parse_inject)]
    inject: Vec<(usize, u64)>,
    /// Which id indexes the per-CPU data (raw-section modes).
    #[arg(long, value_enum, default_value = "cpu")]
    index: stress::IndexArg,
    /// Memory order of the commits (raw-section modes).
    #[arg(long, value_enum, default_value = "relaxed")]
    order: stress::OrderArg,
    /// This many worker threads opt out of rseq and take the fallback path
    /// while the others run sections (the modes on library structures:
    /// counter, fetch-update, percpu, stack, pool, drain).
    #[arg(long, default_value_t = 0)]
    skip_registration: u32,
    /// Give up (exit status 3) if the run has not finished after this many
    /// seconds (0: wait forever).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Pin worker i to CPU i mod online CPUs (so a fence must reach CPUs
    /// outside the fencing thread's affinity).
    #[arg(long)]
    pin_workers: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_duration(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if secs.is_finite() && (0.001..=3600.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!(
            "duration must be between 0.001 and 3600 seconds, got {s}"
        ))
    }
}

fn parse_signal_us(s: &str) -> Result<u64, String> {
    let us: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of microseconds"))?;
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

fn main() -> ExitCode {
    signals::default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { json } => info::run(json),
        Command::Bench {
            what: BenchWhat::Counter(args),
        } => bench_counter::run(&args.run, args.variants),
        Command::Bench {
            what: BenchWhat::Ops(args),
        } => bench_ops::run(&args.run, args.variants),
        Command::Bench {
            what: BenchWhat::Structures(args),
        } => bench_structures::run(&args.run, args.variants, args.plot),
        Command::Stress(args) => stress::run(stress::Options {
            mode: args.mode,
            threads: args.threads,
            ops: args.ops,
            yield_every: args.yield_every,
            signal_every: args.signal_every,
            sleep_every: args.sleep_every,
            signal_us: args.signal_us,
            inject: args.inject,
            index: args.index,
            order: args.order,
            skip_registration: args.skip_registration,
            timeout: args.timeout,
            pin_workers: args.pin_workers,
            json: args.json,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("restartable: {message}");
            ExitCode::FAILURE
        }
    }
}
