//! The worked examples on the rseq path, against their plain-Rust twins:
//! on the same memory and inputs, the generated section and the twin must
//! give the same outcome and leave the same memory. The thread is pinned,
//! so the section reads the id the twin is given.

use restartable::section::examples::*;
use restartable::section::{Run, Thread};

restartable::section! {
    /// Reads a word it owns, writes it speculatively, then commits
    /// elsewhere: compare-twice must not re-check the word it wrote itself.
    /// Also a negative literal.
    #[index(cpu_id)]
    #[exits(OutOfRange)]
    #[owned(spare)]
    unsafe fn spec_bump(blocks: *mut u8, ncpus: u64) -> u64 {
        let cpu = current_id();
        if cpu >= ncpus { exit!(OutOfRange) }
        let block = blocks + (cpu << 8);
        let spare = block + 8;
        let old = load64(spare);
        store64(spare, old + -1);
        let gen = load64(block);
        commit!(store64(block, gen + 1));
        old
    }
}

#[test]
fn a_speculative_store_to_a_loaded_word_commits_under_compare_twice() {
    let Some(t) = thread() else { return };
    let cpu = pin();
    let ncpus = restartable::possible_cpus();
    let mut a = blocks(256, ncpus, |_| 5);
    let mut b = a.clone();
    let (pa, pb) = (a.as_mut_ptr().cast::<u8>(), b.as_mut_ptr().cast::<u8>());
    for _ in 0..3 {
        // SAFETY: the vectors hold a block per possible CPU, this thread's.
        let x = until(|| unsafe { spec_bump::retry(&t, pa, ncpus as u64) });
        let y = unsafe { spec_bump::twin(cpu as u32, pb, ncpus as u64) };
        assert_eq!((x, &a), (y, &b));
    }
    // SAFETY: the block of `cpu` lies inside `a`.
    let (gen, spare) = unsafe {
        let w = a.as_ptr().cast::<u64>().add(cpu * 256 / 8);
        (w.read(), w.add(1).read())
    };
    assert_eq!((gen, spare), (8, 2));
}

fn require_rseq() -> bool {
    std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1")
}

/// Pins the thread to the CPU it runs on; returns that CPU.
fn pin() -> usize {
    let cpu = restartable::current_cpu();
    // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
    cpu
}

/// 128-byte aligned words for `cpus` blocks of `stride` bytes.
fn blocks(stride: usize, cpus: usize, fill: impl Fn(usize) -> u64) -> Vec<u128> {
    let words = stride * cpus / 8;
    let mut v = vec![0u128; words.div_ceil(2) + 8];
    let p = v.as_mut_ptr().cast::<u64>();
    for i in 0..words {
        // SAFETY: `i` is below the vector's length in u64s.
        unsafe { p.add(i).write(fill(i)) };
    }
    v
}

fn until<C, E>(
    mut f: impl FnMut() -> Result<Run<C, E>, restartable::section::RetriesExhausted>,
) -> Run<C, E> {
    for _ in 0..1000 {
        if let Ok(r) = f() {
            return r;
        }
    }
    panic!("1000 rounds of aborts on an idle, pinned thread");
}

fn thread() -> Option<Thread> {
    let t = Thread::current();
    if t.is_none() {
        assert!(
            !require_rseq(),
            "rseq required but this thread cannot run sections"
        );
        println!("[language] no critical sections here: skipped");
    }
    t
}

#[test]
fn every_example_agrees_with_its_twin() {
    let Some(t) = thread() else { return };
    let cpu = pin();
    let ncpus = restartable::possible_cpus();
    let mut compared = 0;
    for seed in 0..64u64 {
        let fill = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9).wrapping_add(seed) % 97;
        // The ring: tails and heads from the fill, kept consistent.
        let ring_fill = |i: usize| match i % (RING_STRIDE / 8) {
            0 => 40 + seed % 30,
            1 => 40,
            2 => u64::from(seed % 7 == 0),
            _ => fill(i),
        };
        for n in [ncpus, cpu] {
            let mut a = blocks(RING_STRIDE, ncpus, ring_fill);
            let mut b = a.clone();
            let (pa, pb) = (a.as_mut_ptr().cast::<u8>(), b.as_mut_ptr().cast::<u8>());
            // SAFETY: each vector holds a ring per possible CPU, touched by
            // this thread only.
            let x = until(|| unsafe { ring_append::retry(&t, pa, n as u64, seed) });
            let y = unsafe { ring_append::twin(cpu as u32, pb, n as u64, seed) };
            assert_eq!((x, &a), (y, &b), "ring_append, seed {seed}, ncpus {n}");
            let x = until(|| unsafe { ring_take::retry(&t, pa, n as u64) });
            let y = unsafe { ring_take::twin(cpu as u32, pb, n as u64) };
            assert_eq!((x, &a), (y, &b), "ring_take, seed {seed}, ncpus {n}");

            let stack_fill = |i: usize| {
                if i.is_multiple_of(STACK_STRIDE / 8) {
                    seed % 70
                } else {
                    fill(i)
                }
            };
            let mut a = blocks(STACK_STRIDE, ncpus, stack_fill);
            let mut b = a.clone();
            let (pa, pb) = (a.as_mut_ptr().cast::<u8>(), b.as_mut_ptr().cast::<u8>());
            let cap = seed % 64;
            // SAFETY: as above, for stacks.
            let x = until(|| unsafe { stack_push::retry(&t, pa, n as u64, cap, seed as u32) });
            let y = unsafe { stack_push::twin(cpu as u32, pb, n as u64, cap, seed as u32) };
            assert_eq!((x, &a), (y, &b), "stack_push, seed {seed}, ncpus {n}");
            let x = until(|| unsafe { stack_pop::retry(&t, pa, n as u64) });
            let y = unsafe { stack_pop::twin(cpu as u32, pb, n as u64) };
            assert_eq!((x, &a), (y, &b), "stack_pop, seed {seed}, ncpus {n}");

            let mut a = blocks(HISTOGRAM_STRIDE, ncpus, fill);
            let mut b = a.clone();
            let (pa, pb) = (a.as_mut_ptr().cast::<u8>(), b.as_mut_ptr().cast::<u8>());
            let sample = seed * 5;
            // SAFETY: as above, for histograms.
            let x = until(|| unsafe { histogram_add::retry(&t, pa, n as u64, sample) });
            let y = unsafe { histogram_add::twin(cpu as u32, pb, n as u64, sample) };
            assert_eq!((x, &a), (y, &b), "histogram_add, seed {seed}, ncpus {n}");
            compared += 5;
        }
    }
    println!("[language] {compared} section runs on the rseq path matched their twins");
}
