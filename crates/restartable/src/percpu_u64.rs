//! [`PerCpuU64`]: one `u64` per CPU, read-modify-written through critical
//! sections, with a fallback that is safe alongside them.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::guard::{self, Reach};
use crate::ops::MAX_ATTEMPTS;
use crate::section::{Index, Order, Outcome, Thread};
use crate::slots::Slots;
use crate::{cpu, fence, stats};

/// One CPU's word and its guard (see [`PerCpuU64`]).
#[derive(Default)]
#[repr(C)]
struct Guarded {
    value: AtomicU64,
    /// Non-zero while a fallback-path thread owns `value`.
    guard: AtomicU64,
}

/// One `u64` per possible CPU, updated by the thread running on that CPU
/// with a critical section ([`fetch_update`](Self::fetch_update),
/// [`compare_store`](Self::compare_store), [`add`](Self::add)) and read by
/// anyone ([`get`](Self::get), [`sum`](Self::sum)).
///
/// Where a seccomp profile refuses both membarrier and `sched_setaffinity`
/// while some threads use rseq and others not, no fence exists: the
/// fallback path then waits (yielding) for one, and the remote update
/// returns [`RemoteError::Fence`].
///
/// Unlike [`Counter`](crate::Counter), whose adds commute, these updates
/// depend on the value they read, so a thread that cannot run the section
/// (no rseq, or an operation aborted 16 times in a row) must stop the
/// sections of that CPU before it touches the word. Each word has a guard:
/// every section checks it first (with [`compare2_store`]); the fallback
/// path sets it, fences the CPU ([`fence::fence_cpu`]), updates the word,
/// and clears it. Both paths can run at once, in any mix of threads.
///
/// [`compare2_store`]: crate::section::Thread::compare2_store
///
/// ```
/// use restartable::PerCpuU64;
///
/// let high_water = PerCpuU64::new();
/// std::thread::scope(|s| {
///     for t in 0..4u64 {
///         let high_water = &high_water;
///         s.spawn(move || high_water.fetch_update(|v| v.max(t * 10)));
///     }
/// });
/// assert_eq!(high_water.per_cpu().into_iter().max(), Some(30));
/// ```
pub struct PerCpuU64 {
    slots: Slots<Guarded>,
}

impl PerCpuU64 {
    /// All words zero; `const`, so it can initialize a `static`. Memory is
    /// allocated on first use.
    pub const fn new() -> Self {
        PerCpuU64 {
            slots: Slots::new(),
        }
    }

    /// Replaces the current CPU's word `v` with `f(v)` and returns `v`. As
    /// with `AtomicU64::fetch_update`, `f` may run more than once (when the
    /// word changed meanwhile, also by an update made from inside `f`), so
    /// it should be a plain function of its argument.
    pub fn fetch_update(&self, mut f: impl FnMut(u64) -> u64) -> u64 {
        // `f` never declines, so an old value always comes back.
        self.fetch_update_if(|v| Some(f(v))).unwrap_or_default()
    }

    /// If the current CPU's word equals `expect`, replaces it with `new`;
    /// otherwise returns the value found there.
    pub fn compare_store(&self, expect: u64, new: u64) -> Result<(), u64> {
        let mut seen = expect;
        let old = self.fetch_update_if(|v| {
            seen = v;
            (v == expect).then_some(new)
        });
        match old {
            Some(_) => Ok(()),
            None => Err(seen),
        }
    }

    /// Adds `n` (wrapping) to the current CPU's word.
    pub fn add(&self, n: u64) {
        self.fetch_update(|v| v.wrapping_add(n));
    }

    /// Replaces the word of CPU `cpu` (any CPU, not only the current one)
    /// with `f(v)` and returns `v`. This always takes the guarded path: it
    /// sets `cpu`'s guard, fences `cpu` (a membarrier system call, or a
    /// migration), updates, and releases, so it costs microseconds. Use it
    /// for remote work: draining, rebalancing, resetting.
    ///
    /// While `f` runs the thread holds `cpu`'s guard with all signals
    /// blocked (so a handler cannot wait on it), much as under a lock: keep
    /// `f` short. From inside `f`, updating the same word is allowed (`f`
    /// then runs again on the new value); updating *other* words of a
    /// `PerCpuU64` (including a current-CPU update from a thread that has
    /// since migrated) is like taking a second lock and can deadlock against
    /// a thread doing the reverse.
    ///
    /// # Errors
    /// [`RemoteError::NoSuchCpu`] when `cpu` is not below
    /// [`possible_cpus`](crate::possible_cpus); [`RemoteError::Fence`] when
    /// no fence can be made (membarrier and `sched_setaffinity` both
    /// refused) while other threads run sections: nothing was changed.
    pub fn fetch_update_on(
        &self,
        cpu: usize,
        mut f: impl FnMut(u64) -> u64,
    ) -> Result<u64, RemoteError> {
        let (base, len) = self.slots.get();
        if cpu >= len {
            return Err(RemoteError::NoSuchCpu);
        }
        self.guarded(base, cpu, |v| Some(f(v)))
            .map(|(old, _)| old)
            .map_err(RemoteError::Fence)
    }

