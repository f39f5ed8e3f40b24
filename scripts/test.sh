#!/usr/bin/env bash
# Runs every test of the project: formatting, clippy, the aarch64 and
# riscv64 library builds, the workspace tests three times (plain sections,
# then with restartable-malloc preloaded into every test, then the
# compare-twice and fault-injection build; all insist that the rseq path
# really runs here), the C allocator workloads under LD_PRELOAD (checked
# runs of scripts/malloc-compare.sh), a statically linked glibc build and a musl build
# with their tests (scripts/environments.sh), the library's unit tests
# under Miri, the aarch64 and riscv64 sections on real arm64 and
# riscv64 kernels under qemu-system-aarch64 and qemu-system-riscv64, and
# the whole project on a 64-possible, 16-online, hot-plugging x86-64
# machine under qemu-system-x86_64 (scripts/many-cpus-vm.sh).
# Installs missing prerequisites first (scripts/lib/packages.sh: never
# removes or changes an installed package). Prints each step's time and a
# summary. This is THE test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

passed=0
step_name="prerequisites"
step_start=$SECONDS
timings=()
summary() {
    local t
    echo
    echo "step times:"
    for t in "${timings[@]}"; do echo "  $t"; done
    echo "  total: ${SECONDS}s"
}
on_err() {
    timings+=("$(printf '%5ss  %s (FAILED)' $((SECONDS - step_start)) "$step_name")")
    summary >&2
    echo "test.sh: step '$step_name' failed after $((SECONDS - step_start))s" >&2
}
trap on_err ERR

step() { step_name="$1"; step_start=$SECONDS; echo; echo "==> [$(date +%T), +${SECONDS}s] $1"; }
ok() { # ok [--uncounted]
    [[ ${1:-} == --uncounted ]] || passed=$((passed + 1))
    timings+=("$(printf '%5ss  %s' $((SECONDS - step_start)) "$step_name")")
    echo "<== $step_name: ok in $((SECONDS - step_start))s"
}

# --- prerequisites (install only what is missing) ---------------------------
step "prerequisites"
# shellcheck source=lib/packages.sh
source scripts/lib/packages.sh
missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v file >/dev/null 2>&1 || missing+=(file)
command -v nm >/dev/null 2>&1 || missing+=(binutils)
command -v strace >/dev/null 2>&1 || missing+=(strace)
# The LD_PRELOAD tests build a C program and run real programs under the
# allocator (crates/restartable-malloc-preload/tests/preload.rs).
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 libpython3-testsuite)
elif ! python3 -c 'import test.support' >/dev/null 2>&1; then
    missing+=(libpython3-testsuite) # Debian's python3 ships its test suite apart
fi
# The allocators `restartable bench alloc` and scripts/malloc-compare.sh
# compare against under LD_PRELOAD (Debian's builds).
for lib in libtcmalloc-minimal4 libjemalloc2 libmimalloc2.0; do
    if [[ -n $(pkg_missing "$lib") ]]; then missing+=("$lib"); fi
done
if ((${#missing[@]})); then
    pkg_install "${missing[@]}"
fi
for target in aarch64-unknown-linux-gnu riscv64gc-unknown-linux-gnu x86_64-unknown-linux-musl; do
    if ! grep -qx "$target" <<<"$(rustup target list --toolchain stable --installed)"; then
        rustup target add "$target" --toolchain stable
    fi
done
if ! grep -q "^nightly" <<<"$(rustup toolchain list)"; then
    rustup toolchain install nightly --profile minimal
fi
nightly_components=$(rustup component list --toolchain nightly --installed 2>/dev/null || true)
if ! grep -q '^miri' <<<"$nightly_components" || ! grep -q '^rust-src' <<<"$nightly_components"; then
    rustup component add miri rust-src --toolchain nightly
fi
cargo +nightly miri setup
ok --uncounted

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

step "riscv64 build (restartable)"
cargo build --target riscv64gc-unknown-linux-gnu -p restartable
ok

# RESTARTABLE_REQUIRE_RSEQ=1: on this machine kind the rseq path must run;
# a test that finds it silently unavailable fails instead of skipping.
export RESTARTABLE_REQUIRE_RSEQ=1

step "cargo test, plain sections (abort-stats only)"
cargo test --workspace --features abort-stats
ok

# The same tests again with librestartable_malloc.so preloaded into every
# test binary and every program it starts: the whole suite on
# restartable-malloc. Left out: the five tests that turn glibc's
# registration off (GLIBC_TUNABLES=glibc.pthread.rseq=0) and insist on the
# rseq path in the test program's own copy of the runtime; there the
# preloaded library's copy registers each thread first, and two copies
# share a registration only through glibc (README, "restartable-malloc").
step "cargo test with restartable-malloc preloaded (scripts/lib/with-malloc.sh)"
cargo build -p restartable-malloc-preload
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/lib/with-malloc.sh" \
RESTARTABLE_MALLOC_SO="$PWD/target/debug/librestartable_malloc.so" \
    cargo test --workspace --features abort-stats -- \
    --skip unloading_a_library_that_ran_sections_is_safe \
    --skip stress_on_library_registration_when_glibc_does_not_register \
    --skip thread_churn_counts_exactly \
    --skip every_mode_without_glibc_registration \
    --skip threads_that_skip_registration_mix_with_rseq_threads
ok

# The C workloads under LD_PRELOAD against Debian's mimalloc, jemalloc and
# tcmalloc, tiny runs: each program checks its own results (the benchmark
# itself is `scripts/malloc-compare.sh` without --quick).
step "C allocator workloads under LD_PRELOAD (scripts/malloc-compare.sh --quick)"
scripts/malloc-compare.sh --quick
ok

step "cargo test, compare-twice + fault-injection build (--all-features)"
cargo test --workspace --all-features
ok

step "static glibc build: owner libc, and library with the tunable off (scripts/environments.sh static-glibc)"
scripts/environments.sh static-glibc
ok

step "musl build and workspace tests (scripts/environments.sh musl)"
scripts/environments.sh musl
ok

step "miri test (restartable --lib)"
cargo +nightly miri test -p restartable --lib
ok

step "aarch64 sections under qemu-system-aarch64 (scripts/aarch64-vm.sh)"
scripts/aarch64-vm.sh
ok

step "riscv64 sections under qemu-system-riscv64 (scripts/riscv64-vm.sh)"
scripts/riscv64-vm.sh
ok

step "many CPUs: 16 of 64 online, sparse, hot-plug, under qemu-system-x86_64 (scripts/many-cpus-vm.sh)"
scripts/many-cpus-vm.sh
ok

summary
echo
echo "$passed passed, 0 failed"
