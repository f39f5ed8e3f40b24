//! [`PerCpu`]: per-CPU storage for any `T`, reached through the per-CPU
//! lock.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::guard::{self, Reach};
use crate::ops::MAX_ATTEMPTS;
use crate::section::{Index, Order, Outcome, Thread};
use crate::table::Table;
use crate::{cpu, stats, RemoteError};

/// One slot: the value, its lock and its guard.
struct Slot<T> {
    /// 0 when free, else the holder's [`guard::thread_token`]. Taken by a
    /// critical section (compare 0, commit the token) or, by threads that
    /// cannot run one there, with a compare-exchange under the guard.
    lock: AtomicU64,
    /// Set by a thread taking the lock without a section (see
    /// [`guard`](crate::guard)).
    guard: AtomicU64,
    value: UnsafeCell<T>,
}

/// Per-CPU storage: one `T` per CPU, or per concurrency id (`mm_cid`), each
/// on cache lines of its own, reached through the *per-CPU lock*.
///
/// [`lock`](Self::lock) takes the slot of the CPU the thread runs on with
/// one critical section (a compare-store of the lock word, checked against
/// the slot's guard) and returns a guard that releases it with a plain
/// store: no atomic instruction on the way in or out. The lock is almost
/// never contended, since only threads running on that CPU take it; it
/// exists for updates too large for one commit (several fields, a
/// collection, a histogram). The thread may be preempted or migrate while it
/// holds the lock; the update stays consistent.
///
/// Slots are indexed by `mm_cid` where the kernel provides it (Linux 6.3+;
/// [`new`](Self::new)), so memory grows with the threads that run at once,
/// not with the size of the machine; [`new_by_cpu`](Self::new_by_cpu) indexes
/// by CPU number instead. A slot is allocated (and its `T` made) the first
/// time a thread uses its index. Aggregate with [`for_each`](Self::for_each)
/// (locking each slot in turn, from any thread) or
/// [`iter_mut`](Self::iter_mut) (with `&mut self`).
///
/// Threads without rseq (or whose section keeps aborting) take the slot of
/// their CPU with the guard protocol instead: set the guard, fence the CPUs
/// that could be running a section on the slot, compare-exchange the lock,
/// clear the guard. That costs a system call (microseconds) while other
/// threads use rseq, and nothing extra in a process where none does.
///
/// ```
/// use restartable::PerCpu;
///
/// #[derive(Default)]
/// struct Latency { count: u64, total_ns: u64, max_ns: u64 }
///
/// let stats: PerCpu<Latency> = PerCpu::new();
/// std::thread::scope(|s| {
///     for t in 1..=4u64 {
///         let stats = &stats;
///         s.spawn(move || {
///             let mut slot = stats.lock();
///             slot.count += 1;
///             slot.total_ns += 100 * t;
///             slot.max_ns = slot.max_ns.max(100 * t);
///         });
///     }
/// });
/// let (mut count, mut total) = (0, 0);
/// stats.for_each(|_, l| { count += l.count; total += l.total_ns; }).unwrap();
/// assert_eq!((count, total), (4, 1000));
/// ```
///
/// # Nesting, signal handlers, fork
/// A thread that calls `lock` again while holding a slot of the same
/// structure gets another slot, waiting for one if none is free; two
/// threads doing that at once can deadlock, as with any two locks.
/// [`try_lock`](Self::try_lock) never waits and never allocates: use it in
/// signal handlers (`lock` allocates a slot on its first use). After `fork`, a slot another thread held at the time is
/// taken over by the child as it was, possibly mid-update (a `Mutex` would
/// stay locked forever instead).
pub struct PerCpu<T> {
    slots: Table<Slot<T>>,
    init: fn() -> T,
    by: Index,
}

/// The per-CPU lock, held: derefs to the slot's `T`; dropping it releases
/// the lock. Not `Send`: the thread that took the lock releases it.
#[must_use = "the lock is released when the guard is dropped"]
pub struct PerCpuGuard<'a, T> {
    slot: &'a Slot<T>,
    index: usize,
    _not_send: PhantomData<*const ()>,
}

