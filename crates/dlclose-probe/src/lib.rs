//! A plugin that counts with restartable, for the dlclose test: after the
//! host unloads it, nothing of the library may still be referenced by the
//! kernel (`rseq_cs`, or a registered area in freed memory).

use restartable::{Counter, PerCpuU64};

static COUNTER: Counter = Counter::new();
static WORDS: PerCpuU64 = PerCpuU64::new();

/// Runs `n` increments through both structures; returns the counter's sum.
#[no_mangle]
pub extern "C" fn probe_bump(n: u64) -> u64 {
    for _ in 0..n {
        COUNTER.inc();
        WORDS.add(1);
    }
    COUNTER.sum()
}

/// 1 when the calling thread's operations ran as rseq critical sections.
#[no_mangle]
pub extern "C" fn probe_rseq() -> u32 {
    u32::from(restartable::registration().rseq_available())
}
