#!/usr/bin/env bash
# The library in the two x86-64 environments where glibc's dynamic loader is
# not there to ask (called by scripts/test.sh; each step can run alone):
#
#   static-glibc  the CLI linked statically against glibc (+crt-static): the
#                 binary must be static, must adopt glibc's registration
#                 ("owner": "libc", found through the weak __rseq_* symbols)
#                 and must register its own area with
#                 GLIBC_TUNABLES=glibc.pthread.rseq=0 ("owner": "library");
#                 a short stress run in each mode must be exact on the rseq
#                 path with that owner.
#   musl          the library and the CLI for x86_64-unknown-linux-musl (musl
#                 registers no rseq: "owner": "library" with rseq available),
#                 the same stress runs, then the workspace tests but the
#                 CLI's (RESTARTABLE_REQUIRE_RSEQ=1, --features abort-stats).
#
# Usage: scripts/environments.sh [static-glibc|musl|all]   (default: all)
# Own cargo target directories, so it never waits on another build's lock:
#   target/env-static/  target/env-musl/
# Environment: ENV_MUSL_TESTS=0 skips the musl test suite (build and checks only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
HOST=x86_64-unknown-linux-gnu
MUSL=x86_64-unknown-linux-musl

fail() {
    echo "environments.sh: FAIL: $*" >&2
    exit 1
}
section() { echo; echo "--> [environments] $*"; }
# took LABEL START_SECONDS: one line with the time since START_SECONDS.
took() { echo "    time: $1 took $((SECONDS - $2))s"; }

# json_field JSON KEY: the value of a top-level scalar KEY of pretty or
# compact JSON (strings without their quotes).
json_field() {
    tr -d '\n' <<<"$1" | grep -oE "\"$2\": *(\"[^\"]*\"|[^,}]*)" | head -n1 |
        sed -E 's/^"[^"]*": *//; s/^"(.*)"$/\1/; s/[[:space:]]+$//'
}
# json_owners JSON: the "owners" array of a stress report, compact ("libc").
json_owners() {
    tr -d '\n ' <<<"$1" | grep -oE '"owners":\[[^]]*\]' | sed -E 's/^"owners":\[//; s/\]$//; s/"//g'
}

# run_clean CMD...: without the variables that would change the answers.
run_clean() { env -u GLIBC_TUNABLES -u RESTARTABLE_DISABLE "$@"; }

# check_info LABEL BINARY WANT_OWNER [VAR=VALUE...]
check_info() {
    local label=$1 bin=$2 want=$3 out owner avail reason
    shift 3
    out=$(run_clean env "$@" "$bin" info --json) || fail "$label: '$bin info --json' exited with $?"
    owner=$(json_field "$out" owner)
    avail=$(json_field "$out" rseq_available)
    reason=$(json_field "$out" fallback_reason)
    echo "    $label: owner=$owner rseq_available=$avail fallback_reason=$reason" \
        "libc_rseq_size=$(json_field "$out" libc_rseq_size) libc_rseq_offset=$(json_field "$out" libc_rseq_offset)"
    if [[ $owner != "$want" || $avail != true ]]; then
        echo "$out" >&2
        return 1
    fi
}

# check_stress LABEL BINARY WANT_OWNER MODE OPS [VAR=VALUE...]
check_stress() {
    local label=$1 bin=$2 want=$3 mode=$4 ops=$5 out rc=0 exact path owners start=$SECONDS
    shift 5
    out=$(run_clean env "$@" RESTARTABLE_REQUIRE_RSEQ=1 "$bin" stress "$mode" --ops "$ops" --json) || rc=$?
    exact=$(json_field "$out" exact)
    path=$(json_field "$out" path)
    owners=$(json_owners "$out")
    echo "    $label: stress $mode --ops $ops: exit=$rc exact=$exact path=$path owners=$owners" \
        "aborts=$(json_field "$out" aborts) ($((SECONDS - start))s)"
    if ((rc != 0)) || [[ $exact != true || $path != rseq || $owners != "$want" ]]; then
        echo "$out" >&2
        fail "$label: stress $mode must exit 0 with \"exact\": true, \"path\": \"rseq\", \"owners\": [\"$want\"]"
    fi
}

