//! `restartable bench structures`: the library's per-CPU structures against
//! the structures people use today, at 1, N and 4N threads, measured in the
//! same run, on the rseq path, the fallback path, or both.
//!
//! Four groups of variants, each compared only within itself:
//!
//! - object reuse ([`reuse`]): take an object, write one word, give it back;
//! - record buffer ([`records`]): producers append 16-byte records while
//!   one consumer drains; only producer operations count;
//! - word ([`words`]): add one to a total;
//! - lock ([`words`]): update two fields together under a lock.

mod records;
mod reuse;
mod words;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::harness::{Budget, Measured, Plan};
use super::plot;
use super::report::{self, print_ratios_table, RatiosRow};
use super::RunArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
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
    /// `restartable::Counter`: `inc` (its fallback is an atomic add on the
    /// current CPU's slot).
    Counter,
    /// `restartable::PerCpuU64`: `add(1)` (a guarded section; the guard
    /// protocol on the fallback path).
    PercpuU64,
    /// One `Mutex<u64>`, `+= 1`.
    MutexU64,
    /// One `AtomicU64`, `fetch_add(1)`.
    AtomicU64,
    /// `restartable::PerCpu<(u64, u64)>`: `lock`, add one to both fields.
    Percpu,
    /// One `Mutex<(u64, u64)>`: `lock`, add one to both fields.
    MutexPair,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    ObjectReuse,
    RecordBuffer,
    Word,
    Lock,
}

/// Which path the library's structures take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Critical sections (the fallback where the kernel refuses rseq).
    Rseq,
    /// The fallback path, as with RESTARTABLE_DISABLE=1.
    Fallback,
    /// Both, the fallback rows from a second process.
    Both,
}

impl Variant {
    const ALL: [Variant; 16] = [
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
        Variant::Counter,
        Variant::PercpuU64,
        Variant::MutexU64,
        Variant::AtomicU64,
        Variant::Percpu,
        Variant::MutexPair,
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
            Variant::Counter => "counter",
            Variant::PercpuU64 => "percpu_u64",
            Variant::MutexU64 => "mutex_u64",
            Variant::AtomicU64 => "atomic_u64",
            Variant::Percpu => "percpu",
            Variant::MutexPair => "mutex_pair",
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
            Variant::Counter => "restartable::Counter (inc)",
            Variant::PercpuU64 => "restartable::PerCpuU64 (add)",
            Variant::MutexU64 => "Mutex<u64> (+= 1)",
            Variant::AtomicU64 => "AtomicU64 (fetch_add)",
            Variant::Percpu => "restartable::PerCpu (lock, two fields)",
            Variant::MutexPair => "Mutex<(u64, u64)> (lock, two fields)",
        }
    }

    fn group(self) -> Group {
        match self {
            Variant::Buffer | Variant::Channel | Variant::MutexDeque => Group::RecordBuffer,
            Variant::Counter | Variant::PercpuU64 | Variant::MutexU64 | Variant::AtomicU64 => {
                Group::Word
            }
            Variant::Percpu | Variant::MutexPair => Group::Lock,
            _ => Group::ObjectReuse,
        }
    }

    /// A structure of this library rather than a baseline.
    fn ours(self) -> bool {
        matches!(
            self,
            Variant::Pool
                | Variant::Stack
                | Variant::Buffer
                | Variant::Counter
                | Variant::PercpuU64
                | Variant::Percpu
        )
    }

    /// A baseline that shares its objects between threads (every baseline
    /// but the thread-local floor): the candidates for the best baseline.
    fn shares(self) -> bool {
        !self.ours() && self != Variant::ThreadLocal
    }
}

impl Group {
    const ALL: [Group; 4] = [
        Group::ObjectReuse,
        Group::RecordBuffer,
        Group::Word,
        Group::Lock,
    ];

    fn title(self) -> &'static str {
        match self {
            Group::ObjectReuse => "Object reuse: take an object, write one word, give it back",
            Group::RecordBuffer => {
                "Record buffer: producers append 16-byte records, one consumer drains"
            }
            Group::Word => "Word: add one to a total",
            Group::Lock => "Lock: update two fields together under a lock",
        }
    }
}

