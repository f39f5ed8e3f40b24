//! What the library's test binaries share.

pub mod cpus;
