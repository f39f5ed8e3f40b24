//! The section language's expansion-time errors: each broken section in
//! `tests/compile-fail/` must fail to compile with the error (and the
//! span) recorded next to it. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p restartable --test compile_fail` after
//! checking the new messages by eye.

#[test]
fn the_section_language_rejects_broken_sections() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile-fail/*.rs");
}
