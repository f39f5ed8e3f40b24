//! What the allocator's test binaries share: running one of their own
//! tests again in a child process (where the environment picks the
//! allocator's path or index before its first allocation), and reading
//! the child's one-line report.

#![allow(dead_code)]

/// Runs this test binary's test `test` in a child, with `CHILD` (the
/// variable that makes the test do the child's part) and `env` set and
/// `remove` unset: the child's stdout line that starts with `prefix`,
/// printed, after checking that the child passed.
pub fn child_report(test: &str, prefix: &str, env: &[(&str, &str)], remove: &[&str]) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture"]).env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in remove {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or("")
        .to_owned();
    println!("{line}");
    assert!(
        out.status.success(),
        "child run of {test} with {env:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    line
}

/// Set in the child [`child_report`] starts.
pub const CHILD: &str = "RESTARTABLE_MALLOC_TEST_CHILD";

/// True in that child.
pub fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// The word after `key=` in a report line.
pub fn word<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

/// The number after `key=` in a report line (0 when absent).
pub fn number(line: &str, key: &str) -> usize {
    word(line, key).parse().unwrap_or(0)
}
