//! Optional event counts that let tests prove which path ran: aborted
//! sections, and operations completed on the fallback path, by [`Cause`].
//!
//! Compiled in with the `abort-stats` cargo feature; without it every
//! recording function is empty and [`stats`] returns `None`. Each thread
//! counts in a block of its own (one `inc` on x86-64: no locked
//! instruction, no shared cache line), so counting costs next to nothing
//! even when every operation of every thread takes the fallback path.

/// Why an operation left its critical section and completed on the
/// fallback path (the guard protocol, or atomics for a counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The thread does not use rseq (see
    /// [`registration`](crate::registration)).
    NoRseq,
    /// The section aborted [`MAX_ATTEMPTS`](crate::section::MAX_ATTEMPTS)
    /// times in a row (a debugger single-stepping it, a signal storm).
    RetriesExhausted,
    /// The id the kernel reported is no index of the data (a CPU number
    /// past [`possible_cpus`](crate::possible_cpus)), or the kernel does not
    /// provide the id the data is indexed by.
    IdOutOfRange,
    /// The data's guard stayed set: held by this very thread (a nested
    /// call, or a signal handler that interrupted it), by a thread of
    /// another process (copied by `fork`), or for longer than the section
    /// path waits.
    GuardGivenUp,
    /// A [`PerCpu`](crate::PerCpu) slot could not be taken by its section:
    /// it was locked by this thread, by a thread that no longer exists
    /// (`fork`), or by another thread when the caller would not wait
    /// ([`try_lock`](crate::PerCpu::try_lock)), or, for `try_lock`, it was
    /// not made yet.
    SlotHeld,
}

impl Cause {
    /// Every cause, in the order of their counts in [`Stats`].
    pub const ALL: [Cause; 5] = [
        Cause::NoRseq,
        Cause::RetriesExhausted,
        Cause::IdOutOfRange,
        Cause::GuardGivenUp,
        Cause::SlotHeld,
    ];

    /// A short name: `no_rseq`, `retries_exhausted`, `id_out_of_range`,
    /// `guard_given_up`, `slot_held`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NoRseq => "no_rseq",
            Cause::RetriesExhausted => "retries_exhausted",
            Cause::IdOutOfRange => "id_out_of_range",
            Cause::GuardGivenUp => "guard_given_up",
            Cause::SlotHeld => "slot_held",
        }
    }
}

/// A snapshot of the counts since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Critical sections the kernel aborted (each is retried).
    pub aborts: u64,
    /// Operations completed on the fallback path, for any cause: the sum
    /// of the counts below.
    pub fallback_ops: u64,
    /// Of those, operations of threads without rseq ([`Cause::NoRseq`]).
    pub no_rseq: u64,
    /// ... whose section aborted too often ([`Cause::RetriesExhausted`]).
    pub retries_exhausted: u64,
    /// ... whose id was out of range ([`Cause::IdOutOfRange`]).
    pub id_out_of_range: u64,
    /// ... that gave up waiting on a guard ([`Cause::GuardGivenUp`]).
    pub guard_given_up: u64,
    /// ... that found a `PerCpu` slot locked ([`Cause::SlotHeld`]).
    pub slot_held: u64,
}

impl Stats {
    /// The count of fallback completions for `cause`.
    pub fn of(&self, cause: Cause) -> u64 {
        match cause {
            Cause::NoRseq => self.no_rseq,
            Cause::RetriesExhausted => self.retries_exhausted,
            Cause::IdOutOfRange => self.id_out_of_range,
            Cause::GuardGivenUp => self.guard_given_up,
            Cause::SlotHeld => self.slot_held,
        }
    }
}

/// The counts live in per-thread blocks (see [`blocks`]), and in shared
/// stripes for events of threads without one.
#[cfg(feature = "abort-stats")]
fn total(i: usize) -> u64 {
    blocks::total(i)
}

/// The counts, or `None` when the `abort-stats` feature is off. Counts of
/// threads that are still running are read as they are (each thread's
/// counts become visible to others without delay, in no particular order).
pub fn stats() -> Option<Stats> {
    #[cfg(feature = "abort-stats")]
    {
        let cause = |c: Cause| total(1 + c as usize);
        let mut s = Stats {
            aborts: total(0),
            fallback_ops: 0,
            no_rseq: cause(Cause::NoRseq),
            retries_exhausted: cause(Cause::RetriesExhausted),
            id_out_of_range: cause(Cause::IdOutOfRange),
            guard_given_up: cause(Cause::GuardGivenUp),
            slot_held: cause(Cause::SlotHeld),
        };
        s.fallback_ops = Cause::ALL.iter().map(|&c| s.of(c)).sum();
        Some(s)
    }
    #[cfg(not(feature = "abort-stats"))]
    {
        None
    }
}

