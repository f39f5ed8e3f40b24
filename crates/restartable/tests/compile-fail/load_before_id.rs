// A load before the id is read sees whichever CPU's data it likes.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    unsafe fn early(base: *mut u64, n: u64) {
        let v = load64(base);
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        commit!(store64(base + (id << 3), v));
    }
}

fn main() {}