impl<T: Default> PerCpu<T> {
    /// Slots indexed by `mm_cid` where available (else by CPU), each
    /// starting as `T::default()`. Allocates nothing until first use.
    pub const fn new() -> Self {
        Self::with_init(T::default)
    }

    /// Slots indexed by CPU number, each starting as `T::default()`. A
    /// remote lock ([`lock_slot`](Self::lock_slot), [`for_each`](Self::for_each))
    /// then fences one CPU instead of all of them.
    pub const fn new_by_cpu() -> Self {
        PerCpu {
            slots: Table::new(),
            init: T::default,
            by: Index::Cpu,
        }
    }
}

impl<T> PerCpu<T> {
    /// Slots indexed by `mm_cid` where available (else by CPU), each
    /// starting as `init()`.
    pub const fn with_init(init: fn() -> T) -> Self {
        PerCpu {
            slots: Table::new(),
            init,
            by: Index::MmCid,
        }
    }

    /// The kind of id slots are indexed by: [`Index::MmCid`] (falling back
    /// to the CPU number on kernels without `mm_cid`) or [`Index::Cpu`].
    pub fn index(&self) -> Index {
        self.by
    }

    /// The number of slot indices: [`possible_cpus`](crate::possible_cpus).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slots allocated so far: one for each index some thread used.
    pub fn slots_in_use(&self) -> usize {
        self.slots.iter().count()
    }

