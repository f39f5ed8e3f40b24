#!/usr/bin/env bash
# Runs every test of the project: formatting, clippy, the aarch64 library
# build, the workspace tests twice (plain sections, then the compare-twice
# and fault-injection build; both insist that the rseq path really runs
# here), the library's unit tests under Miri, and the aarch64 sections on a
# real arm64 kernel under qemu-system-aarch64. Installs missing
# prerequisites first. This is THE test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

passed=0
step_name="prerequisites"
on_err() { echo "test.sh: step '$step_name' failed" >&2; }
trap on_err ERR

step() { step_name="$1"; echo; echo "==> $1"; }
ok() { passed=$((passed + 1)); }

# --- prerequisites (install only what is missing) ---------------------------
step "prerequisites"
if ! command -v valgrind >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "test.sh: valgrind is not installed and we are not root; install it (apt-get install valgrind)" >&2
        false
    fi
    apt-get update && apt-get install -y valgrind
fi
if ! rustup target list --toolchain stable --installed | grep -qx aarch64-unknown-linux-gnu; then
    rustup target add aarch64-unknown-linux-gnu --toolchain stable
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
nightly_components=$(rustup component list --toolchain nightly --installed 2>/dev/null || true)
if ! grep -q '^miri' <<<"$nightly_components" || ! grep -q '^rust-src' <<<"$nightly_components"; then
    rustup component add miri rust-src --toolchain nightly
fi
cargo +nightly miri setup

# --- the tests ---------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
ok

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
ok

step "aarch64 build (restartable)"
cargo build --target aarch64-unknown-linux-gnu -p restartable
ok

# RESTARTABLE_REQUIRE_RSEQ=1: on this machine kind the rseq path must run;
# a test that finds it silently unavailable fails instead of skipping.
export RESTARTABLE_REQUIRE_RSEQ=1

step "cargo test, plain sections (abort-stats only)"
cargo test --workspace --features abort-stats
ok

step "cargo test, compare-twice + fault-injection build (--all-features)"
cargo test --workspace --all-features
ok

step "miri test (restartable --lib)"
cargo +nightly miri test -p restartable --lib
ok

step "aarch64 sections under qemu-system-aarch64 (scripts/aarch64-vm.sh)"
scripts/aarch64-vm.sh
ok

echo
echo "$passed passed, 0 failed"
