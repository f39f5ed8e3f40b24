// An input named like an item of the expansion.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange)]
    unsafe fn clash(run: *mut u64, n: u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        commit!(store64(run + (id << 3), 1));
    }
}

fn main() {}
