//! `bench remote --from`: saved runs at several online CPU counts side by
//! side, and how much faster than the CPUs each figure grows.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Footprint, Op, Run};
use crate::bench::plot;

/// Above this growth (1.0: in proportion to the CPUs) a figure is marked
/// as growing faster than linearly.
const FASTER_THAN_LINEAR: f64 = 1.5;

/// The footprint's figures: name, unit, what it is.
const FOOTPRINT: [(&str, &str, &str); 5] = [
    ("cached_bytes", "bytes", "bytes in the per-CPU caches"),
    ("caching_ids", "ids", "cache ids holding something"),
    (
        "mapped_not_returned_bytes",
        "bytes",
        "mapped - returned to the system",
    ),
    (
        "cache_resident_bytes",
        "bytes",
        "the per-CPU cache mapping in RAM",
    ),
    ("cache_blocks_resident", "blocks", "cache blocks in RAM"),
];

fn footprint_value(f: &Footprint, name: &str) -> u64 {
    match name {
        "cached_bytes" => f.cached_bytes,
        "caching_ids" => f.caching_ids,
        "mapped_not_returned_bytes" => f.mapped_not_returned_bytes,
        "cache_resident_bytes" => f.cache_resident_bytes,
        _ => f.cache_blocks_resident,
    }
}

/// One figure across the runs.
#[derive(Serialize)]
struct Series {
    name: &'static str,
    /// "ns" (per operation), "bytes", "ids" or "blocks".
    unit: &'static str,
    #[serde(skip)]
    about: &'static str,
    /// One per run, in the order of `online_cpus`; null where a run lacks it.
    values: Vec<Option<f64>>,
    /// The last value over the first, divided by the growth in online CPUs
    /// between those runs: 1.0 grows in proportion to the CPUs.
    growth: Option<f64>,
    faster_than_linear: bool,
}

/// What `--from --json` prints.
#[derive(Serialize)]
struct Growth {
    online_cpus: Vec<usize>,
    files: Vec<String>,
    paths: Vec<String>,
    rows: Vec<Series>,
}

pub fn run(files: &[PathBuf], json: bool, plot: Option<&Path>) -> Result<(), String> {
    let mut runs: Vec<(String, Run)> = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            let run = serde_json::from_str(&text).map_err(|e| {
                format!(
                    "{} is not the output of `bench remote --json`: {e}",
                    f.display()
                )
            })?;
            Ok((f.display().to_string(), run))
        })
        .collect::<Result<_, String>>()?;
    if let Some((f, _)) = runs.iter().find(|(_, r)| r.online_cpus == 0) {
        return Err(format!("{f}: a run at 0 online CPUs"));
    }
    runs.sort_by_key(|(_, r)| r.online_cpus);
    if let Some(w) = runs
        .windows(2)
        .find(|w| w[0].1.online_cpus == w[1].1.online_cpus)
    {
        return Err(format!(
            "{} and {} are both runs at {} online CPUs: give one run per CPU count",
            w[0].0, w[1].0, w[0].1.online_cpus
        ));
    }
    let (names, runs): (Vec<String>, Vec<Run>) = runs.into_iter().unzip();
    let series = series(&runs);
    let cpus: Vec<usize> = runs.iter().map(|r| r.online_cpus).collect();
    if json {
        let growth = Growth {
            online_cpus: cpus,
            files: names.clone(),
            paths: runs.iter().map(|r| r.path.clone()).collect(),
            rows: series,
        };
        let text = serde_json::to_string_pretty(&growth).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print_table(&runs, &cpus, &series);
    }
    if let Some(file) = plot {
        chart(file, &runs, &names)?;
        if !json {
            println!("chart written to {}", file.display());
        }
    }
    Ok(())
}

/// Every op, then every footprint figure, across `runs` (sorted by
/// online CPUs).
fn series(runs: &[Run]) -> Vec<Series> {
    let cpus: Vec<usize> = runs.iter().map(|r| r.online_cpus).collect();
    let ops = Op::ALL.iter().map(|&op| {
        let values = runs
            .iter()
            .map(|r| r.rows.iter().find(|x| x.op == op).map(|x| x.ns_per_op))
            .collect();
        (op.name(), "ns", op.about(), values)
    });
    let footprint = FOOTPRINT.iter().map(|&(name, unit, about)| {
        let values = runs
            .iter()
            .map(|r| {
                r.footprint
                    .as_ref()
                    .map(|f| footprint_value(f, name) as f64)
            })
            .collect();
        (name, unit, about, values)
    });
    ops.chain(footprint)
        .map(|(name, unit, about, values): (_, _, _, Vec<Option<f64>>)| {
            let growth = growth(&cpus, &values);
            Series {
                name,
                unit,
                about,
                values,
                growth,
                faster_than_linear: growth.is_some_and(|g| g > FASTER_THAN_LINEAR),
            }
        })
        .collect()
}

/// The last value over the first (of the runs that have one), over the
/// growth in CPUs between those runs.
fn growth(cpus: &[usize], values: &[Option<f64>]) -> Option<f64> {
    let present: Vec<(usize, f64)> = cpus
        .iter()
        .zip(values)
        .filter_map(|(&c, v)| Some((c, (*v)?)))
        .collect();
    let (&(c0, v0), &(c1, v1)) = (present.first()?, present.last()?);
    (c1 > c0 && c0 > 0 && v0 > 0.0).then(|| (v1 / v0) / (c1 as f64 / c0 as f64))
}