    /// False: there is always at least one slot index.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Locks the current CPU's (or concurrency id's) slot: one critical
    /// section, waiting while another thread holds it (one preempted while
    /// holding it, or one that migrated away). If this thread holds that
    /// slot already (a nested call, or a signal handler that interrupted
    /// the holder), it takes another slot, waiting for one if none is free.
    ///
    /// Like any lock: do not block while holding it (waiters spin, yielding
    /// the CPU), and do not nest it on two threads at once, which can
    /// deadlock as two locks taken in opposite orders do (use
    /// [`try_lock`](Self::try_lock) where that could happen, in signal
    /// handlers for instance).
    ///
    /// # Panics
    /// When the calling thread already holds every slot (nested `lock`
    /// calls as deep as [`len`](Self::len)).
    pub fn lock(&self) -> PerCpuGuard<'_, T> {
        if let Some(t) = Thread::current() {
            if let Local::Got(guard) = self.lock_local(&t, true) {
                return guard;
            }
        }
        self.lock_fallback(true)
            .unwrap_or_else(|| panic!("PerCpu::lock: this thread already holds every slot"))
    }

    /// Locks the current CPU's slot, or another free slot, without ever
    /// waiting for a lock another thread (or this one) holds, and without
    /// allocating: it only uses slots that exist already (some thread used
    /// them with [`lock`](Self::lock)). `None` when every such slot is
    /// locked, when none exists yet, or when no fence can be made to reach
    /// the others. Fit for signal handlers.
    pub fn try_lock(&self) -> Option<PerCpuGuard<'_, T>> {
        if let Some(t) = Thread::current() {
            if let Local::Got(guard) = self.lock_local(&t, false) {
                return Some(guard);
            }
        }
        self.lock_fallback(false)
    }

    /// Runs `f` on the current CPU's slot under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.lock())
    }

    /// Locks slot `index` from any thread (the guard protocol: a fence,
    /// microseconds), waiting while another thread holds it.
    ///
    /// # Errors
    /// [`RemoteError::NoSuchCpu`] when `index` is not below
    /// [`len`](Self::len); [`RemoteError::Busy`] when this thread holds that
    /// slot already; [`RemoteError::Fence`] when no fence can be made
    /// (seccomp refusing membarrier and `sched_setaffinity`).
    pub fn lock_slot(&self, index: usize) -> Result<PerCpuGuard<'_, T>, RemoteError> {
        let slot = self
            .slots
            .get_or_init(index, || self.fresh())
            .ok_or(RemoteError::NoSuchCpu)?;
        match self.lock_guarded(slot, index, true) {
            Ok(Taken::Got(guard)) => Ok(guard),
            // This thread holds it already: a second guard would alias.
            Ok(_) => Err(RemoteError::Busy),
            Err(e) => Err(RemoteError::Fence(e)),
        }
    }

    /// Runs `f(index, value)` on every slot that exists, locking each in
    /// turn (slots no thread has used are skipped: they hold `init()`).
    ///
    /// # Errors
    /// As [`lock_slot`](Self::lock_slot); slots before the failing one were
    /// visited.
    pub fn for_each(&self, mut f: impl FnMut(usize, &mut T)) -> Result<(), RemoteError> {
        for (index, _) in self.slots.iter() {
            let mut guard = self.lock_slot(index)?;
            f(index, &mut guard);
        }
        Ok(())
    }

    /// A copy of every slot that exists, with its index, each cloned under
    /// its lock (see [`for_each`](Self::for_each)).
    ///
    /// # Errors
    /// As [`lock_slot`](Self::lock_slot).
    pub fn snapshot(&self) -> Result<Vec<(usize, T)>, RemoteError>
    where
        T: Clone,
    {
        let mut copies = Vec::new();
        self.for_each(|index, value| copies.push((index, value.clone())))?;
        Ok(copies)
    }

    /// Every slot that exists, with its index, without locking (`&mut self`
    /// proves no thread holds one).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.slots.iter_mut().map(|(i, s)| (i, s.value.get_mut()))
    }

    fn fresh(&self) -> Slot<T> {
        Slot {
            lock: AtomicU64::new(0),
            guard: AtomicU64::new(0),
            value: UnsafeCell::new((self.init)()),
        }
    }

    /// Slot `index`, created if `create` (else only if it exists: no
    /// allocation, for `try_lock`).
    fn slot(&self, index: usize, create: bool) -> Option<&Slot<T>> {
        match create {
            true => self.slots.get_or_init(index, || self.fresh()),
            false => self.slots.get(index),
        }
    }

    fn reach(&self, index: usize) -> Reach {
        match self.by {
            Index::Cpu => Reach::Cpu(index),
            // An mm_cid moves between CPUs: a section on the slot may run
            // on any of them.
            Index::MmCid => Reach::AnyCpu,
        }
    }

    /// The section path: the lock, or why not (the caller then takes the
    /// guarded path). With `wait`, a slot held by another thread is waited
    /// for.
    #[inline]
    fn lock_local(&self, t: &Thread, wait: bool) -> Local<'_, T> {
        let me = guard::thread_token();
        let (mut aborts, mut waits) = (0, 0);
        loop {
            let id = match self.by {
                Index::MmCid => t.id(Index::MmCid).or_else(|| t.id(Index::Cpu)),
                Index::Cpu => t.id(Index::Cpu),
            };
            let Some(id) = id else { return Local::GiveUp };
            let index = id.as_usize();
            let Some(slot) = self.slot(index, wait) else {
                return Local::GiveUp;
            };
            // SAFETY: the lock word of this slot is written only by sections
            // indexed like this one (they check the guard first), by threads
            // holding the guard after a fence, and by the holder's release.
            let outcome = unsafe {
                t.compare_store_guarded(
                    id,
                    Order::Relaxed,
                    slot.lock.as_ptr(),
                    0,
                    me,
                    slot.guard.as_ptr(),
                )
            };
            match outcome {
                Outcome::Committed(()) => {
                    // Pairs with the previous holder's release store.
                    fence(Ordering::Acquire);
                    return Local::Got(PerCpuGuard::new(slot, index));
                }
                Outcome::Aborted => {
                    stats::record_abort();
                    aborts += 1;
                    if aborts >= MAX_ATTEMPTS {
                        return Local::GiveUp;
                    }
                }
                // This thread holds this slot (a nested call), or a thread
                // that no longer exists (fork) does: the guarded path.
                Outcome::CompareFailed { which: 0, seen }
                    if guard::is_mine(seen) || guard::orphaned(seen) =>
                {
                    return Local::GiveUp
                }
                // Held by another thread: it will be released.
                Outcome::CompareFailed { which: 0, .. } if !wait => return Local::GiveUp,
                // Guarded for a moment (or by a thread `fork` left behind).
                Outcome::CompareFailed { which: 1, seen } => {
                    if guard::give_up(seen, &mut waits) {
                        return Local::GiveUp;
                    }
                }
                // Held: wait.
                Outcome::CompareFailed { .. } => std::thread::yield_now(),
            }
        }
    }

    /// The guarded path: first any free slot, starting with the current
    /// CPU's, then (with `wait`) the first slot this thread does not hold,
    /// waiting for it. `None` when nothing could be taken (without `wait`),
    /// or when this thread holds every slot.
    #[cold]
    fn lock_fallback(&self, wait: bool) -> Option<PerCpuGuard<'_, T>> {
        stats::record_fallback(Thread::current().is_some());
        let len = self.slots.len();
        let start = cpu::fold(cpu::raw_cpu(), len);
        loop {
            let mut waitable = None;
            for index in (start..len).chain(0..start) {
                let Some(slot) = self.slot(index, wait) else {
                    continue;
                };
                match self.lock_guarded(slot, index, false) {
                    Ok(Taken::Got(guard)) => return Some(guard),
                    Ok(Taken::Mine) => {}
                    Ok(Taken::Busy) | Err(_) => {
                        waitable.get_or_insert((index, slot));
                    }
                }
            }
            if !wait {
                return None;
            }
            // Every slot is locked: wait for one this thread does not hold.
            let (index, slot) = waitable?;
            match self.lock_guarded(slot, index, true) {
                Ok(Taken::Got(guard)) => return Some(guard),
                // Released and retaken meanwhile, or no fence right now
                // (documented on the type): look again.
                Ok(_) | Err(_) => std::thread::yield_now(),
            }
        }
    }

    /// Takes `slot`'s lock under its guard; with `wait`, waits while
    /// another thread holds it.
    fn lock_guarded<'a>(
        &'a self,
        slot: &'a Slot<T>,
        index: usize,
        wait: bool,
    ) -> Result<Taken<'a, T>, crate::fence::FenceError> {
        let key = (self as *const Self as usize, index);
        let me = guard::thread_token();
        loop {
            let taken = guard::hold(&slot.guard, key, self.reach(index), |_| {
                let seen = slot.lock.load(Ordering::Relaxed);
                if seen != 0 && guard::is_mine(seen) {
                    return Err(true);
                }
                // Sections are fenced out: only holders' releases race us.
                let free = if guard::orphaned(seen) { seen } else { 0 };
                slot.lock
                    .compare_exchange(free, me, Ordering::Acquire, Ordering::Relaxed)
                    .map(|_| ())
                    .map_err(|_| false)
            })?;
            match taken {
                Ok(()) => return Ok(Taken::Got(PerCpuGuard::new(slot, index))),
                Err(true) => return Ok(Taken::Mine),
                Err(false) if !wait => return Ok(Taken::Busy),
                Err(false) => std::thread::yield_now(),
            }
        }
    }
}

