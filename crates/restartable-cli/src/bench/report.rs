//! How the benchmarks report: JSON rows, ratios against baselines
//! measured in the same run, and text tables.

use super::harness::Measured;

/// The path this process runs on, for a benchmark's header: "rseq in use,
/// registered by libc", or the fallback and its reason.
pub fn rseq_state() -> String {
    let reg = restartable::registration();
    if reg.rseq_available() {
        format!("rseq in use, registered by {}", reg.owner.as_str())
    } else {
        format!(
            "rseq NOT in use, fallback path: {}",
            reg.fallback
                .map_or("no sections".to_owned(), |r| r.to_string())
        )
    }
}

/// The CPUs, for a benchmark's header: "2 online CPUs", and how many this
/// process may use where its affinity allows fewer.
pub fn cpus() -> String {
    let (online, usable) = (restartable::online_cpus(), crate::cpus::usable());
    if usable < online {
        format!("{online} online CPUs, {usable} usable here")
    } else {
        format!("{online} online CPUs")
    }
}

/// Prints benchmark rows as one pretty JSON array (`--json`).
pub fn print_json<R: serde::Serialize>(rows: &[R]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

/// For each row, `baseline(variant)`'s throughput over its own at the same
/// thread count: how many times the baseline's cost per operation this
/// variant's is (`None` when that row was not run). Throughput, not ns per
/// operation per thread: once threads outnumber CPUs a thread's time
/// includes the time it waited for a CPU.
pub fn ratios<V: Copy + PartialEq>(
    rows: &[(V, u32, Measured, bool)],
    baseline: impl Fn(V) -> V,
) -> Vec<Option<f64>> {
    ratios_of(rows, baseline, |m| 1.0 / m.mops)
}

/// For each row, its `cost` over that of `baseline(variant)` at the same
/// thread count (`None` when that row was not run or a cost is not finite).
pub fn ratios_of<V: Copy + PartialEq>(
    rows: &[(V, u32, Measured, bool)],
    baseline: impl Fn(V) -> V,
    cost: impl Fn(&Measured) -> f64,
) -> Vec<Option<f64>> {
    rows.iter()
        .map(|&(v, t, m, _)| {
            rows.iter()
                .find(|r| r.1 == t && r.0 == baseline(v))
                .map(|r| cost(&r.2))
                .filter(|b| *b > 0.0 && b.is_finite())
                .map(|b| cost(&m) / b)
                .filter(|x| x.is_finite())
        })
        .collect()
}

/// One printed row: variant name, threads, measurement, ratio, exact.
pub type TableRow<'a> = (&'a str, u32, f64, f64, Option<f64>, bool);

/// Prints the benchmark table; `ratio` names the ratio column.
pub fn print_table(ratio: &str, rows: &[TableRow<'_>]) {
    let rows: Vec<RatiosRow> = rows
        .iter()
        .map(|&(name, threads, ns, mops, x, exact)| (name, threads, ns, mops, vec![x], exact))
        .collect();
    print_ratios_table(&[ratio], &rows);
}

/// One printed row with several ratio columns: variant name, threads,
/// measurement, one ratio per column, exact.
pub type RatiosRow<'a> = (&'a str, u32, f64, f64, Vec<Option<f64>>, bool);

/// Prints the benchmark table with one column per name in `ratios`.
pub fn print_ratios_table(ratios: &[&str], rows: &[RatiosRow<'_>]) {
    print!(
        "{:<22} {:>7} {:>14} {:>12}",
        "variant", "threads", "ns/op/thread", "Mops/s"
    );
    for name in ratios {
        print!(" {name:>11}");
    }
    println!(" {:>6}", "exact");
    for (name, threads, ns, mops, xs, exact) in rows {
        print!("{name:<22} {threads:>7} {ns:>14.2} {mops:>12.1}");
        for (x, column) in xs.iter().zip(ratios) {
            let x = x.map_or("-".to_owned(), |x| format!("{x:.2}"));
            print!(" {x:>w$}", w = column.len().max(11));
        }
        println!(" {:>6}", if *exact { "yes" } else { "NO" });
    }
    println!("ns/op/thread is wall time per operation of one thread: with more threads than CPUs it includes the time a thread waits for a CPU; Mops/s is the total throughput.");
}