fn print_table(runs: &[Run], cpus: &[usize], series: &[Series]) {
    let counts: Vec<String> = cpus.iter().map(usize::to_string).collect();
    let mut paths: Vec<&str> = runs.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    println!(
        "restartable bench remote --from: {} run{}, at {} online CPUs; path {}",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        counts.join(", "),
        paths.join(" and ")
    );
    if paths.len() > 1 {
        println!("note: the runs took different paths, so their times are not comparable");
    }
    print!("{:<34}", "figure");
    for c in cpus {
        print!(" {:>12}", format!("{c} CPUs"));
    }
    println!(" {:>8}", "growth");
    for s in series {
        let (label, scale, digits) = match s.unit {
            "ns" => ("ns/op", 1.0, 1),
            "bytes" => ("KiB", 1.0 / 1024.0, 1),
            unit => (unit, 1.0, 0),
        };
        print!("{:<34}", format!("{} ({label})", s.name));
        for v in &s.values {
            let v = v.map_or("-".to_owned(), |v| format!("{:.digits$}", v * scale));
            print!(" {v:>12}");
        }
        let g = s.growth.map_or("-".to_owned(), |g| format!("{g:.2}"));
        let mark = if s.faster_than_linear { " *" } else { "" };
        println!(" {g:>8}{mark}");
    }
    if let (Some(lo), Some(hi)) = (cpus.first(), cpus.last()) {
        if hi > lo {
            println!(
                "growth: the figure at {hi} CPUs over that at {lo}, divided by {hi}/{lo} (for a figure some runs lack: its last over its first run's, by their CPUs): 1.0 grows in proportion to the CPUs, {:.2} stays constant.",
                *lo as f64 / *hi as f64
            );
        }
    }
    let fast: Vec<&str> = series
        .iter()
        .filter(|s| s.faster_than_linear)
        .map(|s| s.name)
        .collect();
    if !fast.is_empty() {
        println!(
            "* grows faster than linearly with CPUs (growth above {FASTER_THAN_LINEAR}): {}",
            fast.join(", ")
        );
    }
}

/// Writes the chart of `runs` (sorted by online CPUs; `names`: where each
/// came from): time per operation against online CPUs, one line per op,
/// and the allocator's footprint beside it.
pub fn chart(file: &Path, runs: &[Run], names: &[String]) -> Result<(), String> {
    let series = series(runs);
    let line = |s: &Series, scale: f64| plot::Line {
        name: s.name.to_owned(),
        about: s.about,
        points: runs
            .iter()
            .zip(&s.values)
            .filter_map(|(r, v)| Some((r.online_cpus as u32, (*v)? * scale)))
            .collect(),
        // Dashed lines, of which the palette has the most colours.
        ours: false,
        fallback: false,
    };
    let times = plot::Panel {
        title: "Time per remote operation".to_owned(),
        lines: series
            .iter()
            .filter(|s| s.unit == "ns")
            .map(|s| line(s, 1.0))
            .collect(),
    };
    let bytes = plot::Panel {
        title: "Allocator footprint after the same mix on every CPU".to_owned(),
        lines: series
            .iter()
            .filter(|s| s.unit == "bytes")
            .map(|s| line(s, 1.0 / 1024.0))
            .filter(|l| !l.points.is_empty())
            .collect(),
    };
    let axes = |y, unit| plot::Axes {
        x: "online CPUs",
        y,
        unit,
        series: "figure",
    };
    let mut panels = vec![(&times, axes("time per operation, ns", "ns"))];
    let mut what = "Lower is better. Time: the mean of one call; drains, flushes and take-alls with records, objects or nodes on every CPU.".to_owned();
    if !bytes.lines.is_empty() {
        panels.push((&bytes, axes("KiB", "KiB")));
        what.push_str(
            " Footprint: after a thread pinned to each CPU allocated and freed the same mix.",
        );
    }
    let counts: Vec<String> = runs.iter().map(|r| r.online_cpus.to_string()).collect();
    let mut paths: Vec<&str> = runs.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    let mut fences: Vec<&str> = runs.iter().map(|r| r.fence.as_str()).collect();
    fences.sort_unstable();
    fences.dedup();
    let note = vec![
        format!(
            "Runs: {} ({} online CPUs); path {}; fence {}.",
            names.join(", "),
            counts.join(", "),
            paths.join(" and "),
            fences.join(" and ")
        ),
        what,
    ];
    plot::chart_svg(
        file,
        "restartable: remote operations and allocator footprint by online CPUs",
        &note,
        &panels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_relative_to_the_cpus() {
        let cpus = [2, 4, 16];
        // In proportion to the CPUs, constant, quadratic.
        assert_eq!(growth(&cpus, &[Some(1.0), Some(2.0), Some(8.0)]), Some(1.0));
        assert_eq!(growth(&cpus, &[Some(3.0), None, Some(3.0)]), Some(0.125));
        assert_eq!(growth(&cpus, &[Some(1.0), None, Some(64.0)]), Some(8.0));
        // From the first and last runs that have the figure.
        assert_eq!(growth(&cpus, &[None, Some(1.0), Some(4.0)]), Some(1.0));
        assert_eq!(growth(&cpus, &[Some(1.0), None, None]), None);
        assert_eq!(growth(&cpus, &[Some(0.0), None, Some(1.0)]), None);
    }
}
