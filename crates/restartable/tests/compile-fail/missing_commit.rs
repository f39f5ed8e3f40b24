// A section without its commit.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    unsafe fn no_commit(base: *mut u64, n: u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 3);
        let v = load64(at);
        if v == 0 { exit!(Full) }
    }
}

fn main() {}
