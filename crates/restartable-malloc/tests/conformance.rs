//! Conformance of the allocator's `GlobalAlloc` and heap: alignment and
//! usable size of every result, zeroing, `realloc` contents across classes,
//! the error cases, and foreign pointers stopping the process. The test
//! binary runs on the allocator itself.

use std::alloc::{alloc, alloc_zeroed, dealloc, realloc, Layout};

use restartable_malloc::classes::{MAX, SPAN};
use restartable_malloc::{heap, RestartableMalloc};

#[global_allocator]
static GLOBAL: RestartableMalloc = RestartableMalloc;

fn usable(p: *mut u8) -> usize {
    // SAFETY: every caller passes a live block.
    unsafe { heap::heap().unwrap().usable_size(p) }
}

/// Allocates `size` bytes aligned to `align`, checks the result, writes
/// its first and last byte, frees it.
fn check(size: usize, align: usize) {
    let layout = Layout::from_size_align(size, align).unwrap();
    // SAFETY: a valid layout; the block is freed with it.
    unsafe {
        let p = alloc(layout);
        assert!(!p.is_null(), "size {size} align {align}");
        assert_eq!(
            p as usize % align.max(16),
            0,
            "size {size} align {align}: {p:p}"
        );
        let u = usable(p);
        assert!(u >= size.max(1), "size {size} align {align}: usable {u}");
        p.write(0xa5);
        p.add(u - 1).write(0x5a);
        dealloc(p, layout);
    }
}

#[test]
fn every_size_up_to_1_mib_is_aligned_and_usable() {
    for size in 0..=(1 << 20) {
        check(size, 1);
    }
}

#[test]
fn every_power_of_two_alignment_up_to_64_kib() {
    // Every size up to 64 KiB at every alignment, then sizes to 1 MiB in
    // steps of 4093 bytes (a prime, so every remainder modulo the classes
    // and the span comes up), and each span boundary.
    for shift in 0..=16 {
        let align = 1usize << shift;
        for size in 0..=(64 << 10) {
            check(size, align);
        }
        for size in (64 << 10..=1 << 20).step_by(4093) {
            check(size, align);
        }
        for spans in 1..=4 {
            for size in [spans * SPAN - 1, spans * SPAN, spans * SPAN + 1] {
                check(size, align);
            }
        }
    }
    // Beyond the classes' alignments: whole spans, aligned.
    for shift in 17..=22 {
        check(100, 1 << shift);
        check(3 * SPAN, 1 << shift);
    }
}

#[test]
fn zeroed_blocks_are_zero_even_when_reused() {
    for size in [
        1,
        16,
        17,
        100,
        1000,
        4096,
        50_000,
        MAX,
        MAX + 1,
        3 * SPAN + 7,
    ] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: valid layouts; every block is freed with its layout.
        unsafe {
            // Dirty blocks of this size, free them, then ask for zeroed
            // ones: most come back from the cache they went to.
            let dirty: Vec<*mut u8> = (0..8).map(|_| alloc(layout)).collect();
            for &p in &dirty {
                p.write_bytes(0xff, size);
            }
            for &p in &dirty {
                dealloc(p, layout);
            }
            let clean: Vec<*mut u8> = (0..8).map(|_| alloc_zeroed(layout)).collect();
            for &p in &clean {
                let bytes = std::slice::from_raw_parts(p, size);
                assert!(bytes.iter().all(|&b| b == 0), "size {size}");
                dealloc(p, layout);
            }
        }
    }
}

#[test]
fn realloc_keeps_the_contents_across_classes() {
    let pattern = |i: usize| (i * 131 + i / 251) as u8;
    let mut size = 1;
    let mut layout = Layout::from_size_align(size, 1).unwrap();
    // SAFETY: valid layouts; `p` always has the latest layout.
    unsafe {
        let mut p = alloc(layout);
        p.write(pattern(0));
        // Grow through every class and into spans, then shrink back.
        let mut sizes: Vec<usize> = std::iter::successors(Some(2usize), |s| Some(s + s / 3 + 1))
            .take_while(|&s| s <= 3 << 20)
            .collect();
        let down: Vec<usize> = sizes.iter().rev().copied().collect();
        sizes.extend(down);
        for new in sizes {
            let q = realloc(p, layout, new);
            assert!(!q.is_null(), "{size} -> {new}");
            let kept = size.min(new);
            for i in 0..kept {
                assert_eq!(*q.add(i), pattern(i), "{size} -> {new}: byte {i}");
            }
            for i in kept..new {
                q.add(i).write(pattern(i));
            }
            assert!(usable(q) >= new);
            p = q;
            size = new;
            layout = Layout::from_size_align(size, 1).unwrap();
        }
        dealloc(p, layout);
    }
}

