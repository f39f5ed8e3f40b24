//! [`Guard`]: the guard word and its protocol, by which a thread that
//! cannot run a critical section on some per-CPU data (it has no rseq, the
//! data is another CPU's, or its sections kept aborting) gets exclusive use
//! of it anyway; [`Guarded`]: per-CPU data with its guard.
//!
//! Every section on guarded data reads the guard first (acquire) and stays
//! out unless it is 0 ([`Outcome::Guarded`](crate::section::Outcome)). A
//! thread that wants the data:
//!
//! 1. sets the guard to its *token* with a compare-exchange (so such
//!    threads exclude each other);
//! 2. fences the CPUs whose sections might be touching the data
//!    ([`fence`](crate::fence)), unless no thread of the process has ever
//!    registered rseq: sections that read the guard before it was set are
//!    then finished or aborted, and later ones see it;
//! 3. works on the data with plain code;
//! 4. clears the guard (also when that code panics).
//!
//! No system call in steady state: without rseq threads in the process,
//! step 2 is one load, and nothing blocks signals. A signal handler never
//! waits for a guard its own thread holds, because a token names its
//! thread:
//!
//! | guard word | meaning | a thread that wants the data |
//! |---|---|---|
//! | 0 | free; sections may commit | takes it |
//! | another thread's token, this fork generation | held | waits (yielding); but if the caller holds a guard in an outer frame, gets [`Refused::Busy`] at once and goes elsewhere (waiting could close a cycle through signal handlers) |
//! | the caller's own token | held by an outer frame of the caller (a nested call, or the code a signal handler interrupted) | gets [`Refused::Mine`] at once and goes elsewhere |
//! | a token of an older generation, neither the caller's nor that of the thread that called `fork` | left by a thread that does not exist in this process (copied by `fork`) | takes it over |
//!
//! Tokens name threads across forks: see [`crate::runtime::token`].

use core::cell::Cell;
use core::ops::Deref;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::fence;
use crate::runtime::registration;
pub(crate) use crate::runtime::token::{is_mine, orphaned, token, wait_for_holder};

/// Which CPUs may run sections on the guarded data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Only CPU `n` (data indexed by CPU number).
    Cpu(usize),
    /// Any CPU (data indexed by `mm_cid`, which moves between CPUs).
    AnyCpu,
}

/// Why the guard protocol did not run its closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The calling thread holds this guard already (an outer frame of it
    /// does: a nested call, or the code a signal handler interrupted).
    Mine,
    /// Another thread holds it, and the calling thread holds a guard
    /// already (an outer frame does), so waiting could close a cycle: its
    /// holder's signal handler may be waiting for the guard this thread
    /// holds. The caller goes elsewhere.
    Busy,
    /// No fence could be made; the guard was released.
    Fence(fence::FenceError),
}

/// A guard word (8 bytes, 0 when free) and its protocol, for per-CPU data
/// that critical sections also work on. Every section on the data loads the
/// word (acquire) first and leaves through an exit unless it is 0; code
/// without a section calls [`hold`](Self::hold), which takes the word,
/// fences the CPUs in [`Reach`], runs its closure and releases the word.
///
/// A `Guard` is an `AtomicU64` underneath (`repr(transparent)`), so it may
/// live inside memory the caller lays out for its sections: any 8-aligned,
/// zeroed word is a free guard.
#[repr(transparent)]
#[derive(Debug, Default)]
pub struct Guard {
    /// 0, or the token of the thread working on the data without a section.
    word: AtomicU64,
}

impl Guard {
    /// A free guard.
    pub const fn new() -> Self {
        Guard {
            word: AtomicU64::new(0),
        }
    }

    /// The word a section loads (acquire) before it touches the data.
    #[inline(always)]
    pub fn as_ptr(&self) -> *const u64 {
        self.word.as_ptr()
    }

