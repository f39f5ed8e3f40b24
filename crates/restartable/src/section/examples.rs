//! The worked examples of the [section language](super::language), each
//! with its sequential specification. They are tested three ways: by the
//! model checker (`tests/model.rs`, every architecture's lowered form), on
//! the rseq path by many threads at once (`tests/language.rs`), and by
//! `restartable stress --mode ring|bounded-stack|histogram`.
//!
//! Their memory is plain per-CPU blocks the caller allocates: the
//! sections take the base address and the number of blocks, and find the
//! current CPU's block as `base + (cpu << shift)`.

/// Bytes per CPU of a [`ring_append`] ring: a 64-byte header (tail, head,
/// guard) then [`RING_SLOTS`] `u64` slots.
pub const RING_STRIDE: usize = 1024;
/// Slots of a ring.
pub const RING_SLOTS: u64 = 64;
/// Byte offset of a ring's tail (written by appends).
pub const RING_TAIL: usize = 0;
/// Byte offset of a ring's head (written by takes).
pub const RING_HEAD: usize = 8;
/// Byte offset of a ring's guard (set by a thread that drains the ring
/// from another CPU, before it fences).
pub const RING_GUARD: usize = 16;
/// Byte offset of a ring's first slot.
pub const RING_DATA: usize = 64;

crate::section! {
    /// Appends `value` to the current CPU's ring, a bounded FIFO of
    /// [`RING_SLOTS`] words in the block at `rings + cpu * RING_STRIDE`.
    ///
    /// Specification, on the block of the current CPU `c`:
    /// - `c >= ncpus`: `Exit(OutOfRange)`;
    /// - the guard is set to `g != 0`: `Exit(Guarded(g))`;
    /// - `tail - head >= RING_SLOTS`: `Exit(Full)`;
    /// - else `slot[tail % RING_SLOTS] = value`, `tail += 1`, and the
    ///   section returns the old `tail`. Nothing else changes.
    ///
    /// The slot is written before the commit, speculatively: it lies
    /// outside `head..tail`, so no reader looks at it until the commit
    /// (a release) moves `tail` past it.
    #[index(cpu_id)]
    #[exits(OutOfRange, Guarded(u64), Full)]
    #[owned(slot)]
    pub unsafe fn ring_append(rings: *mut u8, ncpus: u64, value: u64) -> u64 {
        let cpu = current_id();
        if cpu >= ncpus { exit!(OutOfRange) }
        let ring = rings + (cpu << 10);
        let guard = load_acquire64(ring + 16);
        if guard != 0 { exit!(Guarded(guard)) }
        let tail = load64(ring);
        let head = load64(ring + 8);
        let used = tail - head;
        if used >= 64 { exit!(Full) }
        let slot = ring + 64 + ((tail & 63) << 3);
        store64(slot, value);
        commit!(release, store64(ring, tail + 1));
        tail
    }
}

crate::section! {
    /// Takes the oldest value from the current CPU's ring (see
    /// [`ring_append`]).
    ///
    /// Specification: `Exit(OutOfRange)` and `Exit(Guarded(g))` as for
    /// `ring_append`; `head == tail`: `Exit(Empty)`; else returns
    /// `slot[head % RING_SLOTS]` and `head += 1`.
    #[index(cpu_id)]
    #[exits(OutOfRange, Guarded(u64), Empty)]
    pub unsafe fn ring_take(rings: *mut u8, ncpus: u64) -> u64 {
        let cpu = current_id();
        if cpu >= ncpus { exit!(OutOfRange) }
        let ring = rings + (cpu << 10);
        let guard = load_acquire64(ring + 16);
        if guard != 0 { exit!(Guarded(guard)) }
        let tail = load64(ring);
        let head = load64(ring + 8);
        if head == tail { exit!(Empty) }
        let value = load64(ring + 64 + ((head & 63) << 3));
        commit!(store64(ring + 8, head + 1));
        value
    }
}

/// Bytes per CPU of a bounded stack: a 32-bit count, then 32-bit slots.
pub const STACK_STRIDE: usize = 256;
/// Byte offset of the first slot.
pub const STACK_DATA: usize = 4;
/// Slots that fit in a block; a push's `capacity` must not exceed it.
pub const STACK_SLOTS: u64 = 63;

crate::section! {
    /// Pushes the 32-bit `value` on the current CPU's bounded stack (block
    /// `stacks + cpu * STACK_STRIDE`: a `u32` count, then `u32` slots),
    /// unless it already holds `capacity` values.
    ///
    /// Specification, on the block of the current CPU `c`:
    /// - `c >= ncpus`: `Exit(OutOfRange)`;
    /// - `count >= capacity`: `Exit(Full(count))`;
    /// - else `slot[count] = value`, `count += 1`; returns the new count.
    #[index(cpu_id)]
    #[exits(OutOfRange, Full(u32))]
    #[owned(slot)]
    pub unsafe fn stack_push(stacks: *mut u8, ncpus: u64, capacity: u64, value: u32) -> u32 {
        let cpu = current_id();
        if cpu >= ncpus { exit!(OutOfRange) }
        let stack = stacks + (cpu << 8);
        let count = load32(stack);
        if count >= capacity { exit!(Full(count)) }
        let slot = stack + 4 + (count << 2);
        store32(slot, value);
        let pushed = count + 1;
        commit!(store32(stack, pushed));
        pushed
    }
}

