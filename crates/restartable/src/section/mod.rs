//! The per-CPU operations as raw critical sections.
//!
//! The layer between the runtime (which thread area, which CPU) and the
//! structures: each operation of the vocabulary, specified once here and
//! written per architecture in `arch`.
//!
//! Each operation is one attempt at one critical section on data the caller
//! chose by an [`Id`] (a CPU number or a concurrency id, `mm_cid`). The
//! section first checks that the thread still runs with that id, then does
//! its loads and compares, and publishes its effect with one final store, the
//! commit. The kernel aborts the attempt if the thread is preempted, migrated
//! or signalled before the commit; the [`Outcome`] says which of these
//! happened. [`Thread::retry`] repeats an attempt a bounded number of times.
//!
//! | operation | effect on the current CPU's data | reference name |
//! |---|---|---|
//! | [`compare_store`](Thread::compare_store) | if `*v == expect` then `*v = new` | `load_cbne_store` |
//! | [`add`](Thread::add) | `*v += count` | `load_add_store` |
//! | [`pop`](Thread::pop) | if `*v != expect_not`: return `*v`, `*v = *(*v + offset)` | `load_cbeq_store_add_load_store` |
//! | [`deref_add`](Thread::deref_add) | `**(*p + offset) += count` | `load_add_load_load_add_store` |
//! | [`compare2_store`](Thread::compare2_store) | if `*v2 == expect2 && *v == expect` then `*v = new` | `load_cbne_load_cbne_store` |
//! | [`store_then_store`](Thread::store_then_store) | if `*v == expect`: `*v2 = new2`, then `*v = new` | `load_cbne_store_store` |
//! | [`memcpy_then_store`](Thread::memcpy_then_store) | if `*v == expect`: copy `len` bytes, then `*v = new` | `load_cbne_memcpy_store` |
//!
//! `compare_store`, `pop`, `store_then_store` and `memcpy_then_store` also
//! come *guarded* (`compare_store_guarded`, `pop_guarded`, ...): the section
//! first reads a guard word (acquire) and returns [`Outcome::Guarded`]
//! unless it is 0, which is how a thread on another CPU, or one without
//! rseq, keeps sections out of data it works on (set the guard, then
//! [`fence`](crate::fence)).
//!
//! ABI source: `include/uapi/linux/rseq.h` (`struct rseq_cs`, the abort
//! signature) and `man 2 rseq`; see [`crate::abi`].
//!
//! # Safety contract of every operation
//!
//! - Every pointer is valid for the accesses the operation makes, and
//!   8-byte aligned where it names a `u64`.
//! - The words an operation *stores to* belong to the data of the CPU (or
//!   concurrency id) `id` names, and nothing writes them except critical
//!   sections using the same kind of id for that data, or code that first
//!   stops such sections and fences them ([`fence`](crate::fence)). A plain
//!   atomic read-modify-write from another thread racing a section on the
//!   same word loses updates.
//! - Words read but not written (the list nodes of [`pop`](Thread::pop))
//!   are stable while reachable from the data. The second word of
//!   [`compare2_store`](Thread::compare2_store) may instead be a guard that
//!   another thread sets and then fences.
//!
//! Release: with [`Order::Release`] the commit is a store-release (every
//! earlier store of the section and of the thread is visible to whoever
//! observes the commit). On x86-64 every store already is one.

use core::sync::atomic::AtomicU64;

pub mod examples;
pub mod language;
pub(crate) mod ops;
mod run;
#[doc(hidden)]
pub mod support;

pub use run::Run;

use crate::arch;
use crate::runtime::registration::{self, AreaRef};
use crate::{abi, stats};
use ops::{dispatch as op, Attempt, Raw};

/// Attempts [`Thread::retry`] makes, and the structures make before they
/// complete an operation on their fallback path instead: so a section that
/// can never finish (a debugger single-stepping it, a signal on every
/// attempt) cannot hang the caller.
pub const MAX_ATTEMPTS: u32 = 16;

/// Which per-thread id a section compares, and the caller used to pick its
/// data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Index {
    /// The CPU number (`cpu_id`), below [`possible_cpus`](crate::possible_cpus).
    Cpu,
    /// The concurrency id (`mm_cid`, Linux 6.3+): dense, below the number
    /// of threads of the process running at once.
    MmCid,
}

/// Memory order of the commit store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// A plain store.
    Relaxed,
    /// A store-release: publishes data written before it.
    Release,
}

/// An id read from the thread's rseq area, with the kind it is. Only
/// [`Thread::id`] makes one, so an operation can only compare an id the
/// kernel maintains for this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Id {
    value: u32,
    index: Index,
}

