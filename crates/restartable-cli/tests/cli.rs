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
    assert_eq!(rows.len(), 18);
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
    let svg =
        std::env::temp_dir().join(format!("restartable-structures-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&svg);
    let out = restartable(&[
        "bench",
        "structures",
        "--duration",
        "0.01",
        "--threads",
        "1,2",
        "--json",
        "--plot",
        svg.to_str().expect("a UTF-8 temporary path"),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let rows = rows.as_array().expect("an array of rows");
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
    assert_eq!(rows.len(), 2 * (reuse.len() + records.len()));
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    let _ = std::fs::remove_file(&svg);
    for (group, variants, baselines) in [
        ("object_reuse", &reuse[..], &reuse[2..]),
        ("record_buffer", &records[..], &records[1..]),
    ] {
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
                assert_eq!(row["exact"], true, "{row}\nstderr: {stderr}");
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
    ] {
        assert!(chart.contains(label), "the chart lacks {label:?}");
    }
    assert_success(&out);
}
