//! [`PerCpu`]: per-CPU storage for any `T`, reached through the per-CPU
//! lock.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

use super::kit::guard::{self, Guarded, Reach, Refused};
use super::kit::retry::{self, Step};
use super::kit::sparse::SparseSlots;
use super::RemoteError;
use crate::fence::FenceError;
use crate::runtime::registration;
use crate::section::{Index, Order, Outcome, Thread};
use crate::stats::Cause;

/// One slot: the lock word, the poison mark and the value.
struct Slot<T> {
    /// 0 when free, else the holder's [`guard::token`]. Taken by a critical
    /// section (compare 0, commit the token) or, by threads that cannot run
    /// one there, with a compare-exchange under the slot's guard.
    lock: AtomicU64,
    /// Set when a holder panicked, or when the slot was taken over from a
    /// thread that does not exist in this process (`fork`).
    poisoned: AtomicBool,
    value: UnsafeCell<T>,
}

impl<T> Slot<T> {
    const fn new(value: T, lock: u64) -> Self {
        Slot {
            lock: AtomicU64::new(lock),
            poisoned: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }
}

/// A slot indexed by CPU (or `mm_cid`), which sections reach: guarded.
type Indexed<T> = Guarded<Slot<T>>;

/// A slot past the indexed ones, made for a thread that already holds
/// every slot it could take (nested locks). No section reaches it, so it is
/// taken with a compare-exchange alone. Spares form a list that only grows,
/// freed with the structure.
struct Spare<T> {
    slot: Slot<T>,
    index: usize,
    next: *const Spare<T>,
}

const UNDECIDED: u8 = 0;
const BY_CPU: u8 = 1;
const BY_MM_CID: u8 = 2;

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
/// Threads without rseq (or whose section keeps aborting) take a slot with
/// the guard protocol instead: set the slot's guard, compare-exchange the
/// lock word, clear the guard. No system call in a process where no thread
/// uses rseq; a fence (a system call) while other threads run sections.
///
/// ```
/// use restartable::PerCpu;
///
/// #[derive(Default)]
/// struct Latency { count: u64, total_ns: u64, max_ns: u64 }
///
/// static STATS: PerCpu<Latency> = PerCpu::new();
///
/// std::thread::scope(|s| {
///     for t in 1..=4u64 {
///         s.spawn(move || {
///             let mut slot = STATS.lock().unwrap();
///             slot.count += 1;
///             slot.total_ns += 100 * t;
///             slot.max_ns = slot.max_ns.max(100 * t);
///         });
///     }
/// });
/// let (mut count, mut total) = (0, 0);
/// STATS.for_each(|_, l| { count += l.count; total += l.total_ns; }).unwrap();
/// assert_eq!((count, total), (4, 1000));
/// ```
///
/// # Poisoning
/// As with [`std::sync::Mutex`], a slot whose holder panicked is marked
/// *poisoned*, and so is a slot taken over after `fork` from a thread that
/// does not exist in the child (it may have been mid-update). Locking it
/// returns [`PoisonError`], which still gives the guard
/// ([`PoisonError::into_inner`]); [`PerCpuGuard::clear_poison`] removes the
/// mark once the value is repaired.
///
/// # Nesting, signal handlers, fork
/// A thread that calls `lock` again while holding a slot of the same
/// structure gets another slot: a free one if there is one, else it waits
/// for one that another thread holds, else (when it holds them all) a
/// spare slot is made, so nesting never fails. Two threads nesting at once
/// can deadlock, as with any two locks. [`try_lock`](Self::try_lock) never
/// waits and never allocates: use it in signal handlers (`lock` may
/// allocate). After `fork`, the child takes over slots that other threads
/// of the parent held, poisoned.
pub struct PerCpu<T, F = fn() -> T> {
    slots: SparseSlots<Indexed<T>>,
    /// The spare slots, newest first.
    spares: AtomicPtr<Spare<T>>,
    spare_count: AtomicUsize,
    init: F,
    /// The index asked for.
    by: Index,
    /// The index the sections use, decided by the first thread with rseq
    /// (`mm_cid` where the kernel provides it): every section on the slots
    /// compares the same kind of id.
    kind: AtomicU8,
}

/// The per-CPU lock, held: derefs to the slot's `T`; dropping it releases
/// the lock (marking the slot poisoned if the thread is panicking). Not
/// `Send`: the thread that took the lock releases it.
#[must_use = "the lock is released when the guard is dropped"]
pub struct PerCpuGuard<'a, T> {
    slot: &'a Slot<T>,
    index: usize,
    _not_send: PhantomData<*const ()>,
}

