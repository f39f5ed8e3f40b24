// More live values than x86-64 gives an asm! block.
restartable::section! {
    #[index(cpu_id)]
    #[exits(OutOfRange, Full)]
    unsafe fn greedy(base: *mut u64, n: u64) -> (u64, u64, u64, u64, u64, u64, u64, u64, u64, u64) {
        let id = current_id();
        if id >= n { exit!(OutOfRange) }
        let at = base + (id << 7);
        let a = load64(at);
        let b = load64(at + 8);
        let c = load64(at + 16);
        let d = load64(at + 24);
        let e = load64(at + 32);
        let f = load64(at + 40);
        let g = load64(at + 48);
        let h = load64(at + 56);
        let i = load64(at + 64);
        let j = load64(at + 72);
        commit!(store64(at, a + 1));
        (a, b, c, d, e, f, g, h, i, j)
    }
}

fn main() {}
