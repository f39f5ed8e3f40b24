//! The model checker on the worked examples (every architecture's lowered
//! form, aborts at every instruction boundary, the structure's other
//! sections in between, a remote guard-and-fence actor), and on three
//! deliberately broken sections, one per classic mistake, which it must
//! reject.

use restartable::section::examples::*;
use restartable_lang::model::{check, Case, Check, Memory, Other, Outcome, Remote};
use restartable_lang::Section;

const NCPUS: u64 = 2;

fn parse(source: &str) -> Section {
    restartable_lang::parse(source).expect("the example parses")
}

/// A memory with `NCPUS` blocks of `stride` bytes; returns it and the base.
fn blocks(stride: usize) -> (Memory, u64) {
    let mut m = Memory::new();
    let base = m.alloc(stride * NCPUS as usize);
    (m, base)
}

// ---- the ring -------------------------------------------------------

fn ring(base: u64, cpu: u32) -> u64 {
    base + RING_STRIDE as u64 * cpu as u64
}

fn ring_append_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let (rings, ncpus, value) = (i[0], i[1], i[2]);
    if id as u64 >= ncpus {
        return Outcome::Exit(0, vec![]);
    }
    let r = ring(rings, id);
    let guard = m.get(r + RING_GUARD as u64);
    if guard != 0 {
        return Outcome::Exit(1, vec![guard]);
    }
    let (tail, head) = (m.get(r), m.get(r + RING_HEAD as u64));
    if tail - head >= RING_SLOTS {
        return Outcome::Exit(2, vec![]);
    }
    m.set(r + RING_DATA as u64 + 8 * (tail % RING_SLOTS), value);
    m.set(r, tail + 1);
    Outcome::Committed(vec![tail])
}

fn ring_take_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let (rings, ncpus) = (i[0], i[1]);
    if id as u64 >= ncpus {
        return Outcome::Exit(0, vec![]);
    }
    let r = ring(rings, id);
    let guard = m.get(r + RING_GUARD as u64);
    if guard != 0 {
        return Outcome::Exit(1, vec![guard]);
    }
    let (tail, head) = (m.get(r), m.get(r + RING_HEAD as u64));
    if head == tail {
        return Outcome::Exit(2, vec![]);
    }
    let v = m.get(r + RING_DATA as u64 + 8 * (head % RING_SLOTS));
    m.set(r + RING_HEAD as u64, head + 1);
    Outcome::Committed(vec![v])
}

/// What readers may see of the rings: tail, head, guard and the values
/// between head and tail.
fn ring_observe(base: u64) -> impl Fn(&Memory) -> Vec<u64> {
    move |m| {
        let mut seen = Vec::new();
        for cpu in 0..NCPUS as u32 {
            let r = ring(base, cpu);
            let (tail, head) = (m.get(r), m.get(r + RING_HEAD as u64));
            seen.extend([tail, head, m.get(r + RING_GUARD as u64)]);
            for n in head..tail.min(head + RING_SLOTS) {
                seen.push(m.get(r + RING_DATA as u64 + 8 * (n % RING_SLOTS)));
            }
        }
        seen
    }
}

/// Ring states: empty, holding three, full, wrapped around, and guarded.
fn ring_cases(base: u64, mem: &Memory, inputs: &[u64], cpu: u32) -> Vec<Case> {
    let r = ring(base, cpu);
    let states: [(u64, u64, u64); 5] = [(0, 0, 0), (3, 0, 0), (64, 0, 0), (70, 10, 0), (5, 2, 9)];
    let mut cases = Vec::new();
    for (tail, head, guard) in states {
        let mut m = mem.clone();
        m.set(r, tail);
        m.set(r + RING_HEAD as u64, head);
        m.set(r + RING_GUARD as u64, guard);
        for n in head..tail {
            m.set(r + RING_DATA as u64 + 8 * (n % RING_SLOTS), 1000 + n);
        }
        cases.push(Case {
            memory: m,
            id: cpu,
            inputs: inputs.to_vec(),
        });
    }
    cases
}

fn out_of_range(mem: &Memory, inputs: &[u64]) -> Vec<Case> {
    [NCPUS as u32, u32::MAX]
        .map(|id| Case {
            memory: mem.clone(),
            id,
            inputs: inputs.to_vec(),
        })
        .to_vec()
}