    /// Holds the guard, fences `reach` (where any thread of the process
    /// runs sections), runs `f`, and releases the guard (also when `f`
    /// panics). Waits, yielding, while another thread of this process
    /// holds the guard, unless this thread holds a guard already; takes
    /// over one that `fork` left behind. Never blocks a signal and makes no
    /// system call but the fence; in a process where no thread runs
    /// sections, one compare-exchange and one store.
    ///
    /// # Errors
    /// [`Refused::Mine`] at once when this thread holds this guard already
    /// (an outer frame, or the code a signal handler interrupted);
    /// [`Refused::Busy`] at once when another thread holds it and this
    /// thread holds another guard (waiting could close a cycle);
    /// [`Refused::Fence`] when no fence can be made (the guard is released
    /// again).
    #[inline(always)]
    pub fn hold<R>(&self, reach: Reach, f: impl FnOnce() -> R) -> Result<R, Refused> {
        let _held = self.enter(reach)?;
        Ok(f())
    }

    /// [`hold`](Self::hold) for a fallback path, which has no other way to
    /// reach the data: while no fence can be made it waits, yielding, for
    /// one.
    ///
    /// # Errors
    /// [`Refused::Mine`] or [`Refused::Busy`], as for [`hold`](Self::hold);
    /// never [`Refused::Fence`].
    #[inline(always)]
    pub fn hold_waiting<R>(&self, reach: Reach, f: impl FnOnce() -> R) -> Result<R, Refused> {
        loop {
            match self.enter(reach) {
                Ok(_held) => return Ok(f()),
                Err(Refused::Fence(_)) => std::thread::yield_now(),
                Err(other) => return Err(other),
            }
        }
    }

    /// Holds as many of `guards` (at most 64) as it can, fences `reach`
    /// once for all of them, then for each guard `i` it holds, in order,
    /// calls `f(i)` under it, releases it, and calls `then(i, f's
    /// result)` (the rest are released when `f` or `then` panics). One
    /// fence instead of one per guard: for a sweep over many guarded
    /// caches of one CPU or `mm_cid`, whose fence (`Reach::AnyCpu`: every
    /// CPU) costs more with every CPU. `then` runs with guard `i` free
    /// (and the later ones held): where the data taken out goes.
    ///
    /// The first guard is waited for as [`hold`](Self::hold) waits; the
    /// others are never waited for (the caller holds a guard by then): one
    /// another thread holds is skipped, as is one the caller holds in an
    /// outer frame. `f` may take allocator-style locks, but the caller must
    /// not wait, while holding these guards, for anything whose holder may
    /// wait for one of them. Returns the mask of the guards it held
    /// (bit `i`: `guards[i]`); guards past the 64th are skipped (a debug
    /// build asserts there are none).
    ///
    /// # Errors
    /// [`Refused::Fence`] when no fence can be made (every guard is
    /// released again, and `f` is not called).
    pub fn hold_each<R>(
        guards: &[&Guard],
        reach: Reach,
        mut f: impl FnMut(usize) -> R,
        mut then: impl FnMut(usize, R),
    ) -> Result<u64, Refused> {
        debug_assert!(guards.len() <= 64, "hold_each takes at most 64 guards");
        let me = token();
        let mut held = HeldSet { guards, mask: 0 };
        for (i, guard) in guards.iter().enumerate().take(64) {
            let outer = HOLDING.get();
            HOLDING.set(outer + 1);
            let taken =
                match guard
                    .word
                    .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
                {
                    Ok(_) => true,
                    Err(seen) => acquire_slow(&guard.word, me, seen, outer == 0).is_ok(),
                };
            if taken {
                held.mask |= 1 << i;
            } else {
                HOLDING.set(HOLDING.get() - 1);
            }
        }
        let mask = held.mask;
        if mask == 0 {
            return Ok(0);
        }
        fence_out(reach)?;
        for i in 0..guards.len().min(64) {
            if held.mask & (1 << i) != 0 {
                let r = f(i);
                held.release(i);
                then(i, r);
            }
        }
        Ok(mask)
    }

