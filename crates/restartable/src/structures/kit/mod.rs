//! What every per-CPU structure is built from, written once:
//!
//! - [`retry`]: the retry driver of the section path: one attempt after
//!   another with the thread's current id, until the section commits or
//!   the operation must leave for the fallback path (and why);
//! - [`guard`]: the guarded slot and its protocol (guard, fence, plain
//!   code, release), by which a thread that cannot run a section on some
//!   data still gets exclusive use of it;
//! - the per-CPU storage: [`padded`] slots on cache lines of their own,
//!   [`dense`] (all slots at once) and [`sparse`] (each slot on first use);
//! - [`word`]: pointers as the words sections compare and store.

pub(crate) mod dense;
pub(crate) mod guard;
pub(crate) mod padded;
pub(crate) mod retry;
pub(crate) mod sparse;
pub(crate) mod word;
