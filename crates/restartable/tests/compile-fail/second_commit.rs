// Two commits: the first would publish before the section is done.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    unsafe fn two_commits(base: *mut u64, n: u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 3);
        let v = load64(at);
        commit!(store64(at, v + 1));
        commit!(store64(at + 8, v));
    }
}

fn main() {}