    /// Steps 1 and 2 of the protocol; the guard is released when the
    /// returned value is dropped.
    #[inline(always)]
    fn enter(&self, reach: Reach) -> Result<Release<'_>, Refused> {
        // Counted before the guard is taken: a signal handler that runs
        // from here on knows this thread holds (or is taking) a guard.
        let outer = HOLDING.get();
        HOLDING.set(outer + 1);
        let me = token();
        // SeqCst, with the SeqCst load in `sections_in_process`: see there.
        if let Err(seen) = self
            .word
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
        {
            if let Err(refused) = acquire_slow(&self.word, me, seen, outer == 0) {
                HOLDING.set(HOLDING.get() - 1);
                return Err(refused);
            }
        }
        let held = Release(&self.word);
        fence_out(reach)?;
        Ok(held)
    }
}

/// Data of one CPU (or concurrency id) with its guard word.
#[repr(C)]
pub(crate) struct Guarded<T> {
    guard: Guard,
    data: T,
}

impl<T> Guarded<T> {
    pub(crate) const fn new(data: T) -> Self {
        Guarded {
            guard: Guard::new(),
            data,
        }
    }

    /// The guard word, for the guarded sections to check.
    #[inline(always)]
    pub(crate) fn guard_ptr(&self) -> *const u64 {
        self.guard.as_ptr()
    }

    /// [`Guard::hold`] on the data.
    ///
    /// # Errors
    /// As for [`Guard::hold`].
    #[inline(always)]
    pub(crate) fn hold<R>(&self, reach: Reach, f: impl FnOnce(&T) -> R) -> Result<R, Refused> {
        self.guard.hold(reach, || f(&self.data))
    }

    /// [`Guard::hold_waiting`] on the data.
    ///
    /// # Errors
    /// As for [`Guard::hold_waiting`].
    #[inline(always)]
    pub(crate) fn hold_waiting<R>(
        &self,
        reach: Reach,
        f: impl FnOnce(&T) -> R,
    ) -> Result<R, Refused> {
        self.guard.hold_waiting(reach, || f(&self.data))
    }
}

impl<T> Deref for Guarded<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T: Default> Default for Guarded<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

/// Step 2 of the protocol, for guards just taken: fences `reach` (where
/// any thread of the process runs sections), so that sections that read a
/// guard before it was set are finished or aborted.
#[inline(always)]
fn fence_out(reach: Reach) -> Result<(), Refused> {
    if registration::sections_in_process() {
        let fenced = match reach {
            Reach::Cpu(cpu) => fence::fence_cpu(cpu),
            Reach::AnyCpu => fence::fence_all(),
        };
        fenced.map_err(Refused::Fence)?;
    }
    // Pairs with the release commits of sections fenced out just now.
    core::sync::atomic::fence(Ordering::Acquire);
    Ok(())
}

/// The guard was held by `seen` at the first try: waits for it (only if
/// `may_wait`: this thread holds no other guard), takes it over from a
/// thread `fork` left behind, or reports that it is this thread's.
#[cold]
#[inline(never)]
fn acquire_slow(
    guard: &AtomicU64,
    mut me: u64,
    mut seen: u64,
    may_wait: bool,
) -> Result<(), Refused> {
    let mut waits = 0u32;
    loop {
        if seen == 0 {
            // Released meanwhile: try again below.
        } else if is_mine(seen) {
            return Err(Refused::Mine);
        } else if orphaned(seen) {
            match guard.compare_exchange(seen, me, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => {
                    seen = now;
                    continue;
                }
            }
        } else if !may_wait {
            return Err(Refused::Busy);
        } else {
            // Holders hold for a few instructions; the usual reason to find
            // one is that it was preempted, so give it the CPU.
            if wait_for_holder(&mut waits) {
                me = token();
                continue;
            }
        }
        match guard.compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(now) => seen = now,
        }
    }
}

/// Clears a guard when dropped, so a panic in the caller's closure cannot
/// leave data locked.
struct Release<'a>(&'a AtomicU64);

impl Drop for Release<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
        HOLDING.set(HOLDING.get() - 1);
    }
}

/// The guards [`Guard::hold_each`] holds (bit `i`: `guards[i]`); those
/// still held are released when it is dropped (after a panic, or a
/// refused fence).
struct HeldSet<'a> {
    guards: &'a [&'a Guard],
    mask: u64,
}

