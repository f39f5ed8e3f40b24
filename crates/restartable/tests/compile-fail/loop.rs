// Loops other than the bounded copy.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    unsafe fn loops(base: *mut u64, n: u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 3);
        loop {}
        commit!(store64(at, 1));
    }
}

fn main() {}