impl<T: Default> PerCpu<T> {
    /// Slots indexed by `mm_cid` where available (else by CPU), each
    /// starting as `T::default()`. `const`; allocates nothing until first
    /// use.
    pub const fn new() -> Self {
        Self::with_init(T::default)
    }

    /// Slots indexed by CPU number, each starting as `T::default()`. A
    /// remote lock ([`lock_slot`](Self::lock_slot), [`for_each`](Self::for_each))
    /// then fences one CPU instead of all of them.
    pub const fn new_by_cpu() -> Self {
        Self::with_init_by_cpu(T::default)
    }
}

impl<T, F: Fn() -> T> PerCpu<T, F> {
    /// Slots indexed by `mm_cid` where available (else by CPU), each
    /// starting as `init()` (any closure).
    pub const fn with_init(init: F) -> Self {
        Self::build(init, Index::MmCid)
    }

    /// Slots indexed by CPU number, each starting as `init()`.
    pub const fn with_init_by_cpu(init: F) -> Self {
        Self::build(init, Index::Cpu)
    }

    const fn build(init: F, by: Index) -> Self {
        PerCpu {
            slots: SparseSlots::new(),
            spares: AtomicPtr::new(core::ptr::null_mut()),
            spare_count: AtomicUsize::new(0),
            init,
            by,
            kind: AtomicU8::new(UNDECIDED),
        }
    }

    /// The kind of id slots are indexed by: [`Index::MmCid`] (falling back
    /// to the CPU number on kernels without `mm_cid`) or [`Index::Cpu`].
    pub fn index(&self) -> Index {
        self.by
    }

    /// The number of indexed slots: [`possible_cpus`](crate::possible_cpus).
    /// Spare slots made for nested locks have the indices after these.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slots allocated so far: one for each index some thread used,
    /// and the spares.
    pub fn slots_in_use(&self) -> usize {
        self.slots.iter().count() + self.spare_count.load(Ordering::Acquire)
    }

    /// False: there is always at least one slot index.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when some slot is poisoned (see [`PerCpu`]).
    pub fn is_poisoned(&self) -> bool {
        self.all()
            .any(|(_, slot)| slot.poisoned.load(Ordering::Relaxed))
    }