/// The remote drain of CPU `cpu`'s ring: set its guard, fence, take every
/// value, clear the guard.
fn drain(
    base: u64,
    cpu: u32,
) -> (
    impl Fn(&mut Memory),
    impl Fn(&mut Memory),
    impl Fn(&mut Memory),
) {
    let r = ring(base, cpu);
    (
        move |m: &mut Memory| m.set(r + RING_GUARD as u64, 7),
        move |m: &mut Memory| {
            let tail = m.get(r);
            m.set(r + RING_HEAD as u64, tail);
        },
        move |m: &mut Memory| m.set(r + RING_GUARD as u64, 0),
    )
}

fn check_ring(append: &Section, take: &Section) -> Result<u64, String> {
    let (mem, base) = blocks(RING_STRIDE);
    let mut aborts = 0;
    for cpu in 0..NCPUS as u32 {
        let (set, work, clear) = drain(base, cpu);
        let observe = ring_observe(base);
        let append_in = [base, NCPUS, 0xabc];
        let mut cases = ring_cases(base, &mem, &append_in, cpu);
        if cpu == 0 {
            cases.extend(out_of_range(&mem, &append_in));
        }
        let report = check(&Check {
            section: append,
            spec: &ring_append_spec,
            observe: &observe,
            cases,
            others: vec![Other {
                section: take,
                inputs: vec![base, NCPUS],
                spec: &ring_take_spec,
            }],
            remote: Some(Remote {
                set_guard: &set,
                work: &work,
                clear_guard: &clear,
            }),
        })?;
        aborts += report.aborts;
        let report = check(&Check {
            section: take,
            spec: &ring_take_spec,
            observe: &observe,
            cases: ring_cases(base, &mem, &[base, NCPUS], cpu),
            others: vec![Other {
                section: append,
                inputs: append_in.to_vec(),
                spec: &ring_append_spec,
            }],
            remote: Some(Remote {
                set_guard: &set,
                work: &work,
                clear_guard: &clear,
            }),
        })?;
        aborts += report.aborts;
    }
    Ok(aborts)
}

#[test]
fn the_ring_meets_its_specification() {
    let aborts = check_ring(&parse(ring_append::SOURCE), &parse(ring_take::SOURCE)).unwrap();
    println!("ring: {aborts} forced aborts checked");
    assert!(aborts > 100);
}

// ---- the bounded stack ---------------------------------------------

fn stack(base: u64, cpu: u32) -> u64 {
    base + STACK_STRIDE as u64 * cpu as u64
}

fn stack_push_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let (stacks, ncpus, capacity, value) = (i[0], i[1], i[2], i[3]);
    if id as u64 >= ncpus {
        return Outcome::Exit(0, vec![]);
    }
    let s = stack(stacks, id);
    let count = m.read(s, 4).unwrap();
    if count >= capacity {
        return Outcome::Exit(1, vec![count]);
    }
    m.write(s + STACK_DATA as u64 + 4 * count, 4, value)
        .unwrap();
    m.write(s, 4, count + 1).unwrap();
    Outcome::Committed(vec![count + 1])
}

fn stack_pop_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let (stacks, ncpus) = (i[0], i[1]);
    if id as u64 >= ncpus {
        return Outcome::Exit(0, vec![]);
    }
    let s = stack(stacks, id);
    let count = m.read(s, 4).unwrap();
    if count == 0 {
        return Outcome::Exit(1, vec![]);
    }
    let v = m.read(s + STACK_DATA as u64 + 4 * (count - 1), 4).unwrap();
    m.write(s, 4, count - 1).unwrap();
    Outcome::Committed(vec![v])
}

fn stack_observe(base: u64) -> impl Fn(&Memory) -> Vec<u64> {
    move |m| {
        let mut seen = Vec::new();
        for cpu in 0..NCPUS as u32 {
            let s = stack(base, cpu);
            let count = m.read(s, 4).unwrap();
            seen.push(count);
            for n in 0..count.min(STACK_SLOTS) {
                seen.push(m.read(s + STACK_DATA as u64 + 4 * n, 4).unwrap());
            }
        }
        seen
    }
}

