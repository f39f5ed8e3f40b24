//! The fallback path's thread-local magazines give their objects back
//! when their threads exit. In a child with `RESTARTABLE_DISABLE=1`, 2,000
//! threads one after another each allocate and free objects of one class
//! (into their magazines) and exit; after a `trim`, the class holds no
//! more runs than before (had the magazines kept their objects, the
//! 16,000 objects left behind would hold at least seven runs).

mod common;

use restartable_malloc::RestartableMalloc;

#[global_allocator]
static GLOBAL: RestartableMalloc = RestartableMalloc;

/// Bytes of the objects: a class the test harness hardly uses.
const SIZE: usize = 104;
const THREADS: usize = 2000;
const PER_THREAD: usize = 8;

fn runs_of_the_class() -> usize {
    let stats = restartable_malloc::stats().expect("the heap is set up");
    stats
        .classes
        .iter()
        .find(|c| c.size >= SIZE)
        .map_or(0, |c| c.runs)
}

fn churn_threads() -> (usize, usize, usize) {
    restartable_malloc::trim();
    let before = runs_of_the_class();
    let mut sum = 0usize;
    for t in 0..THREADS {
        sum += std::thread::spawn(move || {
            let boxes: Vec<Box<[u8; SIZE]>> = (0..PER_THREAD)
                .map(|k| Box::new([(t + k) as u8; SIZE]))
                .collect();
            boxes
                .iter()
                .map(|b| usize::from(b[SIZE - 1]))
                .sum::<usize>()
        })
        .join()
        .unwrap();
    }
    restartable_malloc::trim();
    (before, runs_of_the_class(), sum)
}

#[test]
fn exiting_threads_give_their_magazines_back() {
    if common::in_child() {
        let (before, after, sum) = churn_threads();
        let stats = restartable_malloc::stats().unwrap();
        println!(
            "[magazine] path={} runs_before={before} runs_after={after} fallback_ops={} checksum={sum}",
            restartable_malloc::path(),
            stats.fallback_ops
        );
        return;
    }
    let line = common::child_report(
        "exiting_threads_give_their_magazines_back",
        "[magazine]",
        &[
            ("RESTARTABLE_DISABLE", "1"),
            ("RESTARTABLE_MALLOC_RELEASE_MS", "0"),
        ],
        &["RESTARTABLE_REQUIRE_RSEQ"],
    );
    let field = |k: &str| {
        common::word(&line, k)
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    };
    assert!(line.contains("path=fallback"), "{line}");
    assert!(field("fallback_ops") >= THREADS * PER_THREAD, "{line}");
    assert!(
        field("runs_after") <= field("runs_before") + 1,
        "exited threads kept their objects: {line}"
    );
    let want: usize = (0..THREADS)
        .map(|t| (0..PER_THREAD).map(|k| (t + k) % 256).sum::<usize>())
        .sum();
    assert_eq!(field("checksum"), want, "{line}");
}