    /// The word of `cpu`, or `None` past [`possible_cpus`](crate::possible_cpus).
    pub fn get(&self, cpu: usize) -> Option<u64> {
        let slots = self.slots.as_slice();
        if slots.is_empty() && cpu < crate::possible_cpus() {
            return Some(0);
        }
        slots.get(cpu).map(|s| s.0.value.load(Ordering::Acquire))
    }

    /// The (wrapping) sum of all words: a relaxed snapshot.
    pub fn sum(&self) -> u64 {
        self.slots.as_slice().iter().fold(0u64, |acc, s| {
            acc.wrapping_add(s.0.value.load(Ordering::Relaxed))
        })
    }

    /// Every CPU's word (empty before first use).
    pub fn per_cpu(&self) -> Vec<u64> {
        self.slots
            .as_slice()
            .iter()
            .map(|s| s.0.value.load(Ordering::Acquire))
            .collect()
    }

    /// Like `fetch_update`, but `f` may decline (`None`): returns the old
    /// value when an update was made.
    fn fetch_update_if(&self, mut f: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
        let (base, len) = self.slots.get();
        if let Some(t) = Thread::current() {
            for _ in 0..MAX_ATTEMPTS {
                let Some(id) = t.id(Index::Cpu) else { break };
                let index = id.as_usize();
                if index >= len {
                    break;
                }
                // SAFETY: `index < len` slots live behind `base`.
                let slot = unsafe { &(*base.as_ptr().add(index)).0 };
                let old = slot.value.load(Ordering::Relaxed);
                let new = f(old)?;
                // SAFETY: as in `fetch_update`.
                let outcome = unsafe {
                    t.compare_store_guarded(
                        id,
                        Order::Release,
                        slot.value.as_ptr(),
                        old,
                        new,
                        slot.guard.as_ptr(),
                    )
                };
                match outcome {
                    Outcome::Committed(()) => return Some(old),
                    Outcome::CompareFailed { which: 1, .. } => std::thread::yield_now(),
                    Outcome::CompareFailed { .. } => {}
                    Outcome::Aborted => stats::record_abort(),
                }
            }
        }
        // With a thread handle every attempt failed (aborts, or the guard
        // held throughout); without one the thread has no rseq.
        let exhausted = Thread::current().is_some();
        let (old, updated) = self.fallback(base, len, exhausted, f);
        updated.then_some(old)
    }

    /// The fallback path: the guarded update of the current CPU's word. If
    /// no fence can be made, the thread yields and the caller tries again
    /// (a process that forbids both fences while mixing paths waits here).
    #[cold]
    fn fallback(
        &self,
        base: core::ptr::NonNull<crate::slots::Padded<Guarded>>,
        len: usize,
        exhausted: bool,
        mut f: impl FnMut(u64) -> Option<u64>,
    ) -> (u64, bool) {
        stats::record_fallback(exhausted);
        let index = cpu::fold(cpu::raw_cpu(), len);
        // SAFETY: `index` was folded below the slot count.
        let slot = unsafe { &(*base.as_ptr().add(index)).0 };
        let key = (self as *const Self as usize, index);
        guard::hold_waiting(&slot.guard, key, Reach::Cpu(index), |_| {
            update(slot, &mut f)
        })
    }

    /// Owns word `index` through its guard ([`guard::hold`]), updates it
    /// and releases it. Returns (old value, updated).
    fn guarded(
        &self,
        base: core::ptr::NonNull<crate::slots::Padded<Guarded>>,
        index: usize,
        mut f: impl FnMut(u64) -> Option<u64>,
    ) -> Result<(u64, bool), fence::FenceError> {
        // SAFETY: callers pass `index` below the slot count.
        let slot = unsafe { &(*base.as_ptr().add(index)).0 };
        let key = (self as *const Self as usize, index);
        guard::hold(&slot.guard, key, Reach::Cpu(index), |_| {
            update(slot, &mut f)
        })
    }
}

