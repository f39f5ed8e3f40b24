// A step after the commit runs after the section's effect is published.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    #[owned(spare)]
    unsafe fn after(base: *mut u64, n: u64, spare: *mut u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 3);
        let v = load64(at);
        commit!(store64(at, v + 1));
        store64(spare, v);
    }
}

fn main() {}
