// Calls are outside the language: a section cannot run arbitrary code.
fn helper(x: u64) -> u64 {
    x + 1
}

restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    unsafe fn calls(base: *mut u64, n: u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 3);
        let v = helper(load64(at));
        commit!(store64(at, v));
    }
}

fn main() {}
