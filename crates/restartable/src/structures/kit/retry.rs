//! The retry driver every structure's section path shares: one attempt
//! after another with the thread's current id, until the operation is done
//! or must complete on the fallback path, and why ([`Cause`]).
//!
//! The policy, in one place ([`Retry`]): an abort is retried at once, up to
//! [`MAX_ATTEMPTS`] in a row; a failed compare (another thread on the CPU
//! changed the data since the caller read it) is retried at once; a set
//! guard is waited for, yielding, unless this thread or a vanished one holds
//! it, or for more than [`SECTION_WAITS`](super::guard::SECTION_WAITS)
//! rounds.

use super::guard;
use crate::runtime::cpu;
use crate::section::{Id, Index, Outcome, Thread, MAX_ATTEMPTS};
use crate::stats::{self, Cause};

/// What one attempt came to.
pub(crate) enum Step<R> {
    /// The operation is complete: committed, or found nothing to do.
    Done(R),
    /// The data changed between the caller's read and the section: read
    /// it again and retry.
    Again,
    /// The kernel aborted the section.
    Aborted,
    /// The section found the data's guard set to this token.
    Guarded(u64),
    /// The operation cannot run as a section here (no slot for this id, a
    /// slot this thread holds): complete it on the fallback path.
    Leave(Cause),
}

impl<R> Step<R> {
    /// The same step, with `f` applied to a [`Done`](Step::Done) value.
    #[inline(always)]
    pub(crate) fn map<S>(self, f: impl FnOnce(R) -> S) -> Step<S> {
        match self {
            Step::Done(r) => Step::Done(f(r)),
            Step::Again => Step::Again,
            Step::Aborted => Step::Aborted,
            Step::Guarded(seen) => Step::Guarded(seen),
            Step::Leave(cause) => Step::Leave(cause),
        }
    }
}

impl<T> From<Outcome<T>> for Step<T> {
    #[inline(always)]
    fn from(outcome: Outcome<T>) -> Self {
        match outcome {
            Outcome::Committed(value) => Step::Done(value),
            Outcome::CompareFailed { .. } => Step::Again,
            Outcome::Guarded { seen } => Step::Guarded(seen),
            Outcome::Aborted => Step::Aborted,
        }
    }
}

/// The retry policy: consecutive aborts, and rounds spent waiting on a
/// guard.
#[derive(Default)]
pub(crate) struct Retry {
    aborts: u32,
    waits: u32,
}

impl Retry {
    /// A section aborted (on `stripe`, its CPU or slot): go again, or leave
    /// after [`MAX_ATTEMPTS`] in a row.
    #[inline]
    pub(crate) fn aborted(&mut self, stripe: usize) -> Result<(), Cause> {
        stats::record_abort(stripe);
        self.aborts += 1;
        match self.aborts < MAX_ATTEMPTS {
            true => Ok(()),
            false => Err(Cause::RetriesExhausted),
        }
    }

    /// A section found the guard set to `seen`: wait a round (yielding), or
    /// leave.
    #[inline]
    pub(crate) fn guarded(&mut self, seen: u64) -> Result<(), Cause> {
        self.waits += 1;
        if guard::section_gives_up(seen, self.waits) {
            return Err(Cause::GuardGivenUp);
        }
        std::thread::yield_now();
        Ok(())
    }
}

/// Runs the section path of one operation: `attempt(thread, id)` with the
/// calling thread's current id of kind `index`, again after an abort or a
/// change, until it is [`Step::Done`]; `Err` says why the operation must
/// complete on the fallback path instead.
#[inline(always)]
pub(crate) fn sections<R>(
    index: Index,
    mut attempt: impl FnMut(&Thread, Id) -> Step<R>,
) -> Result<R, Cause> {
    let Some(t) = Thread::current() else {
        return Err(Cause::NoRseq);
    };
    let mut retry = Retry::default();
    loop {
        let Some(id) = t.id(index) else {
            return Err(Cause::IdOutOfRange);
        };
        match attempt(&t, id) {
            Step::Done(r) => return Ok(r),
            Step::Again => {}
            Step::Aborted => retry.aborted(id.as_usize())?,
            Step::Guarded(seen) => retry.guarded(seen)?,
            Step::Leave(cause) => return Err(cause),
        }
    }
}

/// The slot index the fallback path works on: the CPU the thread runs on,
/// folded below `len`. Counts the operation as completed on the fallback
/// path for `cause`.
#[inline]
pub(crate) fn fallback_index(cause: Cause, len: usize) -> usize {
    let index = cpu::fold(cpu::raw_cpu(), len);
    stats::record_fallback(cause, index);
    index
}
