//! [`Guarded`]: per-CPU data with a guard word, and the guard protocol by
//! which a thread that cannot run a critical section on the data (it has no
//! rseq, the data is another CPU's, or its sections kept aborting) gets
//! exclusive use of it anyway.
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
//! | another thread's token, this fork generation | held | waits (yielding) |
//! | the caller's own token | held by an outer frame of the caller (a nested call, or the code a signal handler interrupted) | gets [`Mine`] at once and goes elsewhere |
//! | a token of an older generation, not the caller's | left by a thread that does not exist in this process (copied by `fork`) | takes it over |
//!
//! A token is the fork generation in the high 32 bits and a number unique
//! to the thread in the low 32. The generation moves on in every child of
//! `fork` (an atfork handler), and, for a child made without atfork
//! handlers (a raw `clone`), once a long wait finds the process id changed.

use core::cell::Cell;
use core::ops::Deref;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::fence;
use crate::runtime::{registration, sys};

/// Which CPUs may run sections on the guarded data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Only CPU `n` (data indexed by CPU number).
    Cpu(usize),
    /// Any CPU (data indexed by `mm_cid`, which moves between CPUs).
    AnyCpu,
}

/// The calling thread holds this guard already (an outer frame of it does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mine;

/// Why [`Guarded::hold`] did not run its closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The calling thread holds the guard already.
    Mine,
    /// No fence could be made; the guard was released.
    Fence(fence::FenceError),
}

/// Data of one CPU (or concurrency id) with its guard word.
#[repr(C)]
pub(crate) struct Guarded<T> {
    /// 0, or the token of the thread working on `data` without a section.
    guard: AtomicU64,
    data: T,
}

impl<T> Guarded<T> {
    pub(crate) const fn new(data: T) -> Self {
        Guarded {
            guard: AtomicU64::new(0),
            data,
        }
    }

    /// The guard word, for the guarded sections to check.
    #[inline(always)]
    pub(crate) fn guard_ptr(&self) -> *const u64 {
        self.guard.as_ptr()
    }

    /// Holds the guard, fences `reach`, runs `f` on the data, and releases
    /// the guard (also when `f` panics). Waits while another thread of this
    /// process holds the guard; takes over one that `fork` left behind.
    ///
    /// # Errors
    /// [`Refused::Mine`] at once when this thread holds the guard already;
    /// [`Refused::Fence`] when no fence can be made (the guard is
    /// released again).
    #[inline]
    pub(crate) fn hold<R>(&self, reach: Reach, f: impl FnOnce(&T) -> R) -> Result<R, Refused> {
        let _held = self.enter(reach)?;
        Ok(f(&self.data))
    }

    /// [`hold`](Self::hold) for a fallback path, which has no other way to
    /// reach the data: while no fence can be made it waits, yielding, for
    /// one.
    ///
    /// # Errors
    /// [`Mine`] when this thread holds the guard already.
    #[inline]
    pub(crate) fn hold_waiting<R>(&self, reach: Reach, f: impl FnOnce(&T) -> R) -> Result<R, Mine> {
        loop {
            match self.enter(reach) {
                Ok(_held) => return Ok(f(&self.data)),
                Err(Refused::Mine) => return Err(Mine),
                Err(Refused::Fence(_)) => std::thread::yield_now(),
            }
        }
    }

