//! The model checker on the allocator's four cache sections: every
//! architecture's lowered form, an abort at every instruction boundary,
//! the other cache sections run between an abort and the retry, and a
//! remote thread that guards a CPU's cache, fences and drains it.

use restartable_lang::model::{check, Case, Check, Memory, Other, Outcome, Remote, Spec};
use restartable_lang::Section;
use restartable_malloc::cache::{
    pop, pop_cid, pop_many, pop_many_cid, push, push_cid, push_many, push_many_cid, SLOTS, STRIDE,
};

const NCPUS: u64 = 2;
const SLOTS_U: u64 = SLOTS as u64;

fn parse(source: &str) -> Section {
    restartable_lang::parse(source).expect("the section parses")
}

/// CPU `cpu`'s cache of the class, given the class's cache in CPU 0's block.
fn cache(base: u64, cpu: u32) -> u64 {
    base + STRIDE as u64 * u64::from(cpu)
}

fn slot(c: u64, n: u64) -> u64 {
    c + 16 + 8 * n
}

/// The exits every section shares: 0 `OutOfRange`, 1 `Guarded(g)`.
fn common(m: &Memory, id: u32, i: &[u64]) -> Result<u64, Outcome> {
    let (caches, ncpus, held) = (i[0], i[1], i[2]);
    if u64::from(id) >= ncpus {
        return Err(Outcome::Exit(0, vec![]));
    }
    let c = cache(caches, id);
    let guard = m.get(c);
    if guard != held {
        return Err(Outcome::Exit(1, vec![guard]));
    }
    Ok(c)
}

fn pop_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let c = match common(m, id, i) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let count = m.get(c + 8);
    if count == 0 {
        return Outcome::Exit(2, vec![]);
    }
    m.set(c + 8, count - 1);
    Outcome::Committed(vec![m.get(slot(c, count - 1))])
}

fn push_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let c = match common(m, id, i) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let (cap, object) = (i[3], i[4]);
    let count = m.get(c + 8);
    if count >= cap {
        return Outcome::Exit(2, vec![]);
    }
    m.set(slot(c, count), object);
    m.set(c + 8, count + 1);
    Outcome::Committed(vec![])
}

fn pop_many_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let c = match common(m, id, i) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let (out, n) = (i[3], i[4]);
    let count = m.get(c + 8);
    if count < n {
        return Outcome::Exit(2, vec![count]);
    }
    for k in 0..n {
        let v = m.get(slot(c, count - n + k));
        m.set(out + 8 * k, v);
    }
    m.set(c + 8, count - n);
    Outcome::Committed(vec![])
}

fn push_many_spec(m: &mut Memory, id: u32, i: &[u64]) -> Outcome {
    let c = match common(m, id, i) {
        Ok(c) => c,
        Err(o) => return o,
    };
    let (cap, objects, n) = (i[3], i[4], i[5]);
    let count = m.get(c + 8);
    if count + n > cap {
        return Outcome::Exit(2, vec![count]);
    }
    for k in 0..n {
        let v = m.get(objects + 8 * k);
        m.set(slot(c, count + k), v);
    }
    m.set(c + 8, count + n);
    Outcome::Committed(vec![])
}

/// What others may see: each CPU's guard, count and cached objects (the
/// slots above the count, and a batch's own buffer, are speculative).
fn observe(base: u64) -> impl Fn(&Memory) -> Vec<u64> {
    move |m| {
        let mut seen = Vec::new();
        for cpu in 0..NCPUS as u32 {
            let c = cache(base, cpu);
            let count = m.get(c + 8);
            seen.extend([m.get(c), count]);
            for n in 0..count.min(SLOTS_U) {
                seen.push(m.get(slot(c, n)));
            }
        }
        seen
    }
}

