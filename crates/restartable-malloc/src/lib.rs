//! A per-CPU memory allocator on restartable sequences: the project's
//! flagship, being built in slices (`docs/allocator.md`).
//!
//! This first slice holds the parts every later one stands on: the size
//! classes ([`classes`]), and the reserved address range with its span
//! table ([`region`]), which is how a `free` finds an object's class
//! without a header in front of the object. There is no `GlobalAlloc` yet.

pub mod classes;
pub mod region;