impl Id {
    /// The id: a CPU number or a concurrency id.
    pub fn value(self) -> u32 {
        self.value
    }
    /// [`value`](Self::value) as an index.
    pub fn as_usize(self) -> usize {
        self.value as usize
    }
    /// The kind of id.
    pub fn index(self) -> Index {
        self.index
    }
}

/// What one attempt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome<T = ()> {
    /// The commit executed; `T` is what the operation returns (the popped
    /// head for [`pop`](Thread::pop)).
    Committed(T),
    /// Compare number `which` (0 for the first) did not hold: `seen` is the
    /// value the section read. Nothing was stored to the data.
    CompareFailed {
        /// Which compare failed.
        which: u8,
        /// The value the section read there.
        seen: u64,
    },
    /// A guarded operation found its guard word set to `seen` (non-zero):
    /// another thread works on the data without a section. Nothing was
    /// stored to the data.
    Guarded {
        /// The guard's value.
        seen: u64,
    },
    /// The kernel aborted the section (preemption, migration, signal), or
    /// the thread no longer has the id the caller passed. Nothing was
    /// committed; read the id again and retry.
    Aborted,
}

impl<T> Outcome<T> {
    /// The same outcome, with `f` applied to a [`Committed`](Outcome::Committed)
    /// value.
    #[inline(always)]
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Committed(value) => Outcome::Committed(f(value)),
            Outcome::CompareFailed { which, seen } => Outcome::CompareFailed { which, seen },
            Outcome::Guarded { seen } => Outcome::Guarded { seen },
            Outcome::Aborted => Outcome::Aborted,
        }
    }
}

/// Every attempt of [`Thread::retry`] aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetriesExhausted;

impl core::fmt::Display for RetriesExhausted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "critical section aborted {MAX_ATTEMPTS} times in a row")
    }
}

impl std::error::Error for RetriesExhausted {}

/// The calling thread's rseq area, proof that this thread can run critical
/// sections. Neither `Send` nor `Sync`.
#[derive(Clone, Copy)]
pub struct Thread {
    area: AreaRef,
}

impl core::fmt::Debug for Thread {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Thread")
            .field("feature_size", &registration::feature_size())
            .finish()
    }
}

impl Thread {
    /// The calling thread's handle, registering the thread first if needed;
    /// `None` when the thread uses the fallback path or this target has no
    /// critical sections.
    #[inline]
    pub fn current() -> Option<Thread> {
        if !arch::HAS_SECTIONS {
            return None;
        }
        let area = registration::area()?;
        Some(Thread { area })
    }

    /// The thread's current id of kind `index`; `None` for
    /// [`Index::MmCid`] when the kernel does not maintain it (feature size
    /// below 28).
    #[inline]
    pub fn id(&self, index: Index) -> Option<Id> {
        if !self.live() {
            return None;
        }
        let rseq = self.area.get();
        let value = match index {
            Index::Cpu => u32::try_from(rseq.cpu_id()).ok()?,
            Index::MmCid if has_mm_cid() => rseq.mm_cid(),
            Index::MmCid => return None,
        };
        Some(Id { value, index })
    }

    /// The area's address for a generated section, if the thread still
    /// has it (and, for `mm_cid`, the kernel maintains that id).
    #[inline(always)]
    pub(crate) fn section_area(&self, mm_cid: bool) -> Option<*const u8> {
        let ok = self.live() && (!mm_cid || has_mm_cid());
        ok.then(|| self.area.as_ptr().cast())
    }

    /// Clears `rseq_cs` after a section.
    #[inline(always)]
    pub(crate) fn detach(&self) {
        self.area.detach();
    }

    /// False once the thread gave its area up ([`opt_out_current_thread`],
    /// or thread exit): a handle kept from before then only aborts, and its
    /// [`id`](Self::id) is `None`.
    ///
    /// [`opt_out_current_thread`]: crate::opt_out_current_thread
    #[inline(always)]
    pub fn live(&self) -> bool {
        registration::is_current(self.area)
    }