#[test]
fn the_bounded_stack_meets_its_specification() {
    let (push, pop) = (parse(stack_push::SOURCE), parse(stack_pop::SOURCE));
    let (mem, base) = blocks(STACK_STRIDE);
    let observe = stack_observe(base);
    let mut aborts = 0;
    for cpu in 0..NCPUS as u32 {
        for (count, capacity) in [(0, 4), (2, 4), (4, 4), (5, 4), (62, 63)] {
            let mut m = mem.clone();
            let s = stack(base, cpu);
            m.write(s, 4, count).unwrap();
            for n in 0..count {
                m.write(s + STACK_DATA as u64 + 4 * n, 4, 500 + n).unwrap();
            }
            let push_in = vec![base, NCPUS, capacity, 0xdead_beef];
            let mut cases = vec![Case {
                memory: m.clone(),
                id: cpu,
                inputs: push_in.clone(),
            }];
            if cpu == 0 && count == 0 {
                cases.extend(out_of_range(&m, &push_in));
            }
            let report = check(&Check {
                section: &push,
                spec: &stack_push_spec,
                observe: &observe,
                cases,
                others: vec![Other {
                    section: &pop,
                    inputs: vec![base, NCPUS],
                    spec: &stack_pop_spec,
                }],
                remote: None,
            })
            .unwrap();
            aborts += report.aborts;
            let report = check(&Check {
                section: &pop,
                spec: &stack_pop_spec,
                observe: &observe,
                cases: vec![Case {
                    memory: m,
                    id: cpu,
                    inputs: vec![base, NCPUS],
                }],
                others: vec![Other {
                    section: &push,
                    inputs: push_in,
                    spec: &stack_push_spec,
                }],
                remote: None,
            })
            .unwrap();
            aborts += report.aborts;
        }
    }
    println!("bounded stack: {aborts} forced aborts checked");
    assert!(aborts > 100);
}

// ---- the histogram --------------------------------------------------

fn histogram_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let (base, ncpus, sample) = (i[0], i[1], i[2]);
    if id as u64 >= ncpus {
        return Outcome::Exit(0, vec![]);
    }
    if sample / 16 >= HISTOGRAM_BUCKETS {
        return Outcome::Exit(1, vec![sample]);
    }
    let at = base + HISTOGRAM_STRIDE as u64 * id as u64 + 8 * (sample / 16);
    let n = m.get(at) + 1;
    m.set(at, n);
    Outcome::Committed(vec![n])
}

fn histogram_observe(base: u64) -> impl Fn(&Memory) -> Vec<u64> {
    move |m| {
        (0..NCPUS * HISTOGRAM_BUCKETS)
            .map(|b| m.get(base + 8 * b))
            .collect()
    }
}

fn check_histogram(section: &Section) -> Result<u64, String> {
    let (mut mem, base) = blocks(HISTOGRAM_STRIDE);
    for b in 0..NCPUS * HISTOGRAM_BUCKETS {
        mem.set(base + 8 * b, b * 3);
    }
    let observe = histogram_observe(base);
    let mut cases = Vec::new();
    for sample in [0, 15, 16, 255, 256, u64::MAX] {
        for cpu in 0..NCPUS as u32 {
            cases.push(Case {
                memory: mem.clone(),
                id: cpu,
                inputs: vec![base, NCPUS, sample],
            });
        }
    }
    cases.extend(out_of_range(&mem, &[base, NCPUS, 40]));
    let report = check(&Check {
        section,
        spec: &histogram_spec,
        observe: &observe,
        cases,
        others: vec![],
        remote: None,
    })?;
    Ok(report.aborts)
}

#[test]
fn the_histogram_meets_its_specification() {
    let aborts = check_histogram(&parse(histogram_add::SOURCE)).unwrap();
    println!("histogram: {aborts} forced aborts checked");
    assert!(aborts > 50);
}

// ---- the classic mistakes --------------------------------------------

