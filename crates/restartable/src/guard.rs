//! Guards: how a thread that cannot run a critical section on some per-CPU
//! data (it has no rseq, the data belongs to another CPU, or its sections
//! kept aborting) gets exclusive use of that data anyway.
//!
//! Every section on guarded data reads the data's guard word first and
//! fails unless it is 0. The thread that wants the data sets the guard
//! (a compare-exchange, so such threads exclude each other), then fences
//! every CPU whose sections might be touching the data
//! ([`fence`](crate::fence)): sections that read the guard before it was set
//! are then finished or aborted, and later ones see it and stay out. The
//! thread then works on the data with plain code and clears the guard
//! (RSEQ_NOTES §5).

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::{fence, registration, sys};

/// Which CPUs may run sections on the guarded data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Only CPU `n` (data indexed by CPU number).
    Cpu(usize),
    /// Any CPU (data indexed by `mm_cid`, which moves between CPUs).
    AnyCpu,
}

/// Holds `guard`, fences `reach`, runs `f`, and clears the guard (also when
/// `f` panics). `key` names the data (structure address, slot): when this
/// thread already holds that guard (`f` of an outer call reached the same
/// data), `f` runs at once with `true`, without taking it again.
///
/// Signals are blocked throughout, so a handler on this thread never waits
/// for a guard the thread holds. A guard copied into a child by `fork`
/// (its owner does not exist there) is taken over.
///
/// Errors, leaving the guard clear, when no fence can be made.
pub(crate) fn hold<R>(
    guard: &AtomicU64,
    key: (usize, usize),
    reach: Reach,
    f: impl FnOnce(bool) -> R,
) -> Result<R, fence::FenceError> {
    sys::with_signals_blocked(|| {
        if HELD.get() == key {
            return Ok(f(true));
        }
        acquire(guard);
        let _release = Release(guard, HELD.replace(key));
        // Without any section in the process there is nothing to fence.
        if registration::sections_in_process() {
            match reach {
                Reach::Cpu(cpu) => fence::fence_cpu(cpu)?,
                Reach::AnyCpu => fence::fence_all()?,
            }
        }
        Ok(f(false))
    })
}

/// [`hold`] for a fallback path, which has no other way to reach the data:
/// while no fence can be made it waits, yielding, for one.
pub(crate) fn hold_waiting<R>(
    guard: &AtomicU64,
    key: (usize, usize),
    reach: Reach,
    mut f: impl FnMut(bool) -> R,
) -> R {
    loop {
        match hold(guard, key, reach, &mut f) {
            Ok(r) => return r,
            Err(_) => std::thread::yield_now(),
        }
    }
}

/// A section found the guard set to `seen`. Yields and returns false to
/// wait for it, or returns true when the caller should stop waiting and
/// take the guarded path (which takes over guards `fork` left behind): the
/// holder is not in this process, or `waits` reached 256.
pub(crate) fn give_up(seen: u64, waits: &mut u32) -> bool {
    *waits += 1;
    if seen != owner_token() || *waits >= 256 {
        return true;
    }
    std::thread::yield_now();
    false
}

/// Sets `guard` to this process's token, waiting (yielding) while another
/// thread of this process holds it.
fn acquire(guard: &AtomicU64) {
    let mut me = owner_token();
    let mut waits = 0u32;
    loop {
        match guard.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return,
            // Every thread of this process stores the same token; a
            // different one was copied from another process by `fork`
            // (another generation, or, for a fork that ran no atfork
            // handlers, another pid): its owner is not here.
            Err(owner) if owner != me => {
                if guard
                    .compare_exchange(owner, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
            Err(_) => {
                waits = waits.wrapping_add(1);
                // A long wait on our own token may mean this process is the
                // child of a fork that ran no atfork handler (a raw clone):
                // then the cached pid is the parent's.
                if waits.is_multiple_of(256) && refresh_pid() {
                    me = owner_token();
                }
                std::thread::yield_now();
            }
        }
    }
}

thread_local! {
    /// The guard this thread holds: (structure address, slot), or (0, 0).
    static HELD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Bumped in every child after `fork`: guards taken in an earlier
/// generation were taken by threads that do not exist in this process.
static GENERATION: AtomicU64 = AtomicU64::new(1);
static AT_FORK: std::sync::Once = std::sync::Once::new();

/// This process's id, cached: `getpid` is a system call. Refreshed after
/// every fork by the atfork handler, and by [`refresh_pid`] for forks that
/// skip it.
static PID: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

unsafe extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    PID.store(sys::pid(), Ordering::Relaxed);
}

/// Re-reads the process id; true when it changed (and then the generation
/// moved on too, so guards taken before count as another process's).
fn refresh_pid() -> bool {
    let now = sys::pid();
    if PID.swap(now, Ordering::Relaxed) == now {
        return false;
    }
    GENERATION.fetch_add(1, Ordering::Relaxed);
    true
}

fn cached_pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = sys::pid();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// The value every thread of this process stores in a guard it takes: the
/// fork generation in the high 32 bits and the process id in the low 32. A
/// guard holding anything else was copied from another process by `fork`
/// (the generation catches PID namespaces, where a child can have its
/// parent's pid; the pid catches forks that skip atfork handlers).
fn owner_token() -> u64 {
    AT_FORK.call_once(|| sys::at_fork_child(after_fork_in_child));
    (GENERATION.load(Ordering::Relaxed) << 32) | u64::from(cached_pid())
}

/// The calling thread's lock token: the fork generation in the high 32
/// bits, a number unique to the thread in the low 32 (never 0).
pub(crate) fn thread_token() -> u64 {
    AT_FORK.call_once(|| sys::at_fork_child(after_fork_in_child));
    (GENERATION.load(Ordering::Relaxed) << 32) | u64::from(thread_number())
}

/// True when `token` is the calling thread's (in any generation).
pub(crate) fn is_mine(token: u64) -> bool {
    token as u32 == thread_number()
}

/// True when `token` was taken by a thread that does not exist in this
/// process: another thread of the parent, before a `fork` (the thread that
/// called `fork` lives on in the child and keeps what it held).
pub(crate) fn orphaned(token: u64) -> bool {
    token >> 32 != GENERATION.load(Ordering::Relaxed) && !is_mine(token)
}

fn thread_number() -> u32 {
    static NEXT: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);
    thread_local!(static MINE: Cell<u32> = const { Cell::new(0) });
    let mine = MINE.get();
    if mine != 0 {
        return mine;
    }
    // 2^32 - 1 threads in one process before numbers repeat.
    let fresh = NEXT.fetch_add(1, Ordering::Relaxed).max(1);
    MINE.set(fresh);
    fresh
}

/// Clears a guard (and restores the thread's note of what it holds) when
/// dropped, so a panic in the caller's closure cannot leave data locked.
struct Release<'a>(&'a AtomicU64, (usize, usize));

impl Drop for Release<'_> {
    fn drop(&mut self) {
        HELD.set(self.1);
        self.0.store(0, Ordering::Release);
    }
}