crate::section! {
    /// Pops the top of the current CPU's bounded stack (see
    /// [`stack_push`]): `Exit(Empty)` when the count is 0, else returns
    /// `slot[count - 1]` and `count -= 1`.
    #[index(cpu_id)]
    #[exits(OutOfRange, Empty)]
    pub unsafe fn stack_pop(stacks: *mut u8, ncpus: u64) -> u32 {
        let cpu = current_id();
        if cpu >= ncpus { exit!(OutOfRange) }
        let stack = stacks + (cpu << 8);
        let count = load32(stack);
        if count == 0 { exit!(Empty) }
        let value = load32(stack + (count << 2));
        commit!(store32(stack, count - 1));
        value
    }
}

/// Bytes per CPU of a histogram: [`HISTOGRAM_BUCKETS`] `u64` counts.
pub const HISTOGRAM_STRIDE: usize = 128;
/// Buckets per histogram; bucket `b` counts samples in `16 * b..16 * (b + 1)`.
pub const HISTOGRAM_BUCKETS: u64 = 16;

crate::section! {
    /// Counts `sample` in the current CPU's histogram (block
    /// `histograms + cpu * HISTOGRAM_STRIDE`), in bucket `sample / 16`.
    ///
    /// Specification, on the block of the current CPU `c`:
    /// - `c >= ncpus`: `Exit(OutOfRange)`;
    /// - `sample / 16 >= HISTOGRAM_BUCKETS`: `Exit(TooLarge(sample))`;
    /// - else `bucket[sample / 16] += 1`; returns the new count.
    #[index(cpu_id)]
    #[exits(OutOfRange, TooLarge(u64))]
    pub unsafe fn histogram_add(histograms: *mut u8, ncpus: u64, sample: u64) -> u64 {
        let cpu = current_id();
        if cpu >= ncpus { exit!(OutOfRange) }
        let bucket = sample >> 4;
        if bucket >= 16 { exit!(TooLarge(sample)) }
        let at = histograms + (cpu << 7) + (bucket << 3);
        let count = load64(at) + 1;
        commit!(store64(at, count));
        count
    }
}

#[cfg(test)]
mod tests {
    //! The twins in plain Rust (so under Miri too): each example's
    //! specification, run to its exits.
    use super::*;
    use crate::section::Run;

    #[test]
    fn the_ring_fills_and_empties_in_order() {
        let mut mem = vec![0u64; 2 * RING_STRIDE / 8];
        let rings = mem.as_mut_ptr().cast::<u8>();
        for v in 0..RING_SLOTS {
            // SAFETY: `mem` holds two rings; no section runs on it.
            assert_eq!(
                unsafe { ring_append::twin(1, rings, 2, 100 + v) },
                Run::Committed(v)
            );
        }
        // SAFETY: as above.
        assert_eq!(
            unsafe { ring_append::twin(1, rings, 2, 0) },
            Run::Exit(ring_append::Exit::Full)
        );
        assert_eq!(
            unsafe { ring_append::twin(2, rings, 2, 0) },
            Run::Exit(ring_append::Exit::OutOfRange)
        );
        for v in 0..RING_SLOTS {
            // SAFETY: as above.
            assert_eq!(
                unsafe { ring_take::twin(1, rings, 2) },
                Run::Committed(100 + v)
            );
        }
        // SAFETY: as above.
        assert_eq!(
            unsafe { ring_take::twin(1, rings, 2) },
            Run::Exit(ring_take::Exit::Empty)
        );
        assert_eq!(
            unsafe { ring_take::twin(0, rings, 2) },
            Run::Exit(ring_take::Exit::Empty)
        );
        mem[RING_STRIDE / 8 + RING_GUARD / 8] = 5;
        let rings = mem.as_mut_ptr().cast::<u8>();
        // SAFETY: as above.
        assert_eq!(
            unsafe { ring_take::twin(1, rings, 2) },
            Run::Exit(ring_take::Exit::Guarded(5))
        );
    }

    #[test]
    fn the_stack_keeps_its_capacity() {
        let mut mem = vec![0u64; 2 * STACK_STRIDE / 8];
        let stacks = mem.as_mut_ptr().cast::<u8>();
        for n in 1..=3 {
            // SAFETY: `mem` holds two stacks; no section runs on it.
            assert_eq!(
                unsafe { stack_push::twin(0, stacks, 2, 3, 7 * n) },
                Run::Committed(n)
            );
        }
        // SAFETY: as above.
        assert_eq!(
            unsafe { stack_push::twin(0, stacks, 2, 3, 1) },
            Run::Exit(stack_push::Exit::Full(3))
        );
        for n in (1..=3).rev() {
            // SAFETY: as above.
            assert_eq!(
                unsafe { stack_pop::twin(0, stacks, 2) },
                Run::Committed(7 * n)
            );
        }
        // SAFETY: as above.
        assert_eq!(
            unsafe { stack_pop::twin(0, stacks, 2) },
            Run::Exit(stack_pop::Exit::Empty)
        );
    }

    #[test]
    fn the_histogram_counts_by_bucket() {
        let mut mem = vec![0u64; 2 * HISTOGRAM_STRIDE / 8];
        let h = mem.as_mut_ptr().cast::<u8>();
        for s in 0..256 {
            // SAFETY: `mem` holds two histograms; no section runs on it.
            assert!(unsafe { histogram_add::twin(1, h, 2, s) }.is_committed());
        }
        // SAFETY: as above.
        assert_eq!(
            unsafe { histogram_add::twin(1, h, 2, 256) },
            Run::Exit(histogram_add::Exit::TooLarge(256))
        );
        assert!(mem[..16].iter().all(|&n| n == 0));
        assert!(mem[16..].iter().all(|&n| n == 16));
    }
}
