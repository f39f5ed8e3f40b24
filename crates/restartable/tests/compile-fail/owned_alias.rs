// An owned name bound to published memory: `slot` would let the section
// store speculatively to `base`'s word.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange)]
    #[owned(slot)]
    unsafe fn alias(base: *mut u64, n: u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 3);
        let slot = at;
        store64(slot, 1);
        commit!(store64(at + 8, 2));
    }
}

fn main() {}
