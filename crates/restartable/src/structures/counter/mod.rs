//! [`Counter`]: a per-CPU statistics counter.

mod fallback;
mod section;
mod word;

use super::kit::dense::DenseSlots;
use word::SplitWord;

/// A per-CPU event counter: [`add`](Counter::add) touches only the slot of
/// the CPU the thread runs on, as an rseq critical section (no lock, no
/// atomic instruction), so threads on different CPUs never contend.
/// [`sum`](Counter::sum) adds up all slots.
///
/// Slots are cache-line separated (128 bytes each on x86-64 and aarch64),
/// one per possible CPU ([`possible_cpus`](crate::possible_cpus)), allocated
/// on the first `add`. Where rseq is unavailable (see
/// [`registration`](crate::registration)) `add` is an atomic add on the
/// current CPU's slot instead: slower, equally exact.
///
/// Arithmetic wraps modulo 2<sup>64</sup>.
///
/// ```
/// use restartable::Counter;
///
/// static REQUESTS: Counter = Counter::new();
///
/// let workers: Vec<_> = (0..4)
///     .map(|_| std::thread::spawn(|| for _ in 0..1000 { REQUESTS.inc() }))
///     .collect();
/// for w in workers {
///     w.join().unwrap();
/// }
/// assert_eq!(REQUESTS.sum(), 4000);
/// ```
///
/// The first `add` in a process allocates and may read `/sys`; do it
/// outside signal handlers (later adds are async-signal-safe).
pub struct Counter {
    slots: DenseSlots<SplitWord>,
}

impl Counter {
    /// A counter at zero. `const`, so it can initialize a `static`; no
    /// memory is allocated until the first [`add`](Counter::add).
    pub const fn new() -> Self {
        Counter {
            slots: DenseSlots::new(),
        }
    }

    /// Adds `n` to the current CPU's slot.
    #[inline]
    pub fn add(&self, n: u64) {
        section::add(self.slots.get(), n);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// The total over all CPUs: a relaxed snapshot. Adds that complete
    /// before the call (in happens-before order) are included; adds racing
    /// with it may or may not be.
    pub fn sum(&self) -> u64 {
        self.slots
            .as_slice()
            .iter()
            .fold(0u64, |acc, slot| acc.wrapping_add(slot.0.load()))
    }

    /// The value of each CPU's slot (empty before the first add).
    pub fn per_cpu(&self) -> Vec<u64> {
        self.slots
            .as_slice()
            .iter()
            .map(|slot| slot.0.load())
            .collect()
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Counter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Counter").field("sum", &self.sum()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn is_send_and_sync() {
        assert_send_sync::<Counter>();
    }

    #[test]
    fn starts_at_zero_without_allocating() {
        let c = Counter::new();
        assert_eq!(c.sum(), 0);
        assert!(c.per_cpu().is_empty());
    }

    #[test]
    fn counts_exactly_across_threads() {
        let threads = if cfg!(miri) { 3 } else { 8 };
        let per_thread = if cfg!(miri) { 50 } else { 20_000 };
        let c = Arc::new(Counter::default());
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for j in 0..per_thread {
                        if j % 2 == 0 {
                            c.inc();
                        } else {
                            c.add(i + 1);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let expected: u64 = (0..threads)
            .map(|i| per_thread / 2 + (per_thread / 2) * (i + 1))
            .sum();
        assert_eq!(c.sum(), expected);
        assert_eq!(
            c.per_cpu().iter().fold(0u64, |a, b| a.wrapping_add(*b)),
            expected
        );
        assert_eq!(c.per_cpu().len(), crate::possible_cpus());
    }

    #[test]
    fn wraps_modulo_two_to_the_64() {
        let c = Counter::new();
        c.add(u64::MAX);
        c.add(2);
        assert_eq!(c.sum(), 1);
    }
}