#[test]
fn a_realloc_within_the_class_keeps_the_block() {
    // SAFETY: valid layouts.
    unsafe {
        let layout = Layout::from_size_align(100, 8).unwrap();
        let p = alloc(layout);
        assert_eq!(realloc(p, layout, 112), p, "100 and 112 share a class");
        let large = Layout::from_size_align(MAX + 1, 8).unwrap();
        let q = realloc(p, Layout::from_size_align(112, 8).unwrap(), MAX + 1);
        assert_eq!(realloc(q, large, 2 * SPAN - 1), q, "the same span count");
        dealloc(q, Layout::from_size_align(2 * SPAN - 1, 8).unwrap());
    }
}

#[test]
fn requests_that_cannot_be_served_get_null() {
    let h = heap::heap().unwrap();
    // More than the reservation holds, the largest layouts, bad alignments.
    assert!(h.alloc(isize::MAX as usize - (1 << 20), 8).is_null());
    assert!(h.alloc(usize::MAX, 8).is_null());
    assert!(h.alloc(h_reserved() + SPAN, 8).is_null());
    assert!(h.alloc(64, 48).is_null());
    assert!(h.alloc(64, 0).is_null());
    assert!(h.alloc(MAX + 1, 3).is_null());
    assert!(h.alloc(16, 1 << 62).is_null());
    // SAFETY: the layout is valid; alloc reports failure with null.
    // (black_box: an optimizer may drop an allocation whose pointer is
    // only compared with null, and fold the comparison to false.)
    let p = std::hint::black_box(unsafe {
        alloc(Layout::from_size_align(isize::MAX as usize - 4095, 4096).unwrap())
    });
    assert!(p.is_null());
    assert!(restartable_malloc::stats().unwrap().failed >= 5);
    // The heap still works.
    check(100, 8);
}

fn h_reserved() -> usize {
    restartable_malloc::stats().unwrap().reserved
}

#[test]
fn many_live_blocks_are_distinct_and_come_back() {
    // 200,000 live blocks of mixed sizes: none overlaps another.
    let sizes = [8usize, 24, 100, 640, 3000, 20_000];
    let mut live: Vec<(usize, usize)> = (0..200_000)
        .map(|i| {
            let size = sizes[i % sizes.len()];
            // SAFETY: a valid layout, freed below.
            let p = unsafe { alloc(Layout::from_size_align(size, 8).unwrap()) };
            assert!(!p.is_null());
            // SAFETY: ours, `size` bytes.
            unsafe { p.write_bytes(i as u8, size) };
            (p as usize, size)
        })
        .collect();
    let mut sorted = live.clone();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        assert!(
            w[0].0 + w[0].1 <= w[1].0,
            "{:#x}+{} overlaps {:#x}",
            w[0].0,
            w[0].1,
            w[1].0
        );
    }
    for (i, &(p, size)) in live.iter().enumerate() {
        // SAFETY: each block is live and holds `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
        assert!(
            bytes.iter().all(|&b| b == i as u8),
            "block {i} was overwritten"
        );
    }
    for (p, size) in live.drain(..) {
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(p as *mut u8, Layout::from_size_align(size, 8).unwrap()) };
    }
}

/// Runs this test binary's test `name` in a child with `FOREIGN_CASE=case`
/// and returns its stderr and whether it was stopped by `SIGABRT`.
fn child(case: &str) -> (String, bool) {
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "foreign_pointer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FOREIGN_CASE", case)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.signal() == Some(libc::SIGABRT),
    )
}

#[test]
fn foreign_pointers_stop_the_process_with_a_message() {
    for (case, why) in [
        ("stack", "outside the allocator's range"),
        ("interior", "not the start of an object"),
        ("large-interior", "inside a large allocation"),
        ("large-twice", "in memory that is not handed out"),
    ] {
        let (stderr, aborted) = child(case);
        assert!(aborted, "{case}: not stopped by SIGABRT; stderr: {stderr}");
        assert!(
            stderr.contains("restartable-malloc: free or realloc of 0x") && stderr.contains(why),
            "{case}: {stderr}"
        );
    }
}

/// Not a test of its own: the child of the test above.
#[test]
fn foreign_pointer_child() {
    let Ok(case) = std::env::var("FOREIGN_CASE") else {
        return;
    };
    let h = heap::heap().unwrap();
    let mut local = 0u64;
    // SAFETY: none: each case breaks the contract on purpose, and the heap
    // must stop the process before any harm.
    unsafe {
        match case.as_str() {
            "stack" => h.free(std::ptr::addr_of_mut!(local).cast()),
            "interior" => h.free(h.alloc(100, 8).add(8)),
            "large-interior" => h.free(h.alloc(3 * SPAN, 8).add(SPAN)),
            "large-twice" => {
                let p = h.alloc(3 * SPAN, 8);
                h.free(p);
                h.free(p);
            }
            _ => unreachable!(),
        }
    }
    unreachable!("{case}: the free returned");
}
