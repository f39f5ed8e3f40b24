//! `restartable bench remote`: what the per-CPU structures' remote
//! operations (a fence, and the drains, flushes and take-alls that fence
//! each CPU) and the allocator's per-CPU footprint cost at the CPUs online
//! now. Run at several online CPU counts (in a VM), `--from` reads the
//! saved `--json` outputs and shows how each figure grows with CPUs.

mod growth;
mod measure;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::plot;
use super::report;

/// The options of `bench remote`.
pub struct Options {
    pub iterations: u64,
    pub records: usize,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub from: Vec<PathBuf>,
}

/// One timed operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    FenceCpu,
    FenceAll,
    BufferDrain,
    PoolFlush,
    StackTakeAll,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::FenceCpu,
        Op::FenceAll,
        Op::BufferDrain,
        Op::PoolFlush,
        Op::StackTakeAll,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::FenceCpu => "fence_cpu",
            Op::FenceAll => "fence_all",
            Op::BufferDrain => "buffer_drain",
            Op::PoolFlush => "pool_flush",
            Op::StackTakeAll => "stack_take_all",
        }
    }

    /// What one operation is, for the table and the chart's legend.
    fn about(self) -> &'static str {
        match self {
            Op::FenceCpu => "fence::fence_cpu(c), c another CPU of the affinity in turn",
            Op::FenceAll => "fence::fence_all()",
            Op::BufferDrain => "Buffer::drain, records on every CPU",
            Op::PoolFlush => "Pool::flush, objects cached on every CPU",
            Op::StackTakeAll => "Stack::pop_all_cpus, nodes on every CPU",
        }
    }
}

/// One row: the mean time of one operation.
#[derive(Serialize, Deserialize)]
pub struct Row {
    pub op: Op,
    pub ns_per_op: f64,
    /// Operations timed (after an unmeasured warm-up).
    pub iterations: u64,
    /// "rseq" or "fallback": the path of the threads that filled the
    /// structure (for the fences, of the fencing thread).
    pub path: String,
}

/// The allocator's per-CPU footprint after one pinned thread per CPU
/// allocated and freed a fixed mix of small objects.
#[derive(Serialize, Deserialize)]
pub struct Footprint {
    /// Objects each thread allocated, then freed.
    pub objects_per_cpu: usize,
    /// Bytes in the per-CPU caches, all ids together.
    pub cached_bytes: u64,
    /// Cache ids (CPUs, or `mm_cid`s) whose cache holds something.
    pub caching_ids: u64,
    /// `cpu_id` or `mm_cid`: what indexes the caches.
    pub index: String,
    /// Bytes mapped and not returned to the system (`mapped - returned`).
    pub mapped_not_returned_bytes: u64,
    /// Bytes of the per-CPU cache mapping in RAM (pages written: `Stats::cache_resident_bytes`).
    pub cache_resident_bytes: u64,
    /// Blocks of that mapping (one per id) with a page in RAM.
    pub cache_blocks_resident: u64,
}

/// What one run measured: `--json` prints it, `--from` reads it back.
#[derive(Serialize, Deserialize)]
pub struct Run {
    pub online_cpus: usize,
    pub possible_cpus: usize,
    /// The CPUs of the process's affinity: where it measured.
    pub cpus: Vec<usize>,
    /// "rseq" when every row ran on the rseq path, else "fallback".
    pub path: String,
    /// "membarrier" or "migration".
    pub fence: String,
    /// Records, objects or nodes put on each CPU per round.
    pub records: usize,
    pub rows: Vec<Row>,
    /// Null when the command runs on the C library's allocator.
    pub footprint: Option<Footprint>,
}

pub fn run(opts: Options) -> Result<(), String> {
    if let Some(path) = &opts.plot {
        plot::check_writable(path)?;
    }
    if !opts.from.is_empty() {
        return growth::run(&opts.from, opts.json, opts.plot.as_deref());
    }
    let run = measure::run(opts.iterations, opts.records)?;
    if opts.json {
        let text = serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print_table(&run);
    }
    if let Some(file) = &opts.plot {
        growth::chart(file, &[run], &["this run".to_owned()])?;
        if !opts.json {
            println!("chart written to {}", file.display());
        }
    }
    Ok(())
}

fn print_table(run: &Run) {
    println!(
        "restartable bench remote: {} online CPUs, {} possible, measured on CPUs {} (the affinity); {}; fence: {}",
        run.online_cpus,
        run.possible_cpus,
        cpu_list(&run.cpus),
        report::rseq_state(),
        run.fence
    );
    println!(
        "{:<16} {:>12} {:>10} {:>9}  what",
        "op", "ns/op", "iterations", "path"
    );
    for r in &run.rows {
        println!(
            "{:<16} {:>12.1} {:>10} {:>9}  {}",
            r.op.name(),
            r.ns_per_op,
            r.iterations,
            r.path,
            r.op.about()
        );
    }
    if run.cpus.len() == 1 {
        println!("One CPU in the affinity: fence_cpu fences the caller's own.");
    }
    println!(
        "Each drain, flush and take-all found exactly the {} records, objects or nodes put on each of the {} CPUs (each by a thread pinned there); ns/op is the mean time of one call.",
        run.records,
        run.cpus.len()
    );
    match &run.footprint {
        None => println!(
            "allocator footprint: none (the command runs on the {} allocator)",
            crate::allocator::name()
        ),
        Some(f) => {
            let kib = |b: u64| b as f64 / 1024.0;
            println!(
                "allocator footprint (restartable-malloc, caches indexed by {}), after a thread pinned to each CPU allocated and freed {} objects of 16 B to 4 KiB:",
                f.index, f.objects_per_cpu
            );
            println!(
                "  per-CPU caches       {:>10.1} KiB, in {} ids",
                kib(f.cached_bytes),
                f.caching_ids
            );
            println!(
                "  mapped - returned    {:>10.1} KiB",
                kib(f.mapped_not_returned_bytes)
            );
            println!(
                "  cache mapping in RAM {:>10.1} KiB, {} blocks",
                kib(f.cache_resident_bytes),
                f.cache_blocks_resident
            );
        }
    }
}

/// `cpus` (sorted) as ranges: "0-3,6".
fn cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_lists_are_ranges() {
        assert_eq!(super::cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(super::cpu_list(&[5]), "5");
        assert_eq!(super::cpu_list(&[]), "");
    }
}
