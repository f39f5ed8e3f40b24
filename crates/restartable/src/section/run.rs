//! What one attempt at a section written in the section language did.

/// The result of one attempt at a section written with
/// [`section!`](crate::section!): `C` is what it returns when it commits,
/// `E` the generated enum of its exits.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Run<C, E> {
    /// The commit store executed; the values the section returns.
    Committed(C),
    /// The section left through a named exit before its commit; nothing
    /// was published.
    Exit(E),
    /// The kernel aborted the section (preemption, migration, signal) or
    /// the thread's area is gone. Nothing was committed; try again.
    Aborted,
}

impl<C, E> Run<C, E> {
    /// Whether the commit executed.
    pub fn is_committed(&self) -> bool {
        matches!(self, Run::Committed(_))
    }

    /// The committed value, if the section committed.
    pub fn committed(self) -> Option<C> {
        match self {
            Run::Committed(c) => Some(c),
            _ => None,
        }
    }

    /// The exit, if the section left through one.
    pub fn exit(self) -> Option<E> {
        match self {
            Run::Exit(e) => Some(e),
            _ => None,
        }
    }
}
