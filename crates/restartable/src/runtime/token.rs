//! Thread tokens: the `u64` that guards and the lock words of
//! [`PerCpu`](crate::PerCpu) hold to say which thread holds them, and that
//! tell, after `fork`, which holders do not exist in the child.
//!
//! A token is the fork generation in the high 32 bits and a number unique
//! to the thread in the low 32 (never 0). The generation moves on in every
//! child of `fork` (an atfork handler), and, for a child made without
//! atfork handlers (a raw `clone`), once a long wait finds the process id
//! changed. Tokens of an older generation are orphaned, but for those of
//! the thread that called `fork`, which lives on in the child.
//!
//! Everything here is a load, a store or an atomic add, so tokens may be
//! taken in signal handlers; the one step that is not (registering the
//! atfork handler) runs in [`init`], at each thread's first use of the
//! library, with signals blocked.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::sys;

/// Bumped in every child after `fork`: tokens of an earlier generation
/// were taken by threads that do not exist in this process (but for the
/// thread that called `fork`, which lives on as the child's first thread).
static GENERATION: AtomicU64 = AtomicU64::new(1);
static AT_FORK: AtomicBool = AtomicBool::new(false);

/// The number of the thread that called the latest `fork`: it lives on in
/// the child as its first thread and keeps the guards and locks it held,
/// whatever their generation (0 before any fork).
static SURVIVOR: AtomicU32 = AtomicU32::new(0);

/// This process's id, cached (`getpid` is a system call): refreshed after
/// every fork by the atfork handler, and by [`refresh_pid`] for forks that
/// skip it.
static PID: AtomicU32 = AtomicU32::new(0);

/// Runs in the child, on the thread that called `fork`.
unsafe extern "C" fn after_fork_in_child() {
    SURVIVOR.store(thread_number(), Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Relaxed);
    PID.store(sys::pid(), Ordering::Relaxed);
}

/// Re-reads the process id; true when it changed (and then the generation
/// moved on too, so tokens taken before belong to another process). Such a
/// fork ran no atfork handler, so which thread called it is not known: the
/// calling thread is taken for it (usually it is the only thread of the
/// child), and a thread of the child that held a guard or lock across a raw
/// `clone` of its own may see it taken over.
fn refresh_pid() -> bool {
    let now = sys::pid();
    match PID.swap(now, Ordering::Relaxed) {
        // Not cached yet (no `init`): nothing to compare with.
        0 => return false,
        old if old == now => return false,
        _ => {}
    }
    SURVIVOR.store(thread_number(), Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Relaxed);
    true
}

/// Registers the atfork handler and caches the process id, once per
/// process. Called by registration, at each thread's first use of the
/// library, with signals blocked: `pthread_atfork` is no function for a
/// signal handler.
pub(crate) fn init() {
    if AT_FORK.load(Ordering::Acquire) {
        return;
    }
    if AT_FORK
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        PID.store(sys::pid(), Ordering::Relaxed);
        sys::at_fork_child(after_fork_in_child);
    }
}

/// The calling thread's token: the fork generation in the high 32 bits, a
/// number unique to the thread in the low 32 (never 0). Registration has
/// run [`init`] by the time any structure takes a token; a remote
/// operation made before any other use of the library runs it here.
#[inline]
pub(crate) fn token() -> u64 {
    if !AT_FORK.load(Ordering::Relaxed) {
        init();
    }
    (GENERATION.load(Ordering::Relaxed) << 32) | u64::from(thread_number())
}

/// True when `token` is the calling thread's (in any generation).
#[inline]
pub(crate) fn is_mine(token: u64) -> bool {
    token as u32 == thread_number()
}

/// True when `token` was taken by a thread that does not exist in this
/// process: another thread of the parent, before a `fork` (the thread that
/// called `fork` lives on in the child and keeps what it held, in every
/// generation).
#[inline]
pub(crate) fn orphaned(token: u64) -> bool {
    token >> 32 != GENERATION.load(Ordering::Relaxed)
        && !is_mine(token)
        && token as u32 != SURVIVOR.load(Ordering::Relaxed)
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

/// One round of waiting for a token's holder: yields, and every 256 rounds
/// re-reads the process id; true when it changed, so this process is the
/// child of a fork that ran no atfork handler (a raw clone) and tokens
/// taken before it are orphaned now (see [`orphaned`]).
pub(crate) fn wait_for_holder(waits: &mut u32) -> bool {
    *waits = waits.wrapping_add(1);
    if waits.is_multiple_of(256) && refresh_pid() {
        return true;
    }
    std::thread::yield_now();
    false
}