impl HeldSet<'_> {
    fn release(&mut self, i: usize) {
        self.guards[i].word.store(0, Ordering::Release);
        HOLDING.set(HOLDING.get() - 1);
        self.mask &= !(1 << i);
    }
}

impl Drop for HeldSet<'_> {
    fn drop(&mut self) {
        while self.mask != 0 {
            let i = self.mask.trailing_zeros() as usize;
            self.release(i);
        }
    }
}

thread_local! {
    /// Guards the calling thread holds or is taking, in all its frames. No
    /// frame waits for a guard while an outer one holds one: every wait is
    /// then for a holder that itself waits for nothing, so waits always end.
    /// (Outer frames never take a second guard while they hold one; only a
    /// signal handler, or a nested call from a `PerCpuU64` closure, can.)
    static HOLDING: Cell<u32> = const { Cell::new(0) };
}

/// True when the calling thread holds a guard (or is taking one) in an
/// outer frame: it must not wait for another thread's guard.
#[inline]
pub(crate) fn holding() -> bool {
    HOLDING.get() > 0
}

/// How long a section path waits on a set guard before it leaves for the
/// fallback path, which takes the guard itself (and so can take over one
/// that `fork` left behind).
pub(crate) const SECTION_WAITS: u32 = 256;

/// A section's view of a set guard, for the retry driver: true when the
/// section path should stop waiting and leave for the fallback path (also
/// at once when this thread holds a guard: see [`HOLDING`]).
#[inline]
pub(crate) fn section_gives_up(seen: u64, waits: u32) -> bool {
    is_mine(seen) || orphaned(seen) || holding() || waits >= SECTION_WAITS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn free(guards: &[Guard]) -> bool {
        guards.iter().all(|g| g.word.load(Ordering::Relaxed) == 0)
    }

    #[test]
    fn hold_each_visits_every_free_guard_in_order_and_releases_it() {
        let guards: Vec<Guard> = (0..5).map(|_| Guard::new()).collect();
        let refs: Vec<&Guard> = guards.iter().collect();
        let mut seen = Vec::new();
        let mut after = Vec::new();
        let mask = Guard::hold_each(
            &refs,
            Reach::AnyCpu,
            |i| {
                assert_eq!(guards[i].word.load(Ordering::Relaxed), token());
                // Guards before `i` are released already.
                assert!(free(&guards[..i]));
                seen.push(i);
                i * 10
            },
            |i, r| {
                assert_eq!(guards[i].word.load(Ordering::Relaxed), 0, "released first");
                after.push(r);
            },
        )
        .unwrap();
        assert_eq!(after, [0, 10, 20, 30, 40]);
        assert_eq!(mask, 0b11111);
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert!(free(&guards) && !holding());
    }

    #[test]
    fn hold_each_skips_guards_held_by_this_frame_or_another_thread() {
        let guards: Vec<Guard> = (0..4).map(|_| Guard::new()).collect();
        let refs: Vec<&Guard> = guards.iter().collect();
        let (taken, done) = (Barrier::new(2), Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                guards[2]
                    .hold(Reach::AnyCpu, || {
                        taken.wait();
                        done.wait();
                    })
                    .unwrap();
            });
            taken.wait();
            let mask = guards[1]
                .hold(Reach::AnyCpu, || {
                    let mut seen = Vec::new();
                    let mask = Guard::hold_each(&refs, Reach::AnyCpu, |i| seen.push(i), |_, ()| {})
                        .unwrap();
                    assert_eq!(seen, [0, 3]);
                    mask
                })
                .unwrap();
            done.wait();
            assert_eq!(mask, 0b1001, "1 is this thread's, 2 another's");
        });
        assert!(free(&guards) && !holding());
    }

    #[test]
    fn hold_each_releases_every_guard_when_its_closure_panics() {
        let guards: Vec<Guard> = (0..3).map(|_| Guard::new()).collect();
        let refs: Vec<&Guard> = guards.iter().collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Guard::hold_each(
                &refs,
                Reach::Cpu(0),
                |i| assert_ne!(i, 1, "boom"),
                |_, ()| {},
            )
            .ok()
        }));
        assert!(result.is_err());
        assert!(free(&guards) && !holding());
    }
}