/// Checks one flavour's four sections (`[pop, push, pop_many, push_many]`):
/// the forced aborts checked. The id the model hands a section stands for
/// a CPU number or an `mm_cid` alike: either picks the block.
fn check_all(sources: [&str; 4]) -> u64 {
    let sections = sources.map(parse);
    let specs: [Spec; 4] = [&pop_spec, &push_spec, &pop_many_spec, &push_many_spec];
    let mut mem = Memory::new();
    let base = mem.alloc(STRIDE * NCPUS as usize);
    let out = mem.alloc(8 * SLOTS);
    let src = mem.alloc(8 * SLOTS);
    for k in 0..SLOTS_U {
        mem.set(src + 8 * k, 0x7000 + k);
    }
    let observe = observe(base);
    let mut aborts = 0;
    for cpu in 0..NCPUS as u32 {
        let c = cache(base, cpu);
        // The remote drain of this CPU's cache: guard, fence, empty it.
        let set = move |m: &mut Memory| m.set(c, 7);
        let work = move |m: &mut Memory| m.set(c + 8, 0);
        let clear = move |m: &mut Memory| m.set(c, 0);
        for (count, cap, guard, held) in [
            (0, 8, 0, 0),
            (1, 8, 0, 0),
            (3, 8, 0, 0),
            (8, 8, 0, 0),
            (9, 8, 0, 0),
            (SLOTS_U, SLOTS_U, 0, 0),
            (4, 8, 9, 0),
            (4, 8, 9, 9),
        ] {
            let mut m = mem.clone();
            m.set(c, guard);
            m.set(c + 8, count);
            for n in 0..count {
                m.set(slot(c, n), 0x1000 + n);
            }
            let inputs = |s: usize, batch: u64| -> Vec<u64> {
                let mut v = vec![base, NCPUS, held];
                match s {
                    0 => {}
                    1 => v.extend([cap, 0xdead0]),
                    2 => v.extend([out, batch]),
                    _ => v.extend([cap, src, batch]),
                }
                v
            };
            for batch in [1, 2, 4] {
                for s in 0..4 {
                    if s < 2 && batch > 1 {
                        continue;
                    }
                    let mut cases = vec![Case {
                        memory: m.clone(),
                        id: cpu,
                        inputs: inputs(s, batch),
                    }];
                    if cpu == 0 && count == 0 {
                        for id in [NCPUS as u32, u32::MAX] {
                            cases.push(Case {
                                memory: m.clone(),
                                id,
                                inputs: inputs(s, batch),
                            });
                        }
                    }
                    let others = (0..4)
                        .filter(|&o| o != s)
                        .map(|o| Other {
                            section: &sections[o],
                            inputs: inputs(o, batch),
                            spec: specs[o],
                        })
                        .collect();
                    let report = check(&Check {
                        section: &sections[s],
                        spec: specs[s],
                        observe: &observe,
                        cases,
                        others,
                        remote: (held == 0).then_some(Remote {
                            set_guard: &set,
                            work: &work,
                            clear_guard: &clear,
                        }),
                    })
                    .unwrap_or_else(|e| panic!("section {s}, cpu {cpu}, count {count}: {e}"));
                    aborts += report.aborts;
                }
            }
        }
    }
    aborts
}

#[test]
fn the_cache_sections_meet_their_specifications() {
    let aborts = check_all([
        pop::SOURCE,
        push::SOURCE,
        pop_many::SOURCE,
        push_many::SOURCE,
    ]);
    println!("cache sections (cpu_id): {aborts} forced aborts checked");
    assert!(aborts > 1000);
}

#[test]
fn the_mm_cid_cache_sections_meet_their_specifications() {
    let sources = [
        pop_cid::SOURCE,
        push_cid::SOURCE,
        pop_many_cid::SOURCE,
        push_many_cid::SOURCE,
    ];
    assert!(sources.iter().all(|s| s.contains("mm_cid")), "{sources:?}");
    let aborts = check_all(sources);
    println!("cache sections (mm_cid): {aborts} forced aborts checked");
    assert!(aborts > 1000);
}