impl Path {
    fn as_str(self) -> &'static str {
        match self {
            Path::Rseq => "rseq",
            Path::Fallback => "fallback",
            Path::Both => "both",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Row {
    variant: Variant,
    group: Group,
    /// The path the library's structures took in the run that measured
    /// this row ("rseq" or "fallback"); baselines are measured in each run.
    path: Path,
    threads: u32,
    ns_per_op: f64,
    mops: f64,
    /// Nothing lost or duplicated: objects all accounted for and touched
    /// once per operation; records all seen by the consumer, intact; totals
    /// equal to the operations.
    exact: bool,
    /// Record buffer: pushes that found the structure full, yielded and
    /// retried (null for the other groups).
    full: Option<u64>,
    /// Each baseline of the group (by name): this variant's Mops/s over
    /// the baseline's at the same thread count, in the same run (above 1:
    /// this variant is faster).
    vs: BTreeMap<String, f64>,
    /// The fastest baseline of the group at this thread count, not counting
    /// the thread-local floor.
    best_baseline: Option<Variant>,
    /// `vs` of `best_baseline`.
    vs_best: Option<f64>,
}

/// What the ratios compare: throughput of all threads together. Not
/// `ns_per_op`, the mean over threads of each thread's time per operation:
/// with more threads than CPUs, or the consumer thread competing for a CPU,
/// threads get unequal shares of CPU time, and that mean can rank two
/// variants opposite to their throughput.
fn throughput(m: &Measured) -> f64 {
    m.mops
}

pub fn run(
    args: &RunArgs,
    variants: Vec<Variant>,
    path: Path,
    plot: Option<PathBuf>,
) -> Result<(), String> {
    if path == Path::Fallback && !restartable::process_info().disabled_by_user {
        // The library reads the variable at its first use, which came
        // before main (this command's allocator runs on it): start again
        // with it set.
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(restartable::DISABLE_ENV, "1")
            .exec();
        return Err(format!(
            "cannot restart with {}=1: {err}",
            restartable::DISABLE_ENV
        ));
    }
    if let Some(path) = &plot {
        plot::check_writable(path)?;
    }
    let plan = Plan::new(args);
    let mut variants = if variants.is_empty() {
        Variant::ALL.to_vec()
    } else {
        variants
    };
    variants.sort_unstable();
    if path != Path::Rseq && !variants.iter().any(|v| v.ours()) {
        return Err(format!(
            "--path {}: the path is the library's structures', and --variants names only baselines",
            path.as_str()
        ));
    }
    let here = actual_path();
    if path == Path::Fallback && here != Path::Fallback {
        return Err("--path fallback: the library did not take its fallback path".to_owned());
    }
    let mut rows = measure_all(&plan, &variants, here)?;
    if path == Path::Both {
        if here == Path::Fallback {
            return Err(format!(
                "--path both: rseq is not in use in this process ({}), so there is no rseq path to compare; use --path fallback",
                report::rseq_state()
            ));
        }
        rows.extend(fallback_rows(args, &variants)?);
    }
    let groups: Vec<Group> = Group::ALL
        .into_iter()
        .filter(|g| variants.iter().any(|v| v.group() == *g))
        .collect();
    if args.json {
        report::print_json(&rows)?;
    } else {
        print_text(&rows, &groups, &variants);
    }
    if let Some(file) = &plot {
        plot::throughput_svg(
            file,
            &chart_title(),
            &chart_note(&plan, path),
            &panels(&rows, &groups, &variants),
        )?;
        if !args.json {
            println!("chart written to {}", file.display());
        }
    }
    let problems: Vec<String> = rows
        .iter()
        .filter(|r| !r.exact)
        .map(|r| format!("{} x{} ({})", r.variant.name(), r.threads, r.path.as_str()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not exact (objects, records or totals lost, duplicated or torn): {}",
            problems.join(", ")
        ))
    }
}

/// The path this process's structures take.
fn actual_path() -> Path {
    if restartable::registration().rseq_available() && restartable::HAS_CRITICAL_SECTIONS {
        Path::Rseq
    } else {
        Path::Fallback
    }
}

/// Runs every variant at every thread count; rows with their ratios.
fn measure_all(plan: &Plan, variants: &[Variant], path: Path) -> Result<Vec<Row>, String> {
    // Enough objects that no thread waits for one: 64 per thread of the
    // largest run.
    let fill = 4 * 16 * plan.threads.iter().copied().max().unwrap_or(1) as usize;
    let mut full = BTreeMap::new();
    let measured = plan.run(variants, Variant::name, |v, t, budget| match v.group() {
        Group::ObjectReuse => reuse::measure(v, t, budget, fill),
        Group::RecordBuffer => {
            let (m, retries, problem) = records::measure(v, t, budget)?;
            full.insert((v, t), retries);
            if let Some(p) = &problem {
                eprintln!("restartable: {} x{t}: {p}", v.name());
            }
            Ok((m, problem.is_none()))
        }
        Group::Word | Group::Lock => words::measure(v, t, budget),
    })?;
    let baselines: Vec<Variant> = variants.iter().copied().filter(|v| !v.ours()).collect();
    let vs: Vec<(Variant, Vec<Option<f64>>)> = baselines
        .iter()
        .map(|&b| (b, report::ratios_of(&measured, |_| b, throughput)))
        .collect();
    Ok(measured
        .iter()
        .enumerate()
        .map(|(i, &(v, t, m, exact))| {
            let vs: BTreeMap<String, f64> = vs
                .iter()
                .filter(|(b, _)| b.group() == v.group())
                .filter_map(|(b, r)| Some((b.name().to_owned(), r[i]?)))
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
                path,
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
        .collect())
}

/// The fallback rows of `--path both`: this program again, in a process
/// where no thread uses rseq (RESTARTABLE_DISABLE=1 is read once per
/// process), with its own baselines.
fn fallback_rows(args: &RunArgs, variants: &[Variant]) -> Result<Vec<Row>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "structures", "--path", "fallback", "--json"]);
    if !args.threads.is_empty() {
        let threads: Vec<String> = args.threads.iter().map(u32::to_string).collect();
        cmd.arg("--threads").arg(threads.join(","));
    }
    match args.ops {
        Some(n) => cmd.arg("--ops").arg(n.to_string()),
        None => cmd.arg("--duration").arg(args.duration.to_string()),
    };
    let names: Vec<&str> = variants.iter().map(|v| v.name()).collect();
    cmd.arg("--variants").arg(names.join(","));
    cmd.env(restartable::DISABLE_ENV, "1")
        .stderr(std::process::Stdio::inherit());
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run the fallback pass: {e}"))?;
    // Rows come back even when some were not exact (exit status 1).
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the fallback pass ({}) printed no rows: {e}", out.status))
}