/// The update under the guard, like a compare-exchange loop: if `f` itself
/// updated this word (a nested call, which finds the guard held by its own
/// thread), its result is stale and `f` runs again. Returns (old value,
/// updated).
fn update(slot: &Guarded, f: &mut impl FnMut(u64) -> Option<u64>) -> (u64, bool) {
    loop {
        let old = slot.value.load(Ordering::Acquire);
        let new = f(old);
        if slot.value.load(Ordering::Acquire) != old {
            continue;
        }
        if let Some(new) = new {
            slot.value.store(new, Ordering::Release);
        }
        return (old, new.is_some());
    }
}

/// Why an operation on another CPU's data (or a slot chosen by index) could
/// not be done: [`PerCpuU64::fetch_update_on`], [`PerCpu::lock_slot`],
/// [`Stack::pop_all_on`], [`Pool::flush`], [`Buffer::drain`] and the like.
///
/// [`PerCpu::lock_slot`]: crate::PerCpu::lock_slot
/// [`Stack::pop_all_on`]: crate::Stack::pop_all_on
/// [`Pool::flush`]: crate::Pool::flush
/// [`Buffer::drain`]: crate::Buffer::drain
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemoteError {
    /// The CPU is not below [`possible_cpus`](crate::possible_cpus).
    NoSuchCpu,
    /// No fence could be made; nothing was changed.
    Fence(fence::FenceError),
    /// The calling thread already holds this slot (a nested call).
    Busy,
}

impl core::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RemoteError::NoSuchCpu => f.write_str("no such CPU"),
            RemoteError::Fence(e) => e.fmt(f),
            RemoteError::Busy => f.write_str("this thread already holds that slot"),
        }
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RemoteError::Fence(e) => Some(e),
            _ => None,
        }
    }
}

impl Default for PerCpuU64 {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for PerCpuU64 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpuU64")
            .field("per_cpu", &self.per_cpu())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_exact_across_threads() {
        let threads = if cfg!(miri) { 3 } else { 8 };
        let per_thread = if cfg!(miri) { 30 } else { 20_000 };
        let words = PerCpuU64::new();
        std::thread::scope(|s| {
            for i in 0..threads {
                let words = &words;
                s.spawn(move || {
                    for j in 0..per_thread {
                        match j % 3 {
                            0 => words.add(1),
                            1 => {
                                words.fetch_update(|v| v + 1);
                            }
                            _ => loop {
                                let cpu = crate::current_cpu();
                                let v = words.get(cpu).unwrap();
                                // May race with a migration: retry until
                                // one compare_store lands.
                                if words.compare_store(v, v + 1).is_ok() {
                                    break;
                                }
                            },
                        }
                    }
                    let _ = i;
                });
            }
        });
        assert_eq!(words.sum(), threads * per_thread);
    }

    #[test]
    fn a_panicking_closure_releases_the_guard() {
        let words = PerCpuU64::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = words.fetch_update_on(0, |_| panic!("closure panics"));
        }));
        assert!(r.is_err());
        // The word is usable again, locally and remotely.
        words.add(1);
        let before = words.get(0).unwrap();
        assert_eq!(words.fetch_update_on(0, |v| v + 1), Ok(before));
        assert_eq!(words.sum(), 2);
        assert_eq!(
            words.fetch_update_on(usize::MAX, |v| v),
            Err(RemoteError::NoSuchCpu)
        );
    }

    #[test]
    fn an_update_from_inside_the_closure_is_not_lost() {
        let words = PerCpuU64::new();
        let mut nested = false;
        let old = words
            .fetch_update_on(0, |v| {
                if !nested {
                    nested = true;
                    // Same word, from inside: applied, then the outer
                    // closure runs again on the new value.
                    words.fetch_update_on(0, |w| w + 5).unwrap();
                }
                v + 1
            })
            .unwrap();
        assert_eq!(old, 5);
        assert_eq!(words.get(0), Some(6));
    }

    #[test]
    fn compare_store_reports_the_value_seen() {
        let words = PerCpuU64::new();
        words.add(5);
        // A single thread stays on one CPU long enough most of the time;
        // accept either outcome but check its content.
        match words.compare_store(7, 9) {
            Ok(()) => panic!("no word holds 7"),
            Err(seen) => assert!(seen == 5 || seen == 0),
        }
        assert_eq!(words.sum(), 5);
    }
}
