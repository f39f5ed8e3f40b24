//! [`RemoteError`]: why work on another CPU's data, or on a slot chosen by
//! index, could not be done.

use super::kit::guard::Refused;
use crate::fence;

/// Why an operation on another CPU's data (or a slot chosen by index) could
/// not be done: [`PerCpuU64::fetch_update_on`], [`PerCpu::lock_slot`],
/// [`Stack::pop_all_on`], [`Pool::flush`], [`Buffer::drain`] and the like.
///
/// [`PerCpuU64::fetch_update_on`]: crate::PerCpuU64::fetch_update_on
/// [`PerCpu::lock_slot`]: crate::PerCpu::lock_slot
/// [`Stack::pop_all_on`]: crate::Stack::pop_all_on
/// [`Pool::flush`]: crate::Pool::flush
/// [`Buffer::drain`]: crate::Buffer::drain
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemoteError {
    /// The CPU (or slot index) is not below
    /// [`possible_cpus`](crate::possible_cpus) (or the structure's length).
    NoSuchCpu,
    /// No fence could be made; nothing was changed.
    Fence(fence::FenceError),
    /// The calling thread already holds this data (a nested call, or a
    /// signal handler that interrupted the thread while it held it), or it
    /// holds other guarded data while another thread holds this: waiting
    /// then could deadlock, so the operation is refused.
    Busy,
    /// A [`PerCpu`](crate::PerCpu) slot is poisoned (a thread panicked
    /// while holding it, or it was taken over from a thread `fork` left
    /// behind): look at it with [`lock_slot`](crate::PerCpu::lock_slot),
    /// then clear the mark with
    /// [`PerCpuGuard::clear_poison`](crate::PerCpuGuard::clear_poison).
    Poisoned {
        /// The slot's index.
        index: usize,
    },
}

impl core::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RemoteError::NoSuchCpu => f.write_str("no such CPU or slot"),
            RemoteError::Fence(e) => e.fmt(f),
            RemoteError::Busy => f.write_str("this thread already holds that data"),
            RemoteError::Poisoned { index } => write!(
                f,
                "slot {index} is poisoned (a holder panicked, or vanished in a fork)"
            ),
        }
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RemoteError::Fence(e) => Some(e),
            _ => None,
        }
    }
}

/// The remote error for a guard the caller could not hold: this thread
/// holds it, or holds another while someone else holds this one (both
/// [`RemoteError::Busy`]), or no fence could be made.
pub(crate) fn refused(refused: Refused) -> RemoteError {
    match refused {
        Refused::Mine | Refused::Busy => RemoteError::Busy,
        Refused::Fence(e) => RemoteError::Fence(e),
    }
}

impl From<fence::FenceError> for RemoteError {
    fn from(e: fence::FenceError) -> Self {
        RemoteError::Fence(e)
    }
}
