//! # Writing a critical section: the section language
//!
//! [`section!`](crate::section!) turns a small body, written once, into a
//! restartable sequence for x86-64, aarch64 and riscv64: one `asm!` block
//! per architecture with its descriptor (in `__rseq_cs`), the descriptor's
//! address (in `__rseq_cs_ptr_array`), every exit (in
//! `__rseq_exit_point_array`), the abort handler right after the
//! signature, and `rseq_cs` cleared afterwards. With feature `inject` a
//! delay loop sits between every two steps of the body; with
//! `compare-twice` the id and the loaded words are checked again right
//! before the commit. The same body is also emitted as plain Rust (the
//! *twin*) for the fallback path and Miri.
//!
//! ABI source: the kernel's `include/uapi/linux/rseq.h` and `man 2 rseq`.
//!
//! ## A section from nothing
//!
//! A per-CPU histogram: each CPU counts samples in its own 16 buckets, so
//! no two CPUs ever write the same word and no atomic instruction is
//! needed. The sequential specification comes first:
//!
//! > on the current CPU `c`: if `c >= ncpus`, leave through `OutOfRange`;
//! > if `sample / 16 >= 16`, leave through `TooLarge(sample)`; else
//! > `bucket[c][sample / 16] += 1` and return the new count.
//!
//! ```
//! restartable::section! {
//!     /// Counts `sample` in the current CPU's histogram.
//!     #[index(cpu_id)]                       // or mm_cid
//!     #[exits(OutOfRange, TooLarge(u64))]    // the ways out besides the commit
//!     pub unsafe fn histogram_add(histograms: *mut u8, ncpus: u64, sample: u64) -> u64 {
//!         let cpu = current_id();            // read after the section is armed
//!         if cpu >= ncpus { exit!(OutOfRange) }
//!         let bucket = sample >> 4;
//!         if bucket >= 16 { exit!(TooLarge(sample)) }
//!         let at = histograms + (cpu << 7) + (bucket << 3);
//!         let count = load64(at) + 1;
//!         commit!(store64(at, count));       // the one store that publishes
//!         count
//!     }
//! }
//!
//! use restartable::section::{Run, Thread};
//! let ncpus = restartable::possible_cpus();
//! let mut hist = vec![0u64; 16 * ncpus];     // 128 bytes per CPU
//! let base = hist.as_mut_ptr().cast::<u8>();
//! if let Some(thread) = Thread::current() {
//!     // SAFETY: `hist` holds 16 words per possible CPU, and only these
//!     // sections write it.
//!     match unsafe { histogram_add::retry(&thread, base, ncpus as u64, 37) } {
//!         Ok(Run::Committed(n)) => assert_eq!(n, 1),
//!         Ok(Run::Exit(e)) => panic!("{e:?}"),
//!         Ok(Run::Aborted) => unreachable!("retry retries aborts"),
//!         Err(_) => { /* aborted 16 times: take the fallback path */ }
//!     }
//! }
//! // The fallback, or a model for Miri: the same body in plain Rust.
//! // SAFETY: as above, and no section runs on this CPU's block meanwhile.
//! let run = unsafe { histogram_add::twin(0, base, ncpus as u64, 300) };
//! assert_eq!(run, Run::Exit(histogram_add::Exit::TooLarge(300)));
//! ```
//!
//! The macro makes a module named after the function, holding:
//!
//! | item | what it is |
//! |---|---|
//! | `Exit` | an enum, one variant per exit, with the values it carries |
//! | `Value` | the type the section returns when it commits |
//! | `run(&Thread, inputs..) -> Run<Value, Exit>` | one attempt |
//! | `retry(&Thread, inputs..)` | up to [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS) attempts, `Err(RetriesExhausted)` when all aborted |
//! | `twin(id, inputs..) -> Run<Value, Exit>` | the body in plain Rust with the id given |
//! | `SOURCE` | the section's source, for the model checker |
//!
//! [`Run`](super::Run) is `Committed(value)`, `Exit(e)` or `Aborted`.
//!
//! ## The body
//!
//! Straight-line code, in this order: the id, then loads, arithmetic,
//! exits and speculative stores, then the commit.
//!
//! - `let id = current_id();` reads `cpu_id` or `mm_cid` (32 bits) from the
//!   thread's rseq area after the section is armed. The next statement
//!   must range-check it, `if id >= n { exit!(OutOfRange) }` (`cpu_id` is
//!   `-1` in an unregistered area), or compare it with the id the caller
//!   chose its data by, `if id != expected { exit!(Moved) }`.
//! - Loads: `load8`, `load16`, `load32`, `load64`, `load_ptr` (zero-extend),
//!   `load_signed8`/`16`/`32` (sign-extend; a 64-bit load needs none),
//!   `load_acquire8`..`64` and `load_acquire_signed8`/`16`/`32`.
//! - Addresses are values: `base + (index << shift) + offset`, with field
//!   offsets as `offset_of!(Type, field)` (import it: `use
//!   core::mem::offset_of;`). Every access must be aligned.
//! - Arithmetic on 64-bit values (wrapping): `+ - & | ^`, and `<< >>` by a
//!   literal below 64 (not a constant). Literals (negative ones as their
//!   two's complement), `UPPER_CASE` constants and
//!   `offset_of!`/`size_of::<T>()` are allowed wherever a value is.
//! - Inputs, exit values and returned values are 64-bit words in
//!   registers: the integer types up to 64 bits, `usize`, `isize`, `bool`
//!   and raw pointers. References, `NonNull` and floats are not.
//! - `if a OP b { exit!(Name) }` or `{ exit!(Name(v, w)) }`, with `OP` one
//!   of `== != < <= > >=` (unsigned; `(a as i64) < (b as i64)` is signed).
//! - `store8`..`store64`, `store_ptr`: speculative stores, only to memory
//!   the section owns until it commits, an address derived from a name in
//!   `#[owned(..)]`.
//! - `copy(dst, src, len)`: the one loop, a copy of `len` bytes (a run-time
//!   value: check it against your buffer with an exit first) to owned
//!   memory; source and destination must not overlap.
//! - `commit!(store64(addr, v))` or `commit!(release, store64(addr, v))`:
//!   exactly one, last. After it, only the returned values may follow.
//!   `#[order(release)]` on the section makes a `commit!` that names no
//!   order a release (so a `macro_rules!` can expand one body in both
//!   orders, as `section/ops.rs` does for the vocabulary).
//!
//! ## What the macro rejects
//!
//! Input names are plain names other than the expansion's own (`run`,
//! `retry`, `twin`, `attempt`, `Exit`, `Value`, `SOURCE`, anything starting
//! with `__`); a section has at most 32 exits, no generics, no `where`
//! clause, and the Rust ABI.
//!
//! Each of these is an error at the offending token: no commit, a second
//! commit or anything else after it, a load or store before the id is
//! read, an id without its range check, a store to memory not declared
//! owned, calls, method calls, closures, `if`/`match` as values, indexing
//! and field access, casts (other than the signed comparison), loops other
//! than `copy`, and a body that needs more registers than an `asm!` block
//! gets on some architecture. The budgets are 13 on x86-64, 29 on aarch64
//! and 26 on riscv64, but every section is emitted for all three, so 13 is
//! the limit everywhere. They are counted after lowering: each live input,
//! constant (every literal of 2048 or more is one, from the start) and
//! `let` value takes one; so do the area, the scratch register, the out
//! pointer (when an exit carries values or the section returns any) and
//! the copy's two. The compare-twice build keeps the id in its register to
//! the commit, one more, and the budget is checked for that build too.
//!
//! A section indexed by `mm_cid` on a kernel that does not provide it
//! (before Linux 6.3) only ever aborts, so `retry` always returns `Err`:
//! check [`current_mm_cid`](crate::current_mm_cid) or
//! `Thread::id(Index::MmCid)` first.
//!
//! ## Checking a section
//!
//! `restartable_lang::model::check` runs the section's lowered form for
//! every architecture in an interpreter: uninterrupted, with an abort
//! forced at every instruction boundary in turn, with the structure's
//! other sections run between the abort and the retry, and against a
//! remote thread that sets a guard and fences at any two boundaries. It
//! compares each end state with the specification. `tests/model.rs` does
//! this for the [examples](super::examples), and shows it catching a store
//! to published memory before the commit, a missing id check, and a second
//! commit.
//!
//! ## The worked examples
//!
//! [`examples`](super::examples) holds three, each with its specification:
//! a per-CPU bounded ring ([`ring_append`](super::examples::ring_append),
//! exiting `Full`; and [`ring_take`](super::examples::ring_take)), a
//! per-CPU bounded stack with a capacity check
//! ([`stack_push`](super::examples::stack_push),
//! [`stack_pop`](super::examples::stack_pop)), and the histogram
//! above ([`histogram_add`](super::examples::histogram_add)).
