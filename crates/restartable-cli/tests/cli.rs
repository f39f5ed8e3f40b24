//! The command line: output formats and bad input.

mod common;

use common::*;

#[test]
fn bench_counter_json_has_every_variant_and_exact_sums() {
    let rows = json_of(&mut restartable(&[
        "bench",
        "counter",
        "--threads",
        "1,3",
        "--ops",
        "20000",
        "--json",
    ]));
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 10);
    for variant in [
        "counter",
        "shared_atomic",
        "sched_getcpu_atomic",
        "rseq_cpu_atomic",
        "thread_local",
    ] {
        for threads in [1, 3] {
            let row = rows
                .iter()
                .find(|r| r["variant"] == variant && r["threads"] == threads)
                .unwrap_or_else(|| panic!("no row for {variant} x{threads}"));
            assert_eq!(row["exact"], true, "{row}");
            assert!(row["ns_per_op"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["mops"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
}

#[test]
fn bench_counter_table_is_readable() {
    let out = restartable(&[
        "bench",
        "counter",
        "--threads",
        "2",
        "--ops",
        "5000",
        "--variants",
        "counter,shared_atomic",
    ])
    .output()
    .unwrap();
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ns/op/thread") && text.contains("shared_atomic") && text.contains("yes"),
        "{text}"
    );
}

#[test]
fn info_text_names_the_owner() {
    let out = restartable(&["info"]).output().unwrap();
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("area used") && text.contains("possible CPUs"),
        "{text}"
    );
}

#[test]
fn bad_arguments_fail_cleanly() {
    for args in [
        &["bench", "counter", "--threads", "0"][..],
        &["bench", "counter", "--threads", "x"],
        &["bench", "counter", "--duration", "-1"],
        &["bench", "counter", "--duration", "nan"],
        &["bench", "counter", "--ops", "0"],
        &["bench", "counter", "--ops", "5", "--duration", "1"],
        &["bench", "counter", "--variants", "nope"],
        &["bench", "nothing"],
        &["stress", "counter", "--threads", "0"],
        &["stress", "sideways"],
        &["frobnicate"],
    ] {
        let out = restartable(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
    // Negative and too large numbers get the option's range, not
    // "unexpected argument".
    for (args, range) in [
        (&["bench", "counter", "--threads", "-1"][..], "1..=4096"),
        (&["stress", "counter", "--ops", "-5"], "1..=1000000000"),
        (&["stress", "counter", "--threads", "-3"], "1..=10000"),
        (
            &["bench", "counter", "--ops", "18446744073709551615"],
            "1..=1000000000",
        ),
    ] {
        let out = restartable(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(range) && !stderr.contains("unexpected argument"),
            "{args:?}: {stderr}"
        );
    }
}

/// Options that cannot apply are refused with a message, before anything
/// runs.
#[test]
fn options_that_cannot_apply_are_refused() {
    let fails = |args: &[&str], needle: &str| {
        let out = restartable(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    };
    fails(&["stress", "churn", "--ops", "5"], "--ops does not apply");
    fails(
        &["stress", "list", "--skip-registration", "1", "--ops", "10"],
        "no fallback",
    );
    fails(
        &["stress", "counter", "--index", "mm-cid", "--ops", "10"],
        "no index choice",
    );
    fails(
        &["stress", "percpu", "--order", "release", "--ops", "10"],
        "no commit order choice",
    );
    fails(
        &[
            "stress",
            "percpu",
            "--threads",
            "2",
            "--skip-registration",
            "3",
            "--ops",
            "10",
        ],
        "exceeds the 2 worker threads",
    );
    // One CPU in the affinity: pinning would test nothing.
    let mut cmd = restartable(&["stress", "counter", "--pin-workers", "--ops", "10"]);
    // SAFETY: between fork and exec the closure only calls
    // sched_setaffinity on a set built in it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at least two CPUs"), "{stderr}");
    // Injection in a build without it says how to build it.
    let out = restartable(&["stress", "increment", "--ops", "1", "--inject", "0=1"])
        .output()
        .unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("-p restartable-cli --features inject"),
            "{stderr}"
        );
    }
}

#[test]
fn bench_ops_json_compares_each_section_with_its_baselines() {
    let info = json_of(&mut restartable(&["info", "--json"]));
    if info["rseq_available"] != true || info["critical_sections"] != true {
        assert!(!require_rseq(), "rseq required: {info}");
        let out = restartable(&["bench", "ops", "--ops", "100"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "bench ops must refuse to run without rseq"
        );
        return;
    }
    let rows = json_of(&mut restartable(&[
        "bench",
        "ops",
        "--threads",
        "1,3",
        "--ops",
        "5000",
        "--json",
    ]));
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 24, "12 variants at 2 thread counts");
    for row in rows {
        assert_eq!(row["exact"], true, "{row}");
        assert!(row["ns_per_op"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["vs_section"].as_f64().unwrap() > 0.0, "{row}");
        for key in ["variant", "threads", "mops", "section"] {
            assert!(row.get(key).is_some(), "{row} lacks {key}");
        }
    }
}

#[test]
fn bench_structures_json_and_chart_cover_every_variant() {
    let (rows, chart) =
        bench_rows_and_chart("structures", &["--duration", "0.01", "--threads", "1,2"]);
    let reuse = [
        "pool",
        "stack",
        "array_queue",
        "seg_queue",
        "mutex_vec",
        "sharded_slab",
        "thread_local",
    ];
    let records = ["buffer", "channel", "mutex_deque"];
    let words = ["counter", "percpu_u64", "mutex_u64", "atomic_u64"];
    let locks = ["percpu", "mutex_pair"];
    let groups = [
        ("object_reuse", &reuse[..], &reuse[2..]),
        ("record_buffer", &records[..], &records[1..]),
        ("word", &words[..], &words[2..]),
        ("lock", &locks[..], &locks[1..]),
    ];
    let variants: usize = groups.iter().map(|g| g.1.len()).sum();
    assert_eq!(rows.len(), 2 * variants);
    let path = json_of(&mut restartable(&["info", "--json"]))["rseq_available"]
        .as_bool()
        .map(|rseq| if rseq { "rseq" } else { "fallback" });
    for (group, variants, baselines) in groups {
        for variant in variants {
            assert!(
                chart.contains(&format!("{variant}: ")),
                "the chart's legend lacks {variant}"
            );
            for threads in [1, 2] {
                let row = rows
                    .iter()
                    .find(|r| r["variant"] == *variant && r["threads"] == threads)
                    .unwrap_or_else(|| panic!("no row for {variant} x{threads}"));
                assert_eq!(row["group"], group, "{row}");
                assert_eq!(row["path"].as_str(), path, "{row}");
                assert!(row["ns_per_op"].as_f64().unwrap() > 0.0, "{row}");
                assert!(row["mops"].as_f64().unwrap() > 0.0, "{row}");
                assert_eq!(row["full"].is_u64(), group == "record_buffer", "{row}");
                for baseline in baselines {
                    assert!(
                        row["vs"][baseline].as_f64().unwrap() > 0.0,
                        "{row} lacks vs {baseline}"
                    );
                }
                assert_eq!(
                    row["vs"].as_object().unwrap().len(),
                    baselines.len(),
                    "{row}"
                );
                assert!(row["vs_best"].as_f64().unwrap() > 0.0, "{row}");
                assert_ne!(row["best_baseline"], "thread_local", "{row}");
                assert_eq!(row["exact"], true, "{row}");
            }
        }
    }
    for label in [
        "<text",
        "threads (log scale)",
        "Mops/s",
        "online CPUs",
        "Object reuse",
        "Record buffer",
        "Word",
        "Lock",
    ] {
        assert!(chart.contains(label), "the chart lacks {label:?}");
    }
}

/// `--path both`: the fallback rows come from a second process with its own
/// baselines, next to the rseq rows.
#[test]
fn bench_structures_runs_both_paths() {
    let info = json_of(&mut restartable(&["info", "--json"]));
    if info["rseq_available"] != true {
        assert!(!require_rseq(), "rseq required: {info}");
        return;
    }
    let rows = json_of(&mut restartable(&[
        "bench",
        "structures",
        "--path",
        "both",
        "--variants",
        "pool,mutex_vec,percpu_u64,mutex_u64",
        "--threads",
        "1",
        "--duration",
        "0.01",
        "--json",
    ]));
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 8, "{rows:?}");
    for path in ["rseq", "fallback"] {
        for (ours, baseline) in [("pool", "mutex_vec"), ("percpu_u64", "mutex_u64")] {
            let row = rows
                .iter()
                .find(|r| r["variant"] == ours && r["path"] == path)
                .unwrap_or_else(|| panic!("no {ours} row on the {path} path: {rows:?}"));
            assert!(row["vs"][baseline].as_f64().unwrap() > 0.0, "{row}");
            assert_eq!(row["exact"], true, "{row}");
        }
    }
    // The text table labels the fallback rows.
    let out = restartable(&[
        "bench",
        "structures",
        "--path",
        "fallback",
        "--variants",
        "stack,mutex_vec",
        "--threads",
        "1",
        "--ops",
        "1000",
    ])
    .output()
    .unwrap();
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stack (fallback)") && text.contains("fallback path"),
        "{text}"
    );
}

#[test]
fn repeated_variants_run_once() {
    let rows = json_of(&mut restartable(&[
        "bench",
        "counter",
        "--variants",
        "counter,counter,thread_local,counter",
        "--threads",
        "1,1",
        "--ops",
        "100",
        "--json",
    ]));
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");
}

/// Thousands of threads: the harness releases them with one wake and each
/// stops itself at the deadline, so a short run stays short.
#[test]
fn benchmarks_scale_to_thousands_of_threads() {
    let started = std::time::Instant::now();
    let mut child = restartable(&[
        "bench",
        "counter",
        "--threads",
        "4096",
        "--duration",
        "0.05",
        "--variants",
        "thread_local,counter",
        "--json",
    ])
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let limit = std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("bench counter with 4096 threads did not finish in {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    println!(
        "[cli] 4096 threads, two variants of 0.05 s: {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status}");
}

#[test]
fn stress_without_a_mode_runs_every_mode_briefly() {
    let out = restartable(&["stress", "--threads", "4", "--ops", "300"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_success(&out);
    let rseq = !text.contains("raw-section modes are skipped");
    for mode in [
        "counter",
        "churn",
        "fetch-update",
        "percpu",
        "stack",
        "pool",
        "drain",
    ]
    .into_iter()
    .chain(RAW_MODES.iter().copied().filter(|_| rseq))
    .chain(GENERATED_MODES.iter().copied().filter(|_| rseq))
    {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(mode))
            .unwrap_or_else(|| panic!("no line for {mode}:\n{text}"));
        assert!(line.ends_with("exact"), "{line}\n{text}");
    }
}

/// Output that cannot be written is an error message and exit status 1,
/// not a panic.
#[test]
fn an_unwritable_stdout_is_a_clean_error() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        println!("[cli] no /dev/full here: skipped");
        return;
    };
    let out = restartable(&["info", "--json"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the output"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The quick matrix's JSON has an entry for every mode, with its status.
#[test]
fn the_quick_matrix_json_names_every_mode() {
    let out = restartable(&["stress", "--json", "--threads", "2", "--ops", "100"])
        .output()
        .unwrap();
    assert_success(&out);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = entries.as_array().expect("an array");
    // Every mode: 13 before the section language, its 3 worked examples.
    assert_eq!(entries.len(), 16, "{entries:?}");
    for e in entries {
        assert!(e["status"] == "exact" || e["status"] == "skipped", "{e}");
    }
}

/// A mode its watchdog gives up on is a timeout (exit status 3), not a
/// failed check, also in the quick matrix.
#[test]
fn a_timeout_is_not_a_failure() {
    let out = restartable(&[
        "stress",
        "--threads",
        "2",
        "--ops",
        "1000000000",
        "--timeout",
        "1",
    ])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{text}\n{stderr}");
    assert!(stderr.contains("stress timed out in: counter"), "{stderr}");
    assert!(!text.contains("FAILED"), "{text}");
    // Refused before any mode runs, not reported as thirteen failures.
    let out = restartable(&["stress", "--skip-registration", "10001", "--ops", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a clap range error");
    let out = restartable(&[
        "stress",
        "--threads",
        "2",
        "--skip-registration",
        "3",
        "--ops",
        "10",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exceeds the 2 worker threads"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing ran");
}

/// In structure modes, `sum` and `expected` are the structure's check, and
/// the signal handler's counter is reported on its own.
#[test]
fn stress_reports_the_structures_own_check() {
    let report = json_of(&mut restartable(&[
        "stress",
        "stack",
        "--threads",
        "3",
        "--ops",
        "500",
        "--json",
    ]));
    assert_eq!(report["exact"], true, "{report}");
    assert!(
        report["check"].as_str().unwrap().contains("nodes back"),
        "{report}"
    );
    assert_eq!(report["sum"], report["expected"], "{report}");
    let nodes = report["expected"].as_u64().unwrap();
    assert!(
        nodes >= 6,
        "the stack's node count, not the signals: {report}"
    );
    assert_eq!(report["signal_sum"], report["signals_handled"], "{report}");
}

#[test]
fn bench_alloc_json_and_chart_cover_every_allocator_and_workload_exactly() {
    let (rows, chart) = bench_rows_and_chart("alloc", &["--ops", "3000", "--threads", "1,2"]);
    let mut allocators = vec!["restartable", "libc"];
    if cfg!(not(target_env = "musl")) {
        allocators.extend(["mimalloc", "jemalloc"]);
        // scripts/test.sh installs Debian's libtcmalloc-minimal4; where it
        // is missing the command leaves tcmalloc out with a note.
        if rows.iter().any(|r| r["allocator"] == "tcmalloc") {
            allocators.push("tcmalloc");
        }
    }
    let workloads = [
        ("pair", &[1, 2][..]),
        ("churn", &[1, 2]),
        ("exchange", &[1, 2]),
        ("mixed", &[1, 2]),
        ("realloc", &[1, 2]),
        ("many", &[256]),
    ];
    let expected: usize = workloads.iter().map(|w| w.1.len()).sum::<usize>() * allocators.len();
    assert_eq!(rows.len(), expected, "{rows:?}");
    for a in &allocators {
        for (w, threads) in workloads {
            for &t in threads {
                let row = rows
                    .iter()
                    .find(|r| r["allocator"] == *a && r["workload"] == w && r["threads"] == t)
                    .unwrap_or_else(|| panic!("no row for {a} {w} x{t}"));
                assert_eq!(row["exact"], true, "{row}");
                assert!(row["mops"].as_f64().unwrap() > 0.0, "{row}");
                assert!(row["peak_rss_kib"].as_u64().unwrap() > 0, "{row}");
                assert!(row["speedup_vs_libc"].as_f64().unwrap() > 0.0, "{row}");
                assert!(
                    row["speedup_vs_fastest_other"].as_f64().unwrap() > 0.0,
                    "{row}"
                );
            }
        }
    }
    for (w, _) in workloads {
        assert!(
            chart.contains(&format!("{w}: ")),
            "no {w} panel in the chart"
        );
    }
    // A named allocator must be there; an unknown one is refused.
    let out = restartable(&["bench", "alloc", "--allocators", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `bench remote`: every op timed on the path this machine takes, the
/// allocator's footprint; then `--from` on two saved runs (the second
/// pretending to twice the online CPUs) gives the growth table and chart.
#[test]
fn bench_remote_rows_and_growth_from_saved_runs() {
    const OPS: [&str; 5] = [
        "fence_cpu",
        "fence_all",
        "buffer_drain",
        "pool_flush",
        "stack_take_all",
    ];
    let mut measure = restartable(&[
        "bench",
        "remote",
        "--json",
        "--iterations",
        "20",
        "--records",
        "16",
    ]);
    measure.env_remove("RESTARTABLE_CLI_ALLOCATOR");
    let run = json_of(&mut measure);
    let path = match json_of(&mut restartable(&["info", "--json"]))["rseq_available"].as_bool() {
        Some(true) => "rseq",
        _ => "fallback",
    };
    assert_eq!(run["path"], path, "{run}");
    let cpus = run["cpus"].as_array().expect("the affinity's CPUs").len();
    let online = run["online_cpus"].as_u64().unwrap();
    assert!(cpus >= 1 && online >= 1, "{run}");
    assert!(run["possible_cpus"].as_u64().unwrap() >= online, "{run}");
    let rows = run["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), OPS.len(), "{run}");
    for op in OPS {
        let row = rows
            .iter()
            .find(|r| r["op"] == op)
            .unwrap_or_else(|| panic!("no row for {op}: {run}"));
        assert!(row["ns_per_op"].as_f64().unwrap() > 0.0, "{row}");
        let n = if op.starts_with("fence") { 20 } else { 2 };
        assert_eq!(row["iterations"], n, "{row}");
        assert_eq!(row["path"], path, "{row}");
    }
    let f = &run["footprint"];
    assert!(f["cached_bytes"].as_u64().unwrap() > 0, "{f}");
    assert!(f["mapped_not_returned_bytes"].as_u64().unwrap() > 0, "{f}");
    assert!(f["cache_resident_bytes"].as_u64().unwrap() > 0, "{f}");
    assert!(f["cache_blocks_resident"].as_u64().unwrap() >= 1, "{f}");
    if f["index"] == "cpu_id" {
        // A thread pinned to each CPU freed into that CPU's cache.
        assert!(f["caching_ids"].as_u64().unwrap() >= cpus as u64, "{f}");
    }

    // The same run at twice the CPUs: drains twice as long (linear), the
    // flush eight times (faster than linear), the rest unchanged.
    let mut bigger = run.clone();
    bigger["online_cpus"] = (2 * online).into();
    for row in bigger["rows"].as_array_mut().unwrap() {
        let factor = match row["op"].as_str() {
            Some("buffer_drain") => 2.0,
            Some("pool_flush") => 8.0,
            _ => 1.0,
        };
        row["ns_per_op"] = (row["ns_per_op"].as_f64().unwrap() * factor).into();
    }
    let dir = std::env::temp_dir();
    let id = std::process::id();
    let small = dir.join(format!("restartable-remote-{id}-a.json"));
    let large = dir.join(format!("restartable-remote-{id}-b.json"));
    let svg = dir.join(format!("restartable-remote-{id}.svg"));
    std::fs::write(&small, run.to_string()).unwrap();
    std::fs::write(&large, bigger.to_string()).unwrap();
    let (small, large, svg) = (
        small.to_str().unwrap(),
        large.to_str().unwrap(),
        svg.to_str().unwrap(),
    );
    // Given in either order, the columns go by online CPUs.
    let growth = json_of(&mut restartable(&[
        "bench", "remote", "--from", large, small, "--json",
    ]));
    assert_eq!(
        growth["online_cpus"],
        serde_json::json!([online, 2 * online])
    );
    let figures = growth["rows"].as_array().expect("rows");
    // 1.0: in proportion to the CPUs; 0.5: constant over twice the CPUs.
    let expected = |name: &str| match name {
        "buffer_drain" => 1.0,
        "pool_flush" => 4.0,
        _ => 0.5,
    };
    for name in OPS.iter().chain(&[
        "cached_bytes",
        "caching_ids",
        "mapped_not_returned_bytes",
        "cache_resident_bytes",
        "cache_blocks_resident",
    ]) {
        let row = figures
            .iter()
            .find(|r| r["name"] == *name)
            .unwrap_or_else(|| panic!("no growth row for {name}: {growth}"));
        assert_eq!(row["values"].as_array().unwrap().len(), 2, "{row}");
        let g = row["growth"].as_f64().unwrap();
        assert!((g - expected(name)).abs() < 1e-9, "{row}");
        assert_eq!(row["faster_than_linear"], *name == "pool_flush", "{row}");
    }
    let out = restartable(&["bench", "remote", "--from", small, large, "--plot", svg])
        .output()
        .unwrap();
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    for op in OPS {
        assert!(text.contains(op), "the growth table lacks {op}:\n{text}");
    }
    assert!(
        text.contains(&format!("{online} CPUs")) && text.contains("grows faster than linearly"),
        "{text}"
    );
    let chart = std::fs::read_to_string(svg).expect("the chart was written");
    assert!(
        chart.contains("<text") && chart.contains("online CPUs"),
        "{chart}"
    );
    assert!(
        chart.contains("buffer_drain: "),
        "the legend lacks buffer_drain"
    );
    // --from measures nothing, and wants one run per CPU count.
    for args in [
        &["--from", small, "--iterations", "5"][..],
        &["--from", small, small],
    ] {
        let mut all = vec!["bench", "remote"];
        all.extend_from_slice(args);
        let out = restartable(&all).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(if args.len() == 4 { 2 } else { 1 }),
            "{args:?}"
        );
    }
    for file in [small, large, svg] {
        let _ = std::fs::remove_file(file);
    }
}
