// A speculative store to memory the section does not own.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    unsafe fn publishes(base: *mut u64, n: u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 3);
        let v = load64(at);
        store64(at + 8, v);
        commit!(store64(at, v + 1));
    }
}

fn main() {}