# --- static glibc ------------------------------------------------------------
static_glibc() {
    local t0=$SECONDS start dir bin kind
    dir=$ROOT/target/env-static
    bin=$dir/$HOST/release/restartable
    section "static glibc: building the CLI with +crt-static (target dir target/env-static)"
    start=$SECONDS
    CARGO_TARGET_DIR=$dir RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target "$HOST" -p restartable-cli
    took "static build" "$start"

    kind=$(file -b "$bin")
    echo "    file: $kind"
    echo "    ldd:  $(ldd "$bin" 2>&1 | head -n1 | sed 's/^[[:space:]]*//')"
    if ! grep -qE 'static(-pie)? linked|statically linked' <<<"$kind" ||
        grep -q '=>' <<<"$(ldd "$bin" 2>&1)"; then
        fail "the +crt-static build is not static: $kind"
    fi
    local syms
    syms=$(nm "$bin" | grep -E ' __rseq_(offset|size|flags)$' || true)
    echo "    glibc's symbols in the binary: $(awk '{printf "%s(%s) ", $3, $2}' <<<"$syms")"

    if ! check_info "static, glibc rseq on " "$bin" libc; then
        echo "The static binary did not adopt glibc's registration. What to look at:" >&2
        echo "  nm: ${syms:-no __rseq_offset/__rseq_size/__rseq_flags defined in the binary}" >&2
        echo "  - libc_rseq_size null: the weak references in arch/x86_64.rs libc_rseq_symbols()" >&2
        echo "    resolved to 0 (nothing pulled glibc's definitions in), and dlsym cannot find" >&2
        echo "    data symbols in a static binary (runtime/process.rs detect_libc)" >&2
        echo "  - libc_rseq_size 0: glibc did not register (a GLIBC_TUNABLES setting?)" >&2
        echo "  - size non-zero but owner library: registration.rs rejected glibc's area" >&2
        fail "static glibc: expected \"owner\": \"libc\" with rseq available"
    fi
    check_info "static, glibc rseq off" "$bin" library GLIBC_TUNABLES=glibc.pthread.rseq=0 ||
        fail "static glibc with GLIBC_TUNABLES=glibc.pthread.rseq=0: expected \"owner\": \"library\" with rseq available"
    check_stress "static, glibc rseq on " "$bin" libc counter 20000
    check_stress "static, glibc rseq on " "$bin" libc stack 5000
    check_stress "static, glibc rseq off" "$bin" library counter 20000 GLIBC_TUNABLES=glibc.pthread.rseq=0
    check_stress "static, glibc rseq off" "$bin" library stack 5000 GLIBC_TUNABLES=glibc.pthread.rseq=0
    took "static glibc step" "$t0"
}

# --- musl --------------------------------------------------------------------
musl() {
    local t0=$SECONDS start dir bin
    dir=$ROOT/target/env-musl
    bin=$dir/$MUSL/release/restartable
    section "musl: target $MUSL (target dir target/env-musl)"
    if ! grep -qx "$MUSL" <<<"$(rustup target list --installed)"; then
        rustup target add "$MUSL"
    fi
    start=$SECONDS
    CARGO_TARGET_DIR=$dir cargo build --release --target "$MUSL" -p restartable -p restartable-cli
    took "musl build (library and CLI, release)" "$start"
    echo "    file: $(file -b "$bin")"
    check_info "musl" "$bin" library ||
        fail "musl: expected \"owner\": \"library\" with rseq available (musl registers no rseq)"
    # musl ignores the glibc tunable; the answer must not change.
    check_info "musl, glibc tunable set" "$bin" library GLIBC_TUNABLES=glibc.pthread.rseq=0 ||
        fail "musl with GLIBC_TUNABLES set: expected \"owner\": \"library\""
    check_stress "musl" "$bin" library counter 20000
    check_stress "musl" "$bin" library stack 5000

    if [[ ${ENV_MUSL_TESTS:-1} == 0 ]]; then
        echo "    ENV_MUSL_TESTS=0: musl test suite skipped"
    else
        # The CLI's own tests are left out: they test the command's logic,
        # the same on both libcs, and take minutes; the CLI on musl is
        # checked by the info and stress runs above.
        section "musl: cargo test --workspace --exclude restartable-cli --target $MUSL --features abort-stats (RESTARTABLE_REQUIRE_RSEQ=1)"
        start=$SECONDS
        CARGO_TARGET_DIR=$dir RESTARTABLE_REQUIRE_RSEQ=1 \
            cargo test --workspace --exclude restartable-cli --target "$MUSL" --features abort-stats --no-run
        took "musl test build" "$start"
        start=$SECONDS
        # --no-fail-fast: every failing test binary is reported, not the first.
        CARGO_TARGET_DIR=$dir RESTARTABLE_REQUIRE_RSEQ=1 \
            cargo test --workspace --exclude restartable-cli --target "$MUSL" --features abort-stats --no-fail-fast ||
            fail "musl: the workspace tests failed (see above; took $((SECONDS - start))s)"
        took "musl tests" "$start"
    fi
    took "musl step" "$t0"
}

what=${1:-all}
case $what in
    static-glibc) static_glibc ;;
    musl) musl ;;
    all) static_glibc; musl ;; # (not `a && b`: that would turn off set -e inside a)
    *) echo "usage: $0 [static-glibc|musl|all]" >&2; exit 2 ;;
esac
echo "environments.sh: $what: PASS"
