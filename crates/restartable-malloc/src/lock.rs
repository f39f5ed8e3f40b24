//! [`Lock`]: the allocator's one lock, for the central lists and the span
//! lists (never on the fast path). It allocates nothing, and each thread
//! records the locks it holds or is taking (in a thread-local without a
//! destructor). A thread that holds one already never waits for another:
//! it is [`Refused`] instead, when the lock is its own (a signal handler
//! that interrupted the holder) or busy. So no cycle of waits can form, even
//! through signal handlers that allocate; the callers go elsewhere.
//!
//! | state | meaning | `lock` |
//! |---|---|---|
//! | 0 | free | takes it (one compare-exchange) |
//! | 1 | held, nobody waits | spins a little, then marks it 2 and sleeps |
//! | 2 | held, someone may sleep | sleeps on the futex until woken |
//!
//! `unlock` wakes one sleeper only when it finds 2.

use core::cell::Cell;
use core::sync::atomic::{AtomicU32, Ordering};

/// The lock was not taken: the calling thread holds it already (an outer
/// frame, or the code a signal handler interrupted), or it is busy and the
/// calling thread holds another lock, so waiting could close a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// A lock that tells a thread it holds it already.
pub struct Lock {
    state: AtomicU32,
}

impl Default for Lock {
    fn default() -> Self {
        Self::new()
    }
}

impl Lock {
    /// A free lock.
    pub const fn new() -> Lock {
        Lock {
            state: AtomicU32::new(0),
        }
    }

    /// Takes the lock, waiting for it; released when the result is dropped.
    ///
    /// # Errors
    /// [`Refused`] when this thread holds it already (or is taking it, in
    /// the frame a signal handler interrupted), when it is busy and this
    /// thread holds another lock, or when this thread holds [`MAX_HELD`].
    #[inline]
    pub fn lock(&self) -> Result<Held<'_>, Refused> {
        // Recorded before the lock is taken: a signal handler arriving from
        // here on sees that this thread is taking it.
        let outer = record(self)?;
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            if outer {
                forget(self);
                return Err(Refused);
            }
            self.lock_slow();
        }
        Ok(Held(self))
    }

    #[cold]
    fn lock_slow(&self) {
        for _ in 0..64 {
            core::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == 0
                && self
                    .state
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        while self.state.swap(2, Ordering::Acquire) != 0 {
            futex(&self.state, libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, 2);
        }
    }

    /// Releases a lock kept by [`Held::keep`] (`pthread_atfork`'s prepare
    /// handler), waking a sleeper if one may wait (in the parent).
    pub fn force_unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            futex(&self.state, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
        }
    }

    fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            futex(&self.state, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
        }
        forget(self);
    }
}

/// The lock, held; dropping it releases the lock.
#[must_use]
pub struct Held<'a>(&'a Lock);

impl Held<'_> {
    /// Keeps the lock held past this value's life (for the prepare handler
    /// of `pthread_atfork`, released by [`Lock::force_unlock`]); the thread
    /// no longer counts as its holder.
    pub fn keep(self) {
        forget(self.0);
        core::mem::forget(self);
    }
}

impl Drop for Held<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// The most locks one thread holds at once, counting the frames signal
/// handlers interrupted (the allocator nests two: a central list, then the
/// span lists).
pub const MAX_HELD: usize = 8;

thread_local! {
    /// The locks this thread holds or is taking, innermost last. Const and
    /// without a destructor: no allocation, and usable in thread-exit
    /// destructors.
    static HELD: [Cell<usize>; MAX_HELD] = const { [const { Cell::new(0) }; MAX_HELD] };
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// True when the calling thread holds (or is taking) one of these locks.
#[inline]
pub fn holding() -> bool {
    DEPTH.get() > 0
}

/// Records `lock` as being taken; says whether the thread held another.
fn record(lock: &Lock) -> Result<bool, Refused> {
    let addr = core::ptr::from_ref(lock) as usize;
    let depth = DEPTH.get();
    let held = HELD.with(|held| held[..depth].iter().any(|l| l.get() == addr));
    if held || depth == MAX_HELD {
        return Err(Refused);
    }
    // The depth first: a signal handler arriving between the two stores
    // records its own lock above this one's slot, never in it.
    DEPTH.set(depth + 1);
    HELD.with(|held| held[depth].set(addr));
    Ok(depth > 0)
}

/// Drops `lock` from this thread's record. Locks are released innermost
/// first, except by [`Held::keep`], so the search is short.
fn forget(lock: &Lock) {
    let addr = core::ptr::from_ref(lock) as usize;
    let depth = DEPTH.get();
    HELD.with(|held| {
        if let Some(at) = held[..depth].iter().rposition(|l| l.get() == addr) {
            for k in at..depth - 1 {
                held[k].set(held[k + 1].get());
            }
            held[depth - 1].set(0);
            DEPTH.set(depth - 1);
        }
    });
}

fn futex(word: &AtomicU32, op: libc::c_int, value: u32) {
    // SAFETY: FUTEX_WAIT/WAKE on a live, aligned word of ours; a null
    // timeout waits without a limit (a wake or a changed value ends it).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            value,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_excludes_and_knows_its_holder() {
        let lock = Lock::new();
        let held = lock.lock().unwrap();
        assert_eq!(lock.lock().err(), Some(Refused));
        drop(held);
        drop(lock.lock().unwrap());
    }

    #[test]
    fn a_thread_holding_a_lock_does_not_wait_for_another() {
        let (a, b) = (Lock::new(), Lock::new());
        let held_b = std::thread::scope(|s| {
            // Another thread holds `b` until told to let go.
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
            let b = &b;
            let t = s.spawn(move || {
                let _held = b.lock().unwrap();
                ready_tx.send(()).unwrap();
                rx.recv().unwrap();
            });
            ready_rx.recv().unwrap();
            let outer = a.lock().unwrap();
            let refused = b.lock().err();
            drop(outer);
            tx.send(()).unwrap();
            t.join().unwrap();
            refused
        });
        assert_eq!(held_b, Some(Refused), "busy, and this thread holds `a`");
        // Free locks are taken in any nesting.
        let _outer = a.lock().unwrap();
        drop(b.lock().unwrap());
        assert!(holding());
    }

    #[test]
    fn threads_counting_under_the_lock_lose_nothing() {
        struct Shared(Lock, core::cell::UnsafeCell<u64>);
        // SAFETY: the count is only touched under the lock.
        unsafe impl Sync for Shared {}
        let mut shared = Shared(Lock::new(), core::cell::UnsafeCell::new(0));
        let all = &shared;
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    for i in 0..20_000 {
                        let _held = all.0.lock().unwrap();
                        // SAFETY: under the lock.
                        unsafe { *all.1.get() += 1 };
                        if i % 1000 == 0 {
                            std::thread::yield_now();
                        }
                    }
                });
            }
        });
        assert_eq!(*shared.1.get_mut(), 120_000);
    }
}