    /// Steps 1 and 2 of the protocol; the guard is released when the
    /// returned value is dropped.
    #[inline]
    fn enter(&self, reach: Reach) -> Result<Release<'_>, Refused> {
        let me = token();
        // SeqCst, with the SeqCst load in `sections_in_process`: see there.
        if let Err(seen) = self
            .guard
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
        {
            acquire_slow(&self.guard, me, seen).map_err(|Mine| Refused::Mine)?;
        }
        let held = Release(&self.guard);
        if registration::sections_in_process() {
            let fenced = match reach {
                Reach::Cpu(cpu) => fence::fence_cpu(cpu),
                Reach::AnyCpu => fence::fence_all(),
            };
            fenced.map_err(Refused::Fence)?;
        }
        // Pairs with the release commits of sections fenced out just now.
        core::sync::atomic::fence(Ordering::Acquire);
        Ok(held)
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

/// The guard was held by `seen` at the first try: waits for it, takes it
/// over from a thread `fork` left behind, or reports that it is this
/// thread's.
#[cold]
#[inline(never)]
fn acquire_slow(guard: &AtomicU64, mut me: u64, mut seen: u64) -> Result<(), Mine> {
    let mut waits = 0u32;
    loop {
        if seen == 0 {
            // Released meanwhile: try again below.
        } else if is_mine(seen) {
            return Err(Mine);
        } else if orphaned(seen) {
            match guard.compare_exchange(seen, me, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => {
                    seen = now;
                    continue;
                }
            }
        } else {
            waits = waits.wrapping_add(1);
            // A long wait may mean this process is the child of a fork that
            // ran no atfork handler (a raw clone), so the holder is gone.
            if waits.is_multiple_of(256) && refresh_pid() {
                me = token();
                continue;
            }
            // Holders hold for a few instructions; the usual reason to find
            // one is that it was preempted, so give it the CPU.
            std::thread::yield_now();
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
    }
}

/// How long a section path waits on a set guard before it leaves for the
/// fallback path, which takes the guard itself (and so can take over one
/// that `fork` left behind).
pub(crate) const SECTION_WAITS: u32 = 256;

/// Bumped in every child after `fork`: tokens of an earlier generation
/// were taken by threads that do not exist in this process (but for the
/// thread that called `fork`, which lives on as the child's first thread).
static GENERATION: AtomicU64 = AtomicU64::new(1);
static AT_FORK: std::sync::Once = std::sync::Once::new();

/// This process's id, cached (`getpid` is a system call): refreshed after
/// every fork by the atfork handler, and by [`refresh_pid`] for forks that
/// skip it.
static PID: AtomicU32 = AtomicU32::new(0);

unsafe extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    PID.store(sys::pid(), Ordering::Relaxed);
}

/// Re-reads the process id; true when it changed (and then the generation
/// moved on too, so tokens taken before belong to another process).
fn refresh_pid() -> bool {
    let now = sys::pid();
    if PID.swap(now, Ordering::Relaxed) == now {
        return false;
    }
    GENERATION.fetch_add(1, Ordering::Relaxed);
    true
}

/// The calling thread's token: the fork generation in the high 32 bits, a
/// number unique to the thread in the low 32 (never 0). Guards and the
/// lock words of [`PerCpu`](crate::PerCpu) hold it.
#[inline]
pub(crate) fn token() -> u64 {
    if !AT_FORK.is_completed() {
        first_token();
    }
    (GENERATION.load(Ordering::Relaxed) << 32) | u64::from(thread_number())
}

#[cold]
fn first_token() {
    AT_FORK.call_once(|| {
        PID.store(sys::pid(), Ordering::Relaxed);
        sys::at_fork_child(after_fork_in_child);
    });
}

/// True when `token` is the calling thread's (in any generation).
#[inline]
pub(crate) fn is_mine(token: u64) -> bool {
    token as u32 == thread_number()
}

/// True when `token` was taken by a thread that does not exist in this
/// process: another thread of the parent, before a `fork` (the thread that
/// called `fork` lives on in the child and keeps what it held).
#[inline]
pub(crate) fn orphaned(token: u64) -> bool {
    token >> 32 != GENERATION.load(Ordering::Relaxed) && !is_mine(token)
}

/// The calling thread's number, assigned on first use. 2^32 - 1 threads
/// in one process before numbers repeat.
#[inline]
fn thread_number() -> u32 {
    thread_local!(static MINE: Cell<u32> = const { Cell::new(0) });
    let mine = MINE.get();
    if mine != 0 {
        return mine;
    }
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let fresh = NEXT.fetch_add(1, Ordering::Relaxed).max(1);
    MINE.set(fresh);
    fresh
}

/// A section's view of a set guard, for the retry driver: true when the
/// section path should stop waiting and leave for the fallback path.
#[inline]
pub(crate) fn section_gives_up(seen: u64, waits: u32) -> bool {
    is_mine(seen) || orphaned(seen) || waits >= SECTION_WAITS
}