/// What the section path got.
enum Local<'a, T> {
    Got(PerCpuGuard<'a, T>),
    /// Take the guarded path (no id, aborts, held by this thread or by an
    /// orphan, or held and not waiting).
    GiveUp,
}

/// What the guarded path found.
enum Taken<'a, T> {
    Got(PerCpuGuard<'a, T>),
    /// This thread holds the slot.
    Mine,
    /// Another thread holds it.
    Busy,
}

impl<'a, T> PerCpuGuard<'a, T> {
    fn new(slot: &'a Slot<T>, index: usize) -> Self {
        PerCpuGuard {
            slot,
            index,
            _not_send: PhantomData,
        }
    }

    /// The index of the slot held (a CPU number or a concurrency id).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl<T> Deref for PerCpuGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held, so no other reference to the value
        // exists.
        unsafe { &*self.slot.value.get() }
    }
}

impl<T> DerefMut for PerCpuGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this one unique.
        unsafe { &mut *self.slot.value.get() }
    }
}

impl<T> Drop for PerCpuGuard<'_, T> {
    fn drop(&mut self) {
        // A plain store-release: sections compare the word, guarded takers
        // compare-exchange it; neither can slip between.
        self.slot.lock.store(0, Ordering::Release);
    }
}

impl<T: Default> Default for PerCpu<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> core::fmt::Debug for PerCpu<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpu")
            .field("index", &self.by)
            .field("slots_in_use", &self.slots_in_use())
            .finish()
    }
}

