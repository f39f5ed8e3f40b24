//! Size classes: every request up to [`MAX`] bytes is served from the
//! smallest class that holds it, with at most 25% of an object wasted
//! (above 128 bytes; below, at most 15 bytes).
//!
//! | sizes | classes | step |
//! |---|---|---|
//! | 16 to 128 | 8 | 16 bytes |
//! | above 2^k up to 2^(k+1), k = 7..=17 | 4 each | 2^k / 4 |
//!
//! Every class size is a multiple of 16, so every object is 16-byte
//! aligned. Objects of a class lie at multiples of its size from the start
//! of a run of spans, and runs start on a [`SPAN`] boundary, so an object's
//! alignment is the largest power of two dividing its class size
//! ([`alignment`]); every power of two from 16 bytes to 256 KiB is a class.
//!
//! Each class is carved from runs of [`run_spans`] spans: the fewest that
//! waste at most an eighth of the run, at most [`MAX_RUN_SPANS`].

/// Bytes of a span: the unit the address range is handed out in, and the
/// granularity of the span table.
pub const SPAN: usize = 256 * 1024;
/// log2 of [`SPAN`].
pub const SPAN_SHIFT: u32 = 18;
const _: () = assert!(1 << SPAN_SHIFT == SPAN);

/// The number of classes.
pub const COUNT: usize = 52;
/// The largest size served from a class: 256 KiB.
pub const MAX: usize = 256 * 1024;
/// The most spans one run of a class takes.
pub const MAX_RUN_SPANS: usize = 8;

/// The class sizes, ascending.
pub const SIZES: [u32; COUNT] = sizes();

const fn sizes() -> [u32; COUNT] {
    let mut s = [0u32; COUNT];
    let mut i = 0;
    while i < 8 {
        s[i] = 16 * (i as u32 + 1);
        i += 1;
    }
    let mut p = 128u32;
    while i < COUNT {
        let mut k = 1;
        while k <= 4 {
            s[i] = p + p / 4 * k;
            i += 1;
            k += 1;
        }
        p *= 2;
    }
    s
}
const _: () = assert!(SIZES[COUNT - 1] as usize == MAX);

/// Spans per run, by class.
const RUNS: [u8; COUNT] = runs();

const fn runs() -> [u8; COUNT] {
    let mut r = [0u8; COUNT];
    let mut c = 0;
    while c < COUNT {
        let size = SIZES[c] as usize;
        let mut n = 1;
        // The fewest spans wasting at most an eighth of the run.
        while n < MAX_RUN_SPANS && (n * SPAN) % size > n * SPAN / 8 {
            n += 1;
        }
        r[c] = n as u8;
        c += 1;
    }
    r
}

/// The class serving `size` bytes (0 is served as 16: `malloc(0)` returns
/// a unique pointer); `None` above [`MAX`].
#[inline]
pub const fn class_of(size: usize) -> Option<usize> {
    if size <= 128 {
        return Some(if size == 0 { 0 } else { (size - 1) / 16 });
    }
    if size > MAX {
        return None;
    }
    // size in (2^k, 2^(k+1)], k >= 7: four steps of 2^k / 4.
    let k = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    let p = 1usize << k;
    let step = p / 4;
    Some(8 + (k - 7) * 4 + (size - p).div_ceil(step) - 1)
}

/// The class serving `size` bytes aligned to `align`; `None` when no
/// class can (above [`MAX`] in size or alignment) or `align` is not a
/// power of two.
#[inline]
pub const fn class_for(size: usize, align: usize) -> Option<usize> {
    if !align.is_power_of_two() {
        return None;
    }
    if align <= 16 {
        return class_of(size);
    }
    let Some(mut c) = class_of(if size > align { size } else { align }) else {
        return None;
    };
    // A power-of-two class of at least `align` comes within four steps.
    while !(SIZES[c] as usize).is_multiple_of(align) {
        c += 1;
        if c == COUNT {
            return None;
        }
    }
    Some(c)
}

/// How to test divisibility by a class size without dividing: the
/// size's power of two (a shift), the inverse of its odd part modulo 2^64,
/// and the largest quotient (`u64::MAX / odd`).
#[derive(Clone, Copy)]
struct Divisor {
    shift: u32,
    inverse: u64,
    limit: u64,
}

const DIVISORS: [Divisor; COUNT] = divisors();

const fn divisors() -> [Divisor; COUNT] {
    let mut d = [Divisor {
        shift: 0,
        inverse: 0,
        limit: 0,
    }; COUNT];
    let mut c = 0;
    while c < COUNT {
        let size = SIZES[c] as u64;
        let shift = size.trailing_zeros();
        let odd = size >> shift;
        // Newton's iteration doubles the correct low bits each step:
        // 3 bits from `odd` itself (odd * odd = 1 mod 8), 6 steps to 64.
        let mut inverse = odd;
        let mut k = 0;
        while k < 6 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(inverse)));
            k += 1;
        }
        d[c] = Divisor {
            shift,
            inverse,
            limit: u64::MAX / odd,
        };
        c += 1;
    }
    d
}

