//! [`PerCpuU64`]: one `u64` per CPU, read-modify-written through critical
//! sections, with a fallback that is safe alongside them.

use core::cell::Cell;
use core::sync::atomic::{compiler_fence, AtomicU64, Ordering};

use super::kit::dense::DenseSlots;
use super::kit::guard::{Guarded, Reach, Refused};
use super::kit::retry::{self, Step};
use super::RemoteError;
use crate::section::{Index, Order};
use crate::stats::Cause;

/// One CPU's word and its guard.
type Word = Guarded<AtomicU64>;

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
/// every section checks it first (with [`compare_store_guarded`]); the
/// fallback path sets it, fences the CPU ([`fence_cpu`]) when other
/// threads run sections, updates the word with a plain load and store
/// (no other writer can reach it while the guard is set), and clears it.
/// Both paths can run at once, in any mix of threads; without rseq threads
/// in the process the fallback makes no system call.
///
/// Safe in signal handlers (once the first use allocated the words), and
/// no handler ever waits for a guard while its thread holds one: a handler
/// that interrupts its thread while that thread holds the word's guard
/// updates the word itself (unless it interrupted the store, when it goes
/// to the side word below); one whose thread holds some
/// other guard while another thread holds the word's updates a *side word*
/// instead, which [`sum`](Self::sum) includes and [`get`](Self::get) and
/// [`per_cpu`](Self::per_cpu) do not show.
///
/// [`compare_store_guarded`]: crate::section::Thread::compare_store_guarded
/// [`fence_cpu`]: crate::fence::fence_cpu
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
    slots: DenseSlots<Word>,
    /// Where an update goes that could reach no CPU's word without waiting:
    /// a signal handler (or a nested call) whose thread holds another
    /// guard while another thread holds the word's. No section touches it,
    /// so a compare-exchange alone updates it.
    side: AtomicU64,
}