    /// Locks the current CPU's (or concurrency id's) slot: one critical
    /// section, waiting while another thread holds it (one preempted while
    /// holding it, or one that migrated away). If this thread holds that
    /// slot already (a nested call), it takes another slot (see
    /// [`PerCpu`]); it never fails for want of a slot.
    ///
    /// Like any lock: do not block while holding it (waiters spin, yielding
    /// the CPU), and do not nest it on two threads at once, which can
    /// deadlock as two locks taken in opposite orders do (use
    /// [`try_lock`](Self::try_lock) where that could happen, in signal
    /// handlers for instance).
    ///
    /// # Errors
    /// [`PoisonError`] (with the guard) when the slot taken is poisoned.
    pub fn lock(&self) -> LockResult<PerCpuGuard<'_, T>> {
        let guard = match self.lock_section(true) {
            Ok(guard) => guard,
            Err(cause) => self.lock_fallback(cause),
        };
        poison_checked(guard)
    }

    /// Locks the current CPU's slot, or another free slot, without ever
    /// waiting for a lock another thread (or this one) holds, and without
    /// allocating: it only uses slots that exist already (some thread used
    /// them with [`lock`](Self::lock)). Fit for signal handlers.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when every such slot is locked, when
    /// none exists yet, or when no fence can be made to reach the others;
    /// [`TryLockError::Poisoned`] (with the guard) when the slot taken is
    /// poisoned.
    pub fn try_lock(&self) -> TryLockResult<PerCpuGuard<'_, T>> {
        let guard = match self.lock_section(false) {
            Ok(guard) => Some(guard),
            Err(cause) => self.try_lock_fallback(cause),
        };
        match guard.map(poison_checked) {
            None => Err(TryLockError::WouldBlock),
            Some(Ok(guard)) => Ok(guard),
            Some(Err(poisoned)) => Err(TryLockError::Poisoned(poisoned)),
        }
    }

    /// Runs `f` on the current CPU's slot under the lock.
    ///
    /// # Errors
    /// [`PoisonError`] with `f`'s result when the slot was poisoned (`f`
    /// ran all the same).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> LockResult<R> {
        match self.lock() {
            Ok(mut guard) => Ok(f(&mut guard)),
            Err(poisoned) => Err(PoisonError::new(f(&mut poisoned.into_inner()))),
        }
    }

    /// Locks slot `index` from any thread (the guard protocol: a fence,
    /// microseconds), waiting while another thread holds it. Indices below
    /// [`len`](Self::len) are the indexed slots (created if needed); the
    /// spares follow.
    ///
    /// # Errors
    /// [`RemoteError::NoSuchCpu`] when no slot has that index;
    /// [`RemoteError::Busy`] when this thread holds that slot already;
    /// [`RemoteError::Fence`] when no fence can be made (seccomp refusing
    /// membarrier and `sched_setaffinity`). Inside `Ok`, a [`PoisonError`]
    /// when the slot is poisoned.
    pub fn lock_slot(&self, index: usize) -> Result<LockResult<PerCpuGuard<'_, T>>, RemoteError> {
        let me = guard::token();
        if index < self.len() {
            let slot = self
                .slots
                .get_or_init(index, || self.fresh())
                .ok_or(RemoteError::NoSuchCpu)?;
            let mut waits = 0;
            loop {
                match self.take_indexed(slot, index, me) {
                    Taken::Got(guard) => return Ok(poison_checked(guard)),
                    Taken::Mine => return Err(RemoteError::Busy),
                    Taken::NoFence(e) => return Err(RemoteError::Fence(e)),
                    // Waiting while this thread holds a guard could
                    // deadlock (see `kit::guard`).
                    Taken::Busy if guard::holding() => return Err(RemoteError::Busy),
                    Taken::Busy => {
                        guard::wait_for_holder(&mut waits);
                    }
                }
            }
        }
        let spare = self
            .spares()
            .find(|s| s.index == index)
            .ok_or(RemoteError::NoSuchCpu)?;
        let mut waits = 0;
        loop {
            match take_spare(spare, me) {
                Taken::Got(guard) => return Ok(poison_checked(guard)),
                Taken::Mine => return Err(RemoteError::Busy),
                _ if guard::holding() => return Err(RemoteError::Busy),
                _ => {
                    guard::wait_for_holder(&mut waits);
                }
            }
        }
    }

    /// Runs `f(index, value)` on every slot that exists, locking each in
    /// turn (slots no thread has used are skipped: they hold `init()`).
    ///
    /// # Errors
    /// As [`lock_slot`](Self::lock_slot), and [`RemoteError::Poisoned`] at a
    /// poisoned slot; slots before the failing one were visited.
    pub fn for_each(&self, mut f: impl FnMut(usize, &mut T)) -> Result<(), RemoteError> {
        let indices: Vec<usize> = self.all().map(|(i, _)| i).collect();
        for index in indices {
            match self.lock_slot(index)? {
                Ok(mut guard) => f(index, &mut guard),
                Err(_) => return Err(RemoteError::Poisoned { index }),
            }
        }
        Ok(())
    }

    /// A copy of every slot that exists, with its index, each cloned under
    /// its lock (see [`for_each`](Self::for_each)).
    ///
    /// # Errors
    /// As [`for_each`](Self::for_each).
    pub fn snapshot(&self) -> Result<Vec<(usize, T)>, RemoteError>
    where
        T: Clone,
    {
        let mut copies = Vec::new();
        self.for_each(|index, value| copies.push((index, value.clone())))?;
        Ok(copies)
    }

    /// Every slot that exists, with its index, without locking (`&mut self`
    /// proves no thread holds one); poisoned slots included.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        let slots: Vec<(usize, *const Slot<T>)> =
            self.all().map(|(i, s)| (i, s as *const Slot<T>)).collect();
        // SAFETY: `&mut self` for the lifetime of the iterator: no lock is
        // held and no other reference to any value exists; each slot is
        // listed once and lives until the structure is dropped.
        slots
            .into_iter()
            .map(|(i, slot)| (i, unsafe { &mut *(*slot).value.get() }))
    }

    fn fresh(&self) -> Indexed<T> {
        Guarded::new(Slot::new((self.init)(), 0))
    }

    /// The fences a guard holder of slot `index` needs.
    fn reach(&self, index: usize) -> Reach {
        match self.by {
            Index::Cpu => Reach::Cpu(index),
            // An mm_cid moves between CPUs: a section on the slot may run
            // on any of them.
            Index::MmCid => Reach::AnyCpu,
        }
    }

    /// The kind of id the sections use (see the `kind` field).
    #[inline]
    fn kind(&self, t: &Thread) -> Index {
        match self.kind.load(Ordering::Relaxed) {
            BY_CPU => Index::Cpu,
            BY_MM_CID => Index::MmCid,
            _ => self.decide_kind(t),
        }
    }

    #[cold]
    fn decide_kind(&self, t: &Thread) -> Index {
        let mm_cid = self.by == Index::MmCid && t.id(Index::MmCid).is_some();
        let want = if mm_cid { BY_MM_CID } else { BY_CPU };
        let now =
            match self
                .kind
                .compare_exchange(UNDECIDED, want, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => want,
                Err(now) => now,
            };
        if now == BY_MM_CID {
            Index::MmCid
        } else {
            Index::Cpu
        }
    }

    /// The section path. With `wait`, a slot another thread holds is waited
    /// for and a missing slot is made; otherwise both leave for the
    /// guarded path.
    #[inline]
    fn lock_section(&self, wait: bool) -> Result<PerCpuGuard<'_, T>, Cause> {
        let Some(t) = Thread::current() else {
            return Err(Cause::NoRseq);
        };
        let me = guard::token();
        let mut waits = 0;
        retry::sections(self.kind(&t), |t, id| {
            let index = id.as_usize();
            let slot = match wait {
                true => self.slots.get_or_init(index, || self.fresh()),
                false => self.slots.get(index),
            };
            let Some(slot) = slot else {
                return Step::Leave(if wait {
                    Cause::IdOutOfRange
                } else {
                    Cause::SlotHeld
                });
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
                    slot.guard_ptr(),
                )
            };
            match outcome {
                Outcome::Committed(()) => {
                    // Pairs with the previous holder's release store.
                    fence(Ordering::Acquire);
                    Step::Done(PerCpuGuard::new(slot, index))
                }
                // This thread holds it (a nested call), or a thread that no
                // longer exists does (fork), or another thread does and we
                // must not wait: the guarded path.
                Outcome::CompareFailed { seen, .. }
                    if !wait
                        || guard::is_mine(seen)
                        || guard::orphaned(seen)
                        || guard::holding() =>
                {
                    Step::Leave(Cause::SlotHeld)
                }
                // Held by another thread: it will be released (or, after
                // a raw clone, found orphaned).
                Outcome::CompareFailed { .. } => {
                    guard::wait_for_holder(&mut waits);
                    Step::Again
                }
                Outcome::Guarded { seen } => Step::Guarded(seen),
                Outcome::Aborted => Step::Aborted,
            }
        })
    }

    /// The guarded path of [`lock`](Self::lock): a free slot (the current
    /// CPU's first), else one another thread holds, waited for, else a new
    /// spare.
    // Not `#[cold]`: without rseq this is the hot path; out of line
    // only, to keep the section path small.
    #[inline(never)]
    fn lock_fallback(&self, cause: Cause) -> PerCpuGuard<'_, T> {
        let here = retry::fallback_index(cause, self.len());
        let me = guard::token();
        // The common case first: the current CPU's slot is free.
        if let Some(slot) = self.slots.get_or_init(here, || self.fresh()) {
            if let Taken::Got(guard) = self.take_indexed(slot, here, me) {
                return guard;
            }
        }
        self.lock_elsewhere(here, me)
    }

    /// [`lock_fallback`](Self::lock_fallback) when the current CPU's slot
    /// was not free.
    #[cold]
    fn lock_elsewhere(&self, here: usize, me: u64) -> PerCpuGuard<'_, T> {
        let mut held_by_others = None;
        match self.take_free(here, me, &mut held_by_others) {
            Some(guard) => guard,
            // A frame of this thread holds a guard: waiting for another
            // thread could deadlock (see `kit::guard`), so a spare it is.
            None if guard::holding() => self.new_spare(me),
            None => match held_by_others {
                Some((index, slot)) => {
                    let mut waits = 0;
                    loop {
                        match self.take_indexed(slot, index, me) {
                            Taken::Got(guard) => break guard,
                            Taken::Mine => break self.new_spare(me),
                            // No fence right now, or still held: look again.
                            Taken::Busy | Taken::NoFence(_) => {
                                guard::wait_for_holder(&mut waits);
                            }
                        }
                    }
                }
                None => self.new_spare(me),
            },
        }
    }

    /// The guarded path of [`try_lock`](Self::try_lock): a free slot that
    /// exists, or nothing.
    // Not `#[cold]`: without rseq this is the hot path; out of line
    // only, to keep the section path small.
    #[inline(never)]
    fn try_lock_fallback(&self, cause: Cause) -> Option<PerCpuGuard<'_, T>> {
        let here = retry::fallback_index(cause, self.len());
        self.take_free(here, guard::token(), &mut None)
    }

    /// A free slot that exists, the one at `here` first, then the spares;
    /// notes in `held_by_others` the first slot another thread holds.
    fn take_free<'a>(
        &'a self,
        here: usize,
        me: u64,
        held_by_others: &mut Option<(usize, &'a Indexed<T>)>,
    ) -> Option<PerCpuGuard<'a, T>> {
        let first = self.slots.get(here).map(|s| (here, s));
        let others = self.slots.iter().filter(|&(i, _)| i != here);
        for (index, slot) in first.into_iter().chain(others) {
            match self.take_indexed(slot, index, me) {
                Taken::Got(guard) => return Some(guard),
                Taken::Busy => {
                    held_by_others.get_or_insert((index, slot));
                }
                Taken::Mine | Taken::NoFence(_) => {}
            }
        }
        self.spares().find_map(|spare| match take_spare(spare, me) {
            Taken::Got(guard) => Some(guard),
            _ => None,
        })
    }

    /// Takes an indexed slot's lock under its guard, without waiting for
    /// another holder.
    #[inline]
    fn take_indexed<'a>(&'a self, slot: &'a Indexed<T>, index: usize, me: u64) -> Taken<'a, T> {
        // Where no thread of the process runs sections, the lock word alone
        // excludes other takers: one compare-exchange, no guard. SeqCst, as
        // the guard's is: a thread that registers rseq after the second
        // look sees this lock taken in all its sections (see
        // `registration::sections_in_process`); one that registered between
        // the two looks may have raced it, and the guard settles that.
        if !registration::sections_in_process()
            && slot
                .lock
                .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            if !registration::sections_in_process() {
                return Taken::Got(PerCpuGuard::new(slot, index));
            }
            return self.settle(slot, index, me);
        }
        // Sections are fenced out: only holders' releases race us.
        match slot.hold(self.reach(index), |slot| take_lock(slot, me)) {
            Ok(Lock::Taken) => Taken::Got(PerCpuGuard::new(slot, index)),
            Ok(Lock::Mine) | Err(Refused::Mine) => Taken::Mine,
            Ok(Lock::Busy) | Err(Refused::Busy) => Taken::Busy,
            Err(Refused::Fence(e)) => Taken::NoFence(e),
        }
    }

    /// After a take without the guard raced a thread's first registration:
    /// once the slot's sections are fenced out, the lock is this thread's
    /// if it still holds `me` (a section that read it free before the take
    /// has committed its own token over it by then).
    #[cold]
    fn settle<'a>(&'a self, slot: &'a Indexed<T>, index: usize, me: u64) -> Taken<'a, T> {
        match slot.hold_waiting(self.reach(index), |slot| slot.lock.load(Ordering::Acquire)) {
            Ok(seen) if seen == me => Taken::Got(PerCpuGuard::new(slot, index)),
            // A section's token replaced ours: the lock is its.
            Ok(_) => Taken::Busy,
            // An outer frame of this thread holds the guard, or another
            // guard: the take cannot be settled now, so it is undone (a
            // section that read the lock free may then commit its own).
            Err(_) => {
                let _ = slot
                    .lock
                    .compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed);
                Taken::Busy
            }
        }
    }

    /// A new spare slot, locked by `me`.
    #[cold]
    fn new_spare(&self, me: u64) -> PerCpuGuard<'_, T> {
        let index = self.len() + self.spare_count.fetch_add(1, Ordering::AcqRel);
        let spare = Box::into_raw(Box::new(Spare {
            slot: Slot::new((self.init)(), me),
            index,
            next: core::ptr::null(),
        }));
        let mut head = self.spares.load(Ordering::Acquire);
        loop {
            // SAFETY: `spare` is ours until the compare-exchange publishes it.
            unsafe { (*spare).next = head };
            match self.spares.compare_exchange_weak(
                head,
                spare,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        // SAFETY: spares are freed only when the structure is dropped.
        PerCpuGuard::new(unsafe { &(*spare).slot }, index)
    }

    fn spares(&self) -> impl Iterator<Item = &Spare<T>> {
        let mut at = self.spares.load(Ordering::Acquire) as *const Spare<T>;
        core::iter::from_fn(move || {
            // SAFETY: spares are published complete and freed only when the
            // structure is dropped.
            let spare = unsafe { at.as_ref()? };
            at = spare.next;
            Some(spare)
        })
    }

    /// Every slot that exists, indexed then spare, with its index.
    fn all(&self) -> impl Iterator<Item = (usize, &Slot<T>)> {
        let indexed = self.slots.iter().map(|(i, s)| (i, &**s));
        let mut spares: Vec<(usize, &Slot<T>)> =
            self.spares().map(|s| (s.index, &s.slot)).collect();
        spares.sort_by_key(|&(i, _)| i);
        indexed.chain(spares)
    }
}