// SAFETY: a `T` is reached only under its slot's lock, from one thread at a
// time, so sharing the structure needs only `T: Send` (like a Mutex).
unsafe impl<T: Send> Sync for PerCpu<T> {}
// SAFETY: moving the structure moves the `T`s it owns.
unsafe impl<T: Send> Send for PerCpu<T> {}
// SAFETY: the guard hands out `&T` to the thread holding it; sharing the
// guard shares `&T`.
unsafe impl<T: Sync> Sync for PerCpuGuard<'_, T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Pair {
        a: u64,
        b: u64,
    }

    #[test]
    fn locked_updates_are_exact_and_consistent() {
        let threads = if cfg!(miri) { 3 } else { 8 };
        let per_thread = if cfg!(miri) { 20 } else { 20_000 };
        for storage in [PerCpu::<Pair>::new(), PerCpu::<Pair>::new_by_cpu()] {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| {
                        for _ in 0..per_thread {
                            let mut p = storage.lock();
                            assert_eq!(p.a, p.b, "torn update seen under the lock");
                            p.a += 1;
                            std::hint::spin_loop();
                            p.b += 1;
                        }
                    });
                }
                s.spawn(|| {
                    // A remote walker takes slots under the workers, many
                    // times: without the fence its lock would race theirs.
                    for _ in 0..if cfg!(miri) { 2 } else { 3000 } {
                        storage
                            .for_each(|_, p| assert_eq!(p.a, p.b, "torn update seen remotely"))
                            .unwrap();
                    }
                });
                // And one thread without rseq takes the guarded path.
                s.spawn(|| {
                    crate::opt_out_current_thread();
                    for _ in 0..per_thread {
                        let mut p = storage.lock();
                        assert_eq!(p.a, p.b, "torn update seen on the fallback path");
                        p.a += 1;
                        p.b += 1;
                    }
                });
            });
            let mut storage = storage;
            let total: u64 = storage.iter_mut().map(|(_, p)| p.a).sum();
            assert_eq!(total, (threads + 1) * per_thread);
        }
    }

    #[test]
    fn nested_locks_take_other_slots() {
        let storage: PerCpu<u64> = PerCpu::new();
        let len = storage.len();
        let mut held = Vec::new();
        for _ in 0..len.min(4) {
            let g = storage.lock();
            assert!(held
                .iter()
                .all(|h: &PerCpuGuard<'_, u64>| h.index() != g.index()));
            held.push(g);
        }
        if let Some(first) = held.first() {
            assert_eq!(
                storage.lock_slot(first.index()).err(),
                Some(RemoteError::Busy)
            );
        }
        drop(held);
        *storage.lock() += 1;
        assert_eq!(storage.lock_slot(len).err(), Some(RemoteError::NoSuchCpu));
        let total: u64 = storage.snapshot().unwrap().iter().map(|(_, v)| v).sum();
        assert_eq!(total, 1);
    }

    #[test]
    fn try_lock_never_waits() {
        let storage: PerCpu<u64> = PerCpu::new_by_cpu();
        // No slot exists yet, and try_lock does not allocate one.
        assert!(storage.try_lock().is_none());
        for index in 0..storage.len() {
            drop(storage.lock_slot(index).unwrap());
        }
        let mut held = Vec::new();
        // Nested try_locks take free slots until there are none.
        while let Some(g) = storage.try_lock() {
            assert!(held
                .iter()
                .all(|h: &PerCpuGuard<'_, u64>| h.index() != g.index()));
            held.push(g);
            assert!(held.len() <= storage.len());
        }
        assert_eq!(held.len(), storage.len());
        // Another thread finds every slot locked, and does not wait.
        std::thread::scope(|s| {
            s.spawn(|| assert!(storage.try_lock().is_none()));
        });
        drop(held);
        assert!(storage.try_lock().is_some());
    }

    #[test]
    fn a_panic_under_the_lock_releases_it() {
        let storage: PerCpu<u64> = PerCpu::new_by_cpu();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            storage.with(|_| panic!("inside the lock"));
        }));
        assert!(r.is_err());
        storage.with(|v| *v += 1);
        let mut sum = 0;
        storage.for_each(|_, v| sum += *v).unwrap();
        assert_eq!(sum, 1);
    }
}
