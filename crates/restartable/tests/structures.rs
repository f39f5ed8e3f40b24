//! The per-CPU structures across CPUs: threads pinned to different CPUs,
//! so stealing, draining one CPU and slot allocation are exercised for
//! certain rather than by chance. Each test prints the path it ran.

use restartable::{registration, Buffer, Node, PerCpu, Stack};

/// Pins the calling thread to `cpu`; false where that is not allowed.
fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // and write the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn two_cpus() -> Option<(usize, usize)> {
    let cpus: Vec<usize> = (0..restartable::possible_cpus())
        .filter(|&c| std::thread::spawn(move || pin(c)).join().unwrap_or(false))
        .take(2)
        .collect();
    match cpus[..] {
        [a, b] => Some((a, b)),
        _ => {
            println!("[structures] fewer than two CPUs to pin to: skipped");
            None
        }
    }
}

fn path() -> String {
    let reg = registration();
    let required = std::env::var_os("RESTARTABLE_REQUIRE_RSEQ").is_some_and(|v| v == "1");
    assert!(
        reg.rseq_available() || !required,
        "rseq required but this thread takes the fallback: {reg:?}"
    );
    format!("owner {:?}, fallback {:?}", reg.owner, reg.fallback)
}

#[test]
fn an_empty_cpu_steals_from_another() {
    let Some((a, b)) = two_cpus() else { return };
    let stack: Stack<u32> = Stack::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(pin(a));
            (0..100).for_each(|i| stack.push(Node::new(i)));
        });
    });
    let got = std::thread::scope(|s| {
        s.spawn(|| {
            assert!(pin(b));
            println!("[structures] steal on CPU {b}: {}", path());
            // The local list is empty: every pop steals (a batch at a time,
            // the rest landing on this CPU's list).
            assert!(stack.pop_all().is_empty());
            let mut got: Vec<u32> = std::iter::from_fn(|| stack.pop()).map(|n| **n).collect();
            got.sort_unstable();
            got
        })
        .join()
        .unwrap()
    });
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn draining_one_cpu_gets_its_records_in_order() {
    let Some((a, b)) = two_cpus() else { return };
    let buffer: Buffer<u64> = Buffer::new(1000);
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(pin(a));
            println!("[structures] buffer on CPU {a}: {}", path());
            (0..500).for_each(|i| buffer.push(i).unwrap());
        });
    });
    let mut other = Vec::new();
    assert_eq!(buffer.drain_cpu(b, |r| other.extend_from_slice(r)), Ok(0));
    let mut mine = Vec::new();
    assert_eq!(buffer.drain_cpu(a, |r| mine.extend_from_slice(r)), Ok(500));
    assert_eq!(mine, (0..500).collect::<Vec<_>>());
    assert!(other.is_empty() && buffer.is_empty());
    // Full at capacity, on that CPU.
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(pin(a));
            (0..1000).for_each(|i| buffer.push(i).unwrap());
            assert_eq!(buffer.push(7), Err(restartable::Full(7)));
        });
    });
}

#[test]
fn storage_indexed_by_mm_cid_grows_with_running_threads() {
    let storage: PerCpu<u64> = PerCpu::new();
    // One thread at a time, whatever CPU each runs on: with mm_cid they
    // all get concurrency id 0 (or a few low ids), not one slot per CPU.
    for cpu in 0..restartable::possible_cpus().min(8) {
        std::thread::spawn(move || pin(cpu)).join().unwrap();
        let storage = &storage;
        std::thread::scope(|s| {
            s.spawn(move || {
                let _ = pin(cpu);
                *storage.lock().unwrap() += 1;
            });
        });
    }
    let mut sum = 0;
    storage.for_each(|_, v| sum += *v).unwrap();
    assert_eq!(sum, restartable::possible_cpus().min(8) as u64);
    let used = storage.slots_in_use();
    println!(
        "[structures] mm_cid storage: {used} slots for {} CPUs visited one thread at a time ({})",
        restartable::possible_cpus().min(8),
        path()
    );
    if restartable::current_mm_cid().is_some() {
        // The main thread is alive too: ids 0 and 1 at most.
        assert!(used <= 2, "{used} slots allocated");
    }
}