/// What an attempt to take a slot found.
enum Taken<'a, T> {
    Got(PerCpuGuard<'a, T>),
    /// This thread holds the slot (or its guard).
    Mine,
    /// Another thread holds it.
    Busy,
    /// No fence could be made to reach it.
    NoFence(FenceError),
}

/// What a compare-exchange of a lock word found.
enum Lock {
    Taken,
    /// This thread holds it.
    Mine,
    /// Another thread holds it.
    Busy,
}

/// Compare-exchanges `slot`'s lock to `me` (taking it over, poisoned, from
/// a thread that does not exist in this process). A compare-exchange even
/// under the guard: a taker that found no thread using rseq takes the lock
/// word without the guard (see `take_indexed`).
fn take_lock<T>(slot: &Slot<T>, me: u64) -> Lock {
    let seen = slot.lock.load(Ordering::Relaxed);
    if seen != 0 && guard::is_mine(seen) {
        return Lock::Mine;
    }
    let orphan = seen != 0 && guard::orphaned(seen);
    let free = if orphan { seen } else { 0 };
    match slot
        .lock
        .compare_exchange(free, me, Ordering::Acquire, Ordering::Relaxed)
    {
        Ok(_) => {
            if orphan {
                slot.poisoned.store(true, Ordering::Relaxed);
            }
            Lock::Taken
        }
        Err(_) => Lock::Busy,
    }
}