/// The ring append with its two stores swapped: `tail` is published
/// first, then the slot is written by the "commit".
const PUBLISHES_EARLY: &str = r#"
    #[index(cpu_id)]
    #[exits(OutOfRange, Guarded(u64), Full)]
    #[owned(slot)]
    unsafe fn ring_append(rings: *mut u8, ncpus: u64, value: u64) -> u64 {
        let cpu = current_id();
        if cpu >= ncpus { exit!(OutOfRange) }
        let ring = rings + (cpu << 10);
        let guard = load_acquire64(ring + 16);
        if guard != 0 { exit!(Guarded(guard)) }
        let tail = load64(ring);
        let head = load64(ring + 8);
        let used = tail - head;
        if used >= 64 { exit!(Full) }
        let slot = ring + 64 + ((tail & 63) << 3);
        store64(ring, tail + 1);
        commit!(release, store64(slot, value));
        tail
    }
"#;

/// The ring append without the range check of its id.
const NO_ID_CHECK: &str = r#"
    #[index(cpu_id)]
    #[exits(OutOfRange, Guarded(u64), Full)]
    #[owned(slot)]
    unsafe fn ring_append(rings: *mut u8, ncpus: u64, value: u64) -> u64 {
        let cpu = current_id();
        let ring = rings + (cpu << 10);
        let guard = load_acquire64(ring + 16);
        if guard != 0 { exit!(Guarded(guard)) }
        let tail = load64(ring);
        let head = load64(ring + 8);
        let used = tail - head;
        if used >= 64 { exit!(Full) }
        let slot = ring + 64 + ((tail & 63) << 3);
        store64(slot, value);
        commit!(release, store64(ring, tail + 1));
        tail
    }
"#;

/// A histogram that also counts every sample in a per-CPU total, with a
/// second commit.
const SECOND_COMMIT: &str = r#"
    #[index(cpu_id)]
    #[exits(OutOfRange, TooLarge(u64))]
    unsafe fn histogram_add(histograms: *mut u8, ncpus: u64, sample: u64) -> u64 {
        let cpu = current_id();
        if cpu >= ncpus { exit!(OutOfRange) }
        let bucket = sample >> 4;
        if bucket >= 16 { exit!(TooLarge(sample)) }
        let block = histograms + (cpu << 7);
        let at = block + (bucket << 3);
        let count = load64(at) + 1;
        let last = load64(block + 120);
        commit!(store64(block + 120, last + 1));
        commit!(store64(at, count));
        count
    }
"#;

fn static_error(source: &str) -> String {
    match restartable_lang::parse(source) {
        Ok(_) => panic!("the macro accepted a broken section"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_checker_catches_a_store_to_published_memory_before_the_commit() {
    assert!(static_error(PUBLISHES_EARLY).contains("speculative"));
    let broken = restartable_lang::parse_unchecked(PUBLISHES_EARLY).unwrap();
    let e = check_ring(&broken, &parse(ring_take::SOURCE)).unwrap_err();
    println!("caught: {e}");
    assert!(e.contains("published"), "{e}");
}

#[test]
fn the_checker_catches_a_missing_id_check() {
    assert!(static_error(NO_ID_CHECK).contains("range-checked"));
    let broken = restartable_lang::parse_unchecked(NO_ID_CHECK).unwrap();
    let e = check_ring(&broken, &parse(ring_take::SOURCE)).unwrap_err();
    println!("caught: {e}");
    assert!(e.contains("Fault"), "{e}");
}

#[test]
fn the_checker_catches_a_second_commit() {
    assert!(static_error(SECOND_COMMIT).contains("a second commit"));
    let broken = restartable_lang::parse_unchecked(SECOND_COMMIT).unwrap();
    // The specification counts the total too, in the same step.
    let spec = |m: &mut Memory, id: u32, i: &[u64]| {
        let o = histogram_spec(m, id, i);
        if let Outcome::Committed(_) = o {
            let total = i[0] + HISTOGRAM_STRIDE as u64 * id as u64 + 120;
            let t = m.get(total);
            m.set(total, t + 1);
        }
        o
    };
    let (mem, base) = blocks(HISTOGRAM_STRIDE);
    let observe = histogram_observe(base);
    let cases = vec![Case {
        memory: mem,
        id: 1,
        inputs: vec![base, NCPUS, 40],
    }];
    let e = check(&Check {
        section: &broken,
        spec: &spec,
        observe: &observe,
        cases,
        others: vec![],
        remote: None,
    })
    .unwrap_err();
    println!("caught: {e}");
    assert!(e.contains("published"), "{e}");
}