/// Counts an aborted section; `stripe` is the CPU or slot it ran on.
#[inline(always)]
pub(crate) fn record_abort(stripe: usize) {
    #[cfg(feature = "abort-stats")]
    blocks::add(0, stripe);
    #[cfg(not(feature = "abort-stats"))]
    let _ = stripe;
}

/// Counts an operation completed on the fallback path for `cause`;
/// `stripe` is the CPU or slot it worked on.
#[inline(always)]
pub(crate) fn record_fallback(cause: Cause, stripe: usize) {
    #[cfg(feature = "abort-stats")]
    blocks::add(1 + cause as usize, stripe);
    #[cfg(not(feature = "abort-stats"))]
    let _ = (cause, stripe);
}

/// Gives the calling thread a block of counts of its own. Called once per
/// thread, when it decides how it registers (not in a signal handler,
/// since it may allocate and registers a thread-exit destructor).
#[inline]
pub(crate) fn thread_started() {
    #[cfg(feature = "abort-stats")]
    blocks::claim();
}

/// Per-thread blocks of counts. Each thread adds to its own block with
/// one instruction that a signal handler of the thread cannot split
/// (`arch::bump_own`: a plain `inc` on x86-64): only it writes there.
/// Blocks are never freed: a thread's block goes back to the list when it
/// exits, for the next thread to take, counts included.
#[cfg(feature = "abort-stats")]
mod blocks {
    use core::cell::Cell;
    use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

    use super::Cause;

    const COUNTS: usize = 1 + Cause::ALL.len();

    #[repr(align(128))]
    struct Block {
        counts: [AtomicU64; COUNTS],
        in_use: AtomicBool,
        next: *const Block,
    }

    /// Every block ever made, newest first; the list only grows.
    static BLOCKS: AtomicPtr<Block> = AtomicPtr::new(core::ptr::null_mut());

    /// Stripes for events of threads without a block of their own (a
    /// thread past its thread-local destructors), chosen by CPU or slot.
    const STRIPES: usize = 64;
    #[repr(align(128))]
    struct Stripe([AtomicU64; COUNTS]);
    static SHARED: [Stripe; STRIPES] =
        [const { Stripe([const { AtomicU64::new(0) }; COUNTS]) }; STRIPES];

    thread_local! {
        static MINE: Cell<*const Block> = const { Cell::new(core::ptr::null()) };
        static RELEASE: Release = const { Release };
    }

    /// Gives the block back when its thread exits.
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            let block = MINE.replace(core::ptr::null());
            // SAFETY: blocks are never freed.
            if let Some(block) = unsafe { block.as_ref() } {
                block.in_use.store(false, Ordering::Release);
            }
        }
    }

    fn blocks() -> impl Iterator<Item = &'static Block> {
        let mut at = BLOCKS.load(Ordering::Acquire) as *const Block;
        core::iter::from_fn(move || {
            // SAFETY: blocks are published complete and never freed.
            let block = unsafe { at.as_ref()? };
            at = block.next;
            Some(block)
        })
    }

    pub(super) fn claim() {
        if !MINE.get().is_null() || RELEASE.try_with(|_| ()).is_err() {
            return;
        }
        let free = blocks().find(|b| {
            b.in_use
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        });
        let block = match free {
            Some(block) => block as *const Block,
            None => {
                let fresh = Box::into_raw(Box::new(Block {
                    counts: [const { AtomicU64::new(0) }; COUNTS],
                    in_use: AtomicBool::new(true),
                    next: core::ptr::null(),
                }));
                let mut head = BLOCKS.load(Ordering::Relaxed);
                loop {
                    // SAFETY: `fresh` is ours until published.
                    unsafe { (*fresh).next = head };
                    match BLOCKS.compare_exchange_weak(
                        head,
                        fresh,
                        Ordering::Release,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => break fresh as *const Block,
                        Err(now) => head = now,
                    }
                }
            }
        };
        MINE.set(block);
    }

    #[inline(always)]
    pub(super) fn add(i: usize, stripe: usize) {
        // SAFETY: blocks are never freed.
        match unsafe { MINE.get().as_ref() } {
            Some(block) => crate::arch::bump_own(&block.counts[i]),
            None => {
                SHARED[stripe % STRIPES].0[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn total(i: usize) -> u64 {
        let shared = SHARED.iter().fold(0u64, |sum, s| {
            sum.wrapping_add(s.0[i].load(Ordering::Relaxed))
        });
        blocks().fold(shared, |sum, b| {
            sum.wrapping_add(b.counts[i].load(Ordering::Relaxed))
        })
    }
}