/// Takes a spare's lock (no guard: no section reaches spares).
fn take_spare<T>(spare: &Spare<T>, me: u64) -> Taken<'_, T> {
    match take_lock(&spare.slot, me) {
        Lock::Taken => Taken::Got(PerCpuGuard::new(&spare.slot, spare.index)),
        Lock::Mine => Taken::Mine,
        Lock::Busy => Taken::Busy,
    }
}

/// The guard, or the guard inside a [`PoisonError`] when its slot is
/// poisoned.
fn poison_checked<T>(guard: PerCpuGuard<'_, T>) -> LockResult<PerCpuGuard<'_, T>> {
    match guard.slot.poisoned.load(Ordering::Relaxed) {
        false => Ok(guard),
        true => Err(PoisonError::new(guard)),
    }
}

impl<'a, T> PerCpuGuard<'a, T> {
    fn new(slot: &'a Slot<T>, index: usize) -> Self {
        PerCpuGuard {
            slot,
            index,
            _not_send: PhantomData,
        }
    }

    /// The index of the slot held (a CPU number or a concurrency id, or
    /// past [`PerCpu::len`] for a spare).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Removes the slot's poison mark (see [`PerCpu`]): the holder vouches
    /// that the value is consistent again. An associated function, so it
    /// does not hide a method of `T`.
    pub fn clear_poison(guard: &Self) {
        guard.slot.poisoned.store(false, Ordering::Relaxed);
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
        if std::thread::panicking() {
            self.slot.poisoned.store(true, Ordering::Relaxed);
        }
        // A plain store-release: sections compare the word, guarded takers
        // compare-exchange it; neither can slip between.
        self.slot.lock.store(0, Ordering::Release);
    }
}

impl<T, F> Drop for PerCpu<T, F> {
    fn drop(&mut self) {
        let mut at = *self.spares.get_mut();
        while !at.is_null() {
            // SAFETY: each spare came from Box::into_raw and is freed once.
            let spare = unsafe { Box::from_raw(at) };
            at = spare.next as *mut Spare<T>;
        }
    }
}

impl<T: Default> Default for PerCpu<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, F: Fn() -> T> core::fmt::Debug for PerCpu<T, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpu")
            .field("index", &self.by)
            .field("slots_in_use", &self.slots_in_use())
            .finish()
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for PerCpuGuard<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PerCpuGuard")
            .field("index", &self.index)
            .field("value", &**self)
            .finish()
    }
}