/// Whether `offset` is a multiple of class `class`'s size: an object's
/// start in its run. A shift, a multiplication and two comparisons.
#[inline]
pub const fn divides(class: usize, offset: usize) -> bool {
    let d = DIVISORS[class];
    let x = offset as u64;
    x & ((1 << d.shift) - 1) == 0 && (x >> d.shift).wrapping_mul(d.inverse) <= d.limit
}

/// Bytes of an object of class `class`.
#[inline]
pub const fn size(class: usize) -> usize {
    SIZES[class] as usize
}

/// The alignment every object of class `class` has: the largest power of
/// two dividing its size.
#[inline]
pub const fn alignment(class: usize) -> usize {
    let s = size(class);
    s & s.wrapping_neg()
}

/// Spans in one run of class `class`.
#[inline]
pub const fn run_spans(class: usize) -> usize {
    RUNS[class] as usize
}

/// Bytes of a run of class `class` that objects cover (the run's tail
/// beyond the last whole object holds none).
#[inline]
pub const fn run_bytes(class: usize) -> usize {
    RUN_BYTES[class] as usize
}

const RUN_BYTES: [u32; COUNT] = {
    let mut b = [0u32; COUNT];
    let mut c = 0;
    while c < COUNT {
        b[c] = (objects_per_run(c) * size(c)) as u32;
        c += 1;
    }
    b
};

/// Objects in one run of class `class`.
#[inline]
pub const fn objects_per_run(class: usize) -> usize {
    run_spans(class) * SPAN / size(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_ascend_in_multiples_of_16_with_bounded_waste() {
        for c in 1..COUNT {
            assert!(SIZES[c] > SIZES[c - 1]);
        }
        for c in 0..COUNT {
            assert_eq!(size(c) % 16, 0, "class {c}");
            assert!(alignment(c) >= 16);
        }
        for k in 4..=18 {
            assert!(SIZES.contains(&(1 << k)), "2^{k} is a class");
        }
    }

    #[test]
    fn every_size_gets_the_smallest_class_that_holds_it() {
        for size in 0..=MAX {
            let c = class_of(size).unwrap();
            assert!(super::size(c) >= size.max(1), "size {size}");
            if c > 0 {
                assert!(
                    super::size(c - 1) < size,
                    "size {size}: class {c} is not the smallest"
                );
            }
            if size > 128 {
                assert!(super::size(c) - size <= super::size(c) / 4, "size {size}");
            } else {
                assert!(super::size(c) - size.max(1) < 16, "size {size}");
            }
        }
        assert_eq!(class_of(MAX + 1), None);
        assert_eq!(class_of(usize::MAX), None);
    }

    #[test]
    fn every_alignment_up_to_the_largest_class_is_served() {
        for shift in 0..=18 {
            let align = 1usize << shift;
            for size in (0..=MAX).step_by(997).chain([align, align + 1, MAX]) {
                match class_for(size, align) {
                    Some(c) => {
                        assert!(super::size(c) >= size, "size {size} align {align}");
                        assert_eq!(alignment(c) % align.max(16), 0, "size {size} align {align}");
                        // The smallest aligned class.
                        for smaller in 0..c {
                            assert!(
                                super::size(smaller) < size
                                    || !super::size(smaller).is_multiple_of(align),
                                "size {size} align {align}: class {smaller} would do"
                            );
                        }
                    }
                    None => assert!(size > MAX, "size {size} align {align}"),
                }
            }
        }
        assert_eq!(class_for(16, 1 << 19), None);
        assert_eq!(class_for(16, 0), None);
        assert_eq!(class_for(16, 48), None);
    }

    #[test]
    fn divisibility_matches_the_remainder() {
        for c in 0..COUNT {
            let run = run_spans(c) * SPAN;
            for offset in (0..run).step_by(8).chain([usize::MAX - 15, 1 << 40]) {
                assert_eq!(
                    divides(c, offset),
                    offset % size(c) == 0,
                    "class {c} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn runs_hold_objects_and_waste_at_most_an_eighth() {
        for c in 0..COUNT {
            let run = run_spans(c) * SPAN;
            assert!((1..=MAX_RUN_SPANS).contains(&run_spans(c)));
            assert!(objects_per_run(c) >= 1, "class {c}");
            assert!(
                run % size(c) <= run / 8,
                "class {c}: {} of {run} wasted",
                run % size(c)
            );
        }
    }
}
