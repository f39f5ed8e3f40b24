//! The membarrier rseq fence (`MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ`,
//! Linux 5.10+): after it returns, every critical section that was running
//! on the fenced CPUs has committed or aborted. Source: `man 2 membarrier`.

use crate::{abi, sys};

/// True when the kernel offers the rseq fence (reported by
/// `membarrier(MEMBARRIER_CMD_QUERY)`); false when membarrier is missing,
/// refused, or lacks the command.
pub fn rseq_fence_supported() -> bool {
    sys::membarrier(abi::MEMBARRIER_CMD_QUERY, 0, 0)
        .is_ok_and(|mask| mask & i64::from(abi::MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) != 0)
}