// SAFETY: a `T` is reached only under its slot's lock, from one thread at a
// time, so sharing the structure needs only `T: Send` (like a Mutex), and
// `init` is called from any thread (`F: Sync`).
unsafe impl<T: Send, F: Sync> Sync for PerCpu<T, F> {}
// SAFETY: moving the structure moves the `T`s it owns and `init`.
unsafe impl<T: Send, F: Send> Send for PerCpu<T, F> {}
// SAFETY: the guard hands out `&T` to the thread holding it; sharing the
// guard shares `&T`.
unsafe impl<T: Sync> Sync for PerCpuGuard<'_, T> {}
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::TryLockError;

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
                            let mut p = storage.lock().unwrap();
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
                        let mut p = storage.lock().unwrap();
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
            let g = storage.lock().unwrap();
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
        *storage.lock().unwrap() += 1;
        assert_eq!(
            storage.lock_slot(usize::MAX).err(),
            Some(RemoteError::NoSuchCpu)
        );
        let total: u64 = storage.snapshot().unwrap().iter().map(|(_, v)| v).sum();
        assert_eq!(total, 1);
    }

    #[test]
    fn try_lock_never_waits() {
        let storage: PerCpu<u64> = PerCpu::new_by_cpu();
        // No slot exists yet, and try_lock does not allocate one.
        assert!(matches!(storage.try_lock(), Err(TryLockError::WouldBlock)));
        for index in 0..storage.len() {
            drop(storage.lock_slot(index).unwrap().unwrap());
        }
        let mut held = Vec::new();
        // Nested try_locks take free slots until there are none.
        while let Ok(g) = storage.try_lock() {
            assert!(held
                .iter()
                .all(|h: &PerCpuGuard<'_, u64>| h.index() != g.index()));
            held.push(g);
            assert!(held.len() <= storage.len());
        }
        assert_eq!(held.len(), storage.len());
        // Another thread finds every slot locked, and does not wait.
        std::thread::scope(|s| {
            s.spawn(|| assert!(storage.try_lock().is_err()));
        });
        drop(held);
        assert!(storage.try_lock().is_ok());
    }

    #[test]
    fn a_panic_under_the_lock_releases_and_poisons_it() {
        let storage: PerCpu<u64> = PerCpu::new_by_cpu();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = storage.with(|_| panic!("inside the lock"));
        }));
        assert!(r.is_err());
        assert!(storage.is_poisoned());
        let poisoned = storage
            .snapshot()
            .expect_err("a poisoned slot stops the walk");
        let RemoteError::Poisoned { index } = poisoned else {
            panic!("{poisoned:?}")
        };
        // Acknowledge: look at the value, then clear the mark.
        let guard = storage.lock_slot(index).unwrap().unwrap_err().into_inner();
        PerCpuGuard::clear_poison(&guard);
        drop(guard);
        assert!(!storage.is_poisoned());
        let _ = storage.with(|v| *v += 1);
        let mut sum = 0;
        storage.for_each(|_, v| sum += *v).unwrap();
        assert_eq!(sum, 1);
    }

    #[test]
    fn nesting_deeper_than_the_slots_makes_spares() {
        let count = std::cell::Cell::new(0);
        let storage = PerCpu::with_init(|| {
            count.set(count.get() + 1);
            7u64
        });
        let depth = storage.len() + 3;
        let held: Vec<_> = (0..depth).map(|_| storage.lock().unwrap()).collect();
        let mut indices: Vec<usize> = held.iter().map(|g| g.index()).collect();
        indices.sort_unstable();
        indices.dedup();
        assert_eq!(indices.len(), depth, "every nested lock has its own slot");
        assert!(held.iter().all(|g| **g == 7));
        assert!(storage.slots_in_use() >= depth);
        drop(held);
        // The spares are reused, locked remotely and walked.
        let again: Vec<_> = (0..depth).map(|_| storage.lock().unwrap()).collect();
        assert_eq!(storage.slots_in_use(), count.get());
        drop(again);
        let spare = storage.len();
        *storage.lock_slot(spare).unwrap().unwrap() += 1;
        let total: u64 = storage.snapshot().unwrap().iter().map(|(_, v)| v).sum();
        assert_eq!(total, 7 * count.get() as u64 + 1);
    }
}
