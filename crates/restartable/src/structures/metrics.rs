//! Feature `metrics`: [`Counter`] as the storage behind a counter of the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! A recorder hands out `metrics::Counter` handles; one built with
//! `metrics::Counter::from_arc(Arc<restartable::Counter>)` increments with
//! one critical section on the caller's CPU instead of an atomic add on a
//! word every CPU shares.
//!
//! ```
//! use std::sync::Arc;
//!
//! let requests = Arc::new(restartable::Counter::new());
//! let handle = metrics::Counter::from_arc(requests.clone());
//! handle.increment(3);
//! handle.absolute(10); // at least 10 from now on
//! handle.increment(1);
//! assert_eq!(requests.sum(), 11);
//! ```

use std::sync::{Mutex, PoisonError};

use crate::Counter;

/// Serializes `absolute`: each reads the sum and adds the difference, so
/// two at once would both add it.
static ABSOLUTE: Mutex<()> = Mutex::new(());

impl metrics::CounterFn for Counter {
    /// Adds `value` on the current CPU ([`Counter::add`]).
    fn increment(&self, value: u64) {
        self.add(value);
    }

    /// Raises the sum to at least `value` (adds the difference, if any).
    /// Concurrent increments are kept; concurrent `absolute` calls are
    /// serialized, so the sum never overshoots the largest of them.
    fn absolute(&self, value: u64) {
        let _one_at_a_time = ABSOLUTE.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.sum();
        if value > now {
            self.add(value - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn a_facade_counter_counts_exactly() {
        let storage = Arc::new(crate::Counter::new());
        let handle = metrics::Counter::from_arc(storage.clone());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        handle.increment(1);
                    }
                });
            }
        });
        assert_eq!(storage.sum(), 4000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| handle.absolute(10_000));
            }
        });
        assert_eq!(storage.sum(), 10_000);
        handle.absolute(5);
        assert_eq!(storage.sum(), 10_000);
    }
}
