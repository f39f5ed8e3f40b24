// An `if` as a value (and every other expression outside the language).
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    unsafe fn branchy(base: *mut u64, n: u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 3);
        let v = if n > 1 { 1 } else { 2 };
        commit!(store64(at, v));
    }
}

fn main() {}