    /// Runs `attempt` with a fresh id until it does not abort, at most
    /// 16 times; every abort is counted (feature `abort-stats`). Returns the
    /// last outcome (`Committed` or `CompareFailed`), or
    /// [`RetriesExhausted`] when every attempt aborted, in which case the
    /// caller completes the operation on its fallback path.
    #[inline]
    pub fn retry<T>(
        &self,
        index: Index,
        mut attempt: impl FnMut(Id) -> Outcome<T>,
    ) -> Result<Outcome<T>, RetriesExhausted> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(id) = self.id(index) else {
                return Err(RetriesExhausted);
            };
            match attempt(id) {
                Outcome::Aborted => stats::record_abort(id.as_usize()),
                done => return Ok(done),
            }
        }
        Err(RetriesExhausted)
    }

    /// One attempt of a generated operation on the area: `Aborted` at once
    /// if the thread gave the area up; `rseq_cs` cleared after.
    #[inline(always)]
    fn attempt(&self, section: impl FnOnce(*const u8) -> Raw) -> Outcome<u64> {
        if !self.live() {
            return Outcome::Aborted;
        }
        let raw = section(self.area.as_ptr().cast());
        self.area.detach();
        match raw.attempt {
            Attempt::Committed => Outcome::Committed(raw.out),
            Attempt::CompareFailed(which) => Outcome::CompareFailed {
                which,
                seen: raw.out,
            },
            Attempt::Aborted | Attempt::OutOfRange => Outcome::Aborted,
        }
    }

    /// If `*v == expect`, commit `*v = new`.
    ///
    /// # Safety
    /// The [module contract](self).
    #[inline(always)]
    pub unsafe fn compare_store(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect: u64,
        new: u64,
    ) -> Outcome {
        // SAFETY: the caller upholds the module contract.
        self.attempt(|area| unsafe {
            op::compare_store(id.index, order, area, id.value, v, expect, new)
        })
        .map(drop)
    }

    /// [`compare_store`](Self::compare_store) that first checks a guard
    /// word: if `*guard != 0`, [`Outcome::Guarded`] and nothing is stored. The same section as [`compare2_store`](Self::compare2_store)
    /// with `v2 = guard` and `expect2 = 0`.
    ///
    /// # Safety
    /// As [`compare_store`](Self::compare_store); `guard` is valid for an
    /// aligned `u64` read.
    #[inline(always)]
    pub unsafe fn compare_store_guarded(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect: u64,
        new: u64,
        guard: *const u64,
    ) -> Outcome {
        // SAFETY: the caller's contract.
        guarded(unsafe { self.compare2_store(id, order, v, expect, guard, 0, new) })
    }

    /// `*v += count` (wrapping).
    ///
    /// # Safety
    /// The [module contract](self).
    #[inline(always)]
    pub unsafe fn add(&self, id: Id, order: Order, v: *mut u64, count: u64) -> Outcome {
        // SAFETY: the caller upholds the module contract.
        self.attempt(|area| unsafe { op::add(id.index, order, area, id.value, v, count) })
            .map(drop)
    }

    /// Pops the head of an intrusive list whose head word is `*v` and whose
    /// nodes hold their next pointer at byte `offset`: if `*v == expect_not`
    /// (the empty list), `CompareFailed`; else commit `*v = next` and return
    /// the old head.
    ///
    /// # Safety
    /// The [module contract](self); every node on the list is valid for a
    /// read of the word at `offset`.
    #[inline(always)]
    pub unsafe fn pop(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect_not: u64,
        offset: usize,
    ) -> Outcome<u64> {
        // SAFETY: the caller's contract; the guard is a word that stays 0.
        unsafe { self.pop_guarded(id, order, v, expect_not, offset, NO_GUARD.as_ptr()) }
    }

    /// [`pop`](Self::pop) that first checks a guard word: if
    /// `*guard != 0`, [`Outcome::Guarded`] with its value and nothing is
    /// popped. The guard is read first with acquire ordering
    /// (see [`compare2_store`](Self::compare2_store)).
    ///
    /// # Safety
    /// As [`pop`](Self::pop); `guard` is valid for an aligned `u64` read.
    #[inline(always)]
    pub unsafe fn pop_guarded(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect_not: u64,
        offset: usize,
        guard: *const u64,
    ) -> Outcome<u64> {
        // SAFETY: the caller upholds the module contract.
        guarded(self.attempt(|area| unsafe {
            op::pop(
                id.index, order, area, id.value, v, expect_not, offset, guard,
            )
        }))
    }

    /// `**(*p + offset) += count`: the word at `*p + offset` is a pointer,
    /// and the `u64` it points to gets `count` added.
    ///
    /// # Safety
    /// The [module contract](self), for the word finally written.
    #[inline(always)]
    pub unsafe fn deref_add(
        &self,
        id: Id,
        order: Order,
        p: *const u64,
        offset: usize,
        count: u64,
    ) -> Outcome {
        // SAFETY: the caller upholds the module contract.
        self.attempt(|area| unsafe {
            op::deref_add(id.index, order, area, id.value, p, offset, count)
        })
        .map(drop)
    }

    /// If `*v2 == expect2` and `*v == expect`, commit `*v = new`.
    ///
    /// `v2` is read first, with acquire ordering, so it can be a *guard*:
    /// a word that another thread sets, then fences the CPU
    /// ([`fence::fence_cpu`](crate::fence::fence_cpu)), to keep every
    /// section from committing to `v` while it works on `v` itself
    /// ([`fence`](crate::fence)). A failed compare reports `which: 1` for `v2`,
    /// `which: 0` for `v`.
    ///
    /// # Safety
    /// The [module contract](self).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn compare2_store(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect: u64,
        v2: *const u64,
        expect2: u64,
        new: u64,
    ) -> Outcome {
        // SAFETY: the caller upholds the module contract.
        self.attempt(|area| unsafe {
            op::compare2_store(id.index, order, area, id.value, v, expect, v2, expect2, new)
        })
        .map(drop)
    }

    /// If `*v == expect`: store `*v2 = new2`, then commit `*v = new`. The
    /// store to `v2` may happen even when the attempt aborts afterwards.
    ///
    /// # Safety
    /// The [module contract](self), for `v` and `v2`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn store_then_store(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect: u64,
        v2: *mut u64,
        new2: u64,
        new: u64,
    ) -> Outcome {
        // SAFETY: the caller's contract; the guard is a word that stays 0.
        unsafe {
            self.store_then_store_guarded(id, order, v, expect, v2, new2, new, NO_GUARD.as_ptr())
        }
    }

    /// [`store_then_store`](Self::store_then_store) that first checks a
    /// guard word: if `*guard != 0`, [`Outcome::Guarded`] and nothing is
    /// stored.
    ///
    /// # Safety
    /// As [`store_then_store`](Self::store_then_store); `guard` is valid
    /// for an aligned `u64` read.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn store_then_store_guarded(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect: u64,
        v2: *mut u64,
        new2: u64,
        new: u64,
        guard: *const u64,
    ) -> Outcome {
        // SAFETY: the caller upholds the module contract.
        guarded(self.attempt(|area| unsafe {
            op::store_then_store(
                id.index, order, area, id.value, v, expect, v2, new2, new, guard,
            )
        }))
        .map(drop)
    }

    /// If `*v == expect`: copy `len` bytes from `src` to `dst`, then commit
    /// `*v = new`. The copy may happen (in part) even when the attempt
    /// aborts afterwards.
    ///
    /// # Safety
    /// The [module contract](self); `src` is valid for reads and `dst` for
    /// writes of `len` bytes, not overlapping, and `dst` belongs to the data
    /// of `id` (or to the caller).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn memcpy_then_store(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect: u64,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        new: u64,
    ) -> Outcome {
        // SAFETY: the caller's contract; the guard is a word that stays 0.
        unsafe {
            self.memcpy_then_store_guarded(
                id,
                order,
                v,
                expect,
                dst,
                src,
                len,
                new,
                NO_GUARD.as_ptr(),
            )
        }
    }

    /// [`memcpy_then_store`](Self::memcpy_then_store) that first checks a
    /// guard word: if `*guard != 0`, [`Outcome::Guarded`] and nothing is
    /// copied.
    ///
    /// # Safety
    /// As [`memcpy_then_store`](Self::memcpy_then_store); `guard` is valid
    /// for an aligned `u64` read.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn memcpy_then_store_guarded(
        &self,
        id: Id,
        order: Order,
        v: *mut u64,
        expect: u64,
        dst: *mut u8,
        src: *const u8,
        len: usize,
        new: u64,
        guard: *const u64,
    ) -> Outcome {
        // SAFETY: the caller upholds the module contract.
        guarded(self.attempt(|area| unsafe {
            op::memcpy_then_store(
                id.index, order, area, id.value, v, expect, dst, src, len, new, guard,
            )
        }))
        .map(drop)
    }
}

/// Whether the kernel maintains `mm_cid` for this thread (feature size 28
/// or more). Read when an `mm_cid` is asked for, so that getting a
/// [`Thread`] costs one thread-local load.
#[inline(always)]
fn has_mm_cid() -> bool {
    registration::feature_size() >= abi::MM_CID_FEATURE_SIZE
}

/// A guarded operation's outcome: its guard is compare number 1.
#[inline(always)]
fn guarded<T>(outcome: Outcome<T>) -> Outcome<T> {
    match outcome {
        Outcome::CompareFailed { which: 1, seen } => Outcome::Guarded { seen },
        other => other,
    }
}

/// The guard of the unguarded operations: always 0, never written.
static NO_GUARD: AtomicU64 = AtomicU64::new(0);