fn print_text(rows: &[Row], groups: &[Group], variants: &[Variant]) {
    println!(
        "restartable bench structures: {}, {}",
        report::cpus(),
        report::rseq_state()
    );
    let baselines: Vec<Variant> = variants.iter().copied().filter(|v| !v.ours()).collect();
    for &group in groups {
        let columns: Vec<String> = baselines
            .iter()
            .filter(|b| b.group() == group)
            .map(|b| format!("vs {}", b.name()))
            .collect();
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        for path in [Path::Rseq, Path::Fallback] {
            let labels: Vec<String> = rows
                .iter()
                .filter(|r| r.group == group && r.path == path)
                .map(|r| match (r.variant.ours(), path) {
                    (true, Path::Fallback) => format!("{} (fallback)", r.variant.name()),
                    _ => r.variant.name().to_owned(),
                })
                .collect();
            let table: Vec<RatiosRow> = rows
                .iter()
                .filter(|r| r.group == group && r.path == path)
                .zip(&labels)
                .map(|(r, label)| {
                    let xs = names.iter().map(|c| r.vs.get(&c[3..]).copied()).collect();
                    (label.as_str(), r.threads, r.ns_per_op, r.mops, xs, r.exact)
                })
                .collect();
            if table.is_empty() {
                continue;
            }
            println!();
            println!("{}, {} path", group.title(), path.as_str());
            print_ratios_table(&names, &table);
        }
        if group == Group::RecordBuffer {
            let full: Vec<String> = rows
                .iter()
                .filter(|r| r.full.is_some_and(|f| f > 0))
                .map(|r| {
                    format!(
                        "{} x{} ({}): {}",
                        r.variant.name(),
                        r.threads,
                        r.path.as_str(),
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
    println!("vs NAME: this variant's Mops/s over NAME's at the same thread count, measured in the same run (above 1: this variant is faster); from throughput rather than ns/op/thread, which threads' unequal shares of the CPUs skew.");
}

fn chart_title() -> String {
    "restartable: per-CPU structures against baselines, throughput by thread count".to_owned()
}

/// The machine and what was measured, for the chart's footer.
fn chart_note(plan: &Plan, path: Path) -> Vec<String> {
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
            "Machine: {} ({model}); {}; path {}; {budget}.",
            report::cpus(),
            report::rseq_state(),
            path.as_str()
        ),
        "Higher is better. Thick solid lines: this library's structures (thin: on the fallback path); dashed lines: baselines measured in the same run. Each point: total operations per second of all threads.".to_owned(),
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
                .flat_map(|&v| {
                    // Baselines once (from the first run that has them);
                    // the library's structures once per path.
                    let paths: &[Path] = if v.ours() {
                        &[Path::Rseq, Path::Fallback]
                    } else {
                        &[Path::Rseq]
                    };
                    paths.iter().filter_map(move |&path| {
                        let mut points: Vec<(u32, f64)> = rows
                            .iter()
                            .filter(|r| r.variant == v && (r.path == path || !v.ours()))
                            .map(|r| (r.threads, r.mops))
                            .collect();
                        points.sort_by_key(|&(t, _)| t);
                        points.dedup_by_key(|p| p.0);
                        (!points.is_empty()).then(|| plot::Line {
                            name: match path {
                                Path::Fallback => format!("{} (fallback)", v.name()),
                                _ => v.name().to_owned(),
                            },
                            about: v.about(),
                            points,
                            ours: v.ours(),
                            fallback: path == Path::Fallback,
                        })
                    })
                })
                .collect(),
        })
        .collect()
}