impl PerCpuU64 {
    /// All words zero; `const`, so it can initialize a `static`. Memory is
    /// allocated on first use.
    pub const fn new() -> Self {
        PerCpuU64 {
            slots: DenseSlots::new(),
            side: AtomicU64::new(0),
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
    /// While `f` runs the thread holds `cpu`'s guard, much as under a lock:
    /// keep `f` short. From inside `f` (or a signal handler), updating the
    /// same word is allowed (`f` then runs again on the new value, so an
    /// `f` that updates the word on every call never finishes: make the
    /// inner update conditional); updating *other* words of a
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
        let word = self.slots.slot(cpu).ok_or(RemoteError::NoSuchCpu)?;
        match word.hold(Reach::Cpu(cpu), |value| update(value, &mut |v| Some(f(v)))) {
            Ok((old, _)) => Ok(old),
            // An outer frame of this thread holds the guard (a nested call
            // from its `f`, or the code a signal handler interrupted):
            // nothing else can write the word now, and `update` is safe
            // against that frame unless it is storing right now.
            Err(Refused::Mine) if !STORING.get() => Ok(update(word, &mut |v| Some(f(v))).0),
            Err(Refused::Mine) => Err(RemoteError::Busy),
            Err(other) => Err(super::refused(other)),
        }
    }

    /// The word of `cpu`, or `None` past [`possible_cpus`](crate::possible_cpus).
    pub fn get(&self, cpu: usize) -> Option<u64> {
        let slots = self.slots.as_slice();
        if slots.is_empty() && cpu < crate::possible_cpus() {
            return Some(0);
        }
        slots.get(cpu).map(|s| s.0.load(Ordering::Acquire))
    }

    /// The (wrapping) sum of all words, the side word included (see
    /// [`PerCpuU64`]): a relaxed snapshot.
    pub fn sum(&self) -> u64 {
        let side = self.side.load(Ordering::Relaxed);
        self.slots
            .as_slice()
            .iter()
            .fold(side, |acc, s| acc.wrapping_add(s.0.load(Ordering::Relaxed)))
    }

    /// Every CPU's word (empty before first use).
    pub fn per_cpu(&self) -> Vec<u64> {
        self.slots
            .as_slice()
            .iter()
            .map(|s| s.0.load(Ordering::Acquire))
            .collect()
    }

    /// Like `fetch_update`, but `f` may decline (`None`): returns the old
    /// value when an update was made.
    fn fetch_update_if(&self, mut f: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
        let mut declined = false;
        let done = retry::sections(Index::Cpu, |t, id| {
            let Some(word) = self.slots.slot(id.as_usize()) else {
                return Step::Leave(Cause::IdOutOfRange);
            };
            let old = word.load(Ordering::Relaxed);
            let Some(new) = f(old) else {
                declined = true;
                return Step::Done(old);
            };
            // SAFETY: the word is written only by sections on this CPU
            // (which check the guard first) and by guard holders after a
            // fence; the release commit publishes what `f`'s caller wrote.
            Step::from(unsafe {
                t.compare_store_guarded(
                    id,
                    Order::Release,
                    word.as_ptr(),
                    old,
                    new,
                    word.guard_ptr(),
                )
            })
            .map(|()| old)
        });
        match done {
            Ok(old) => (!declined).then_some(old),
            Err(cause) => self.fallback(cause, f),
        }
    }

    /// The fallback path: the guarded update of the current CPU's word.
    // Not `#[cold]`: without rseq this is the hot path; out of line
    // only, to keep the section path small.
    #[inline(never)]
    fn fallback(&self, cause: Cause, mut f: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
        let (_, len) = self.slots.get();
        let index = retry::fallback_index(cause, len);
        let word = self.slots.slot(index)?;
        let (old, updated) =
            match word.hold_waiting(Reach::Cpu(index), |value| update(value, &mut f)) {
                Ok(done) => done,
                // Held by an outer frame of this thread: see `fetch_update_on`.
                Err(Refused::Mine) if !STORING.get() => update(word, &mut f),
                // Another thread holds it while this one holds another guard:
                // waiting could deadlock, so the update goes to the side word.
                Err(_) => update_shared(&self.side, &mut f),
            };
        updated.then_some(old)
    }
}

/// The update under the guard: a load, `f`, and a store, with no atomic
/// instruction. Under the guard nothing writes the word but the frames of
/// this thread: a nested call from `f`, or a signal handler. Such a frame
/// may update the word itself while this one is not storing (`f` then runs
/// again here, on the new value: the word is read again right before the
/// store); while this one is storing it sees [`STORING`] and goes to the
/// side word instead. Returns (old value, updated).
fn update(value: &AtomicU64, f: &mut impl FnMut(u64) -> Option<u64>) -> (u64, bool) {
    loop {
        let old = value.load(Ordering::Acquire);
        let new = f(old);
        let outer = STORING.replace(true);
        // Keeps the compiler from moving the re-read and the store out of
        // the flagged window (a handler runs between two instructions).
        compiler_fence(Ordering::SeqCst);
        let unchanged = value.load(Ordering::Relaxed) == old;
        if unchanged {
            if let Some(new) = new {
                value.store(new, Ordering::Release);
            }
        }
        compiler_fence(Ordering::SeqCst);
        STORING.set(outer);
        if unchanged {
            return (old, new.is_some());
        }
    }
}

/// The update of the side word, which threads share without a guard: a
/// compare-exchange loop. Returns (old value, updated).
fn update_shared(value: &AtomicU64, f: &mut impl FnMut(u64) -> Option<u64>) -> (u64, bool) {
    let mut old = value.load(Ordering::Acquire);
    loop {
        let Some(new) = f(old) else {
            return (old, false);
        };
        match value.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return (old, true),
            Err(now) => old = now,
        }
    }
}

thread_local! {
    /// Set while a frame of this thread re-reads and stores a word it
    /// updates under the guard (see [`update`]).
    static STORING: Cell<bool> = const { Cell::new(false) };
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
