#!/usr/bin/env bash
# A cargo test runner (CARGO_TARGET_<triple>_RUNNER) that runs a test
# binary with librestartable_malloc.so preloaded, so every allocation the
# test and the programs it spawns make (through Rust's System allocator
# or the C library's own callers) is served by restartable-malloc; cargo
# and rustc themselves are not preloaded. RESTARTABLE_MALLOC_SO names
# the library.
set -euo pipefail
: "${RESTARTABLE_MALLOC_SO:?the path of librestartable_malloc.so}"
export LD_PRELOAD="$RESTARTABLE_MALLOC_SO${LD_PRELOAD:+:$LD_PRELOAD}"
exec "$@"
