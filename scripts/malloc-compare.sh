#!/usr/bin/env bash
# Compares C allocators under LD_PRELOAD on our own C workloads
# (scripts/malloc-compare/workloads.c: remote, falseshare, mixed, larson;
# each checks its own results). Allocators: glibc (no preload),
# restartable (librestartable_malloc.so), restartable-fallback (the same
# .so with RESTARTABLE_DISABLE=1), and Debian's mimalloc, jemalloc and
# tcmalloc (gperftools' minimal) from /usr/lib/$(gcc -print-multiarch);
# a missing one is skipped with a note. Every mode runs at 1 thread
# (2 for remote), N and 4N threads (N = nproc).
#
# Usage: scripts/malloc-compare.sh [options]
#   --repeat R          measure each row R times, keep the best (default 3);
#                       allocators are interleaved within each repeat so a
#                       noisy period hits them alike; best = highest Mops/s
#                       and lowest peak RSS, each over the R runs
#   --json FILE         also write every row (and each run) as JSON to FILE
#   --quick             tiny op counts and --repeat 1 (a test: well under
#                       60 s, fails if any run fails its own check)
#   --modes LIST        comma-separated subset of remote,falseshare,mixed,larson
#   --allocators LIST   comma-separated subset of glibc,restartable,
#                       restartable-fallback,mimalloc,jemalloc,tcmalloc
#   --scale F           multiply every mode's op count by F (default 1)
#   --timeout S         kill a run after S seconds and count it failed
#                       (default 300; 60 with --quick)
#   -h, --help          print this text
# Environment: RESTARTABLE_MALLOC_SO names a prebuilt librestartable_malloc.so
# (otherwise `cargo build --release -p restartable-malloc-preload`);
# RESTARTABLE_REQUIRE_RSEQ=1 fails the restartable rows if they ran on
# the fallback path (otherwise a note).
# Output: a header (machine and command), then one table per mode:
# allocator, threads, Mops/s, x glibc, x fastest other (Mops/s over the
# fastest other allocator), peak RSS MiB (VmHWM), x leanest other (RSS
# over the lowest other). Progress goes to stderr. Exits 1 if any run
# failed (nonzero exit, timeout, or no result line).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

command_line="scripts/malloc-compare.sh"
for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then command_line+=" $arg"; else command_line+=" $(printf '%q' "$arg")"; fi
done

repeat=3
json=""
quick=0
modes="remote,falseshare,mixed,larson"
allocators="glibc,restartable,restartable-fallback,mimalloc,jemalloc,tcmalloc"
scale=1
timeout_s=""
repeat_set=0
while (($#)); do
    case $1 in
    --repeat) repeat=${2:?--repeat needs a count}; repeat_set=1; shift 2 ;;
    --json) json=${2:?--json needs a file}; shift 2 ;;
    --quick) quick=1; shift ;;
    --modes) modes=${2:?--modes needs a list}; shift 2 ;;
    --allocators) allocators=${2:?--allocators needs a list}; shift 2 ;;
    --scale) scale=${2:?--scale needs a factor}; shift 2 ;;
    --timeout) timeout_s=${2:?--timeout needs seconds}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "malloc-compare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if ((quick)); then
    ((repeat_set)) || repeat=1
    : "${timeout_s:=60}"
fi
: "${timeout_s:=300}"
[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "malloc-compare.sh: bad --repeat '$repeat'" >&2; exit 2; }
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || { echo "malloc-compare.sh: bad --timeout '$timeout_s'" >&2; exit 2; }
[[ $scale =~ ^[0-9]*\.?[0-9]+$ && ! $scale =~ ^[0.]+$ ]] || { echo "malloc-compare.sh: bad --scale '$scale' (a positive number)" >&2; exit 2; }
# Fail before the runs, not after them, if the JSON cannot be written.
if [[ -n $json ]] && ! : >>"$json"; then
    echo "malloc-compare.sh: cannot write $json" >&2
    exit 2
fi

# Op counts (total over all threads) sized so that the default run, 3
# repeats of 11 rows of 6 allocators, takes 3-4 minutes on 2 CPUs.
declare -A base_ops=([remote]=20000000 [falseshare]=3000000 [mixed]=6000000 [larson]=16000000)
declare -A ops
IFS=, read -r -a mode_list <<<"$modes"
# A name given twice runs once (as `restartable bench alloc` does).
mapfile -t mode_list < <(printf '%s\n' "${mode_list[@]}" | awk 'NF && !seen[$0]++')
modes=$(IFS=,; echo "${mode_list[*]}")
for m in "${mode_list[@]}"; do
    [[ -n ${base_ops[$m]:-} ]] || { echo "malloc-compare.sh: unknown mode '$m'" >&2; exit 2; }
    # --quick: 1/200 of the real counts, enough to exercise every path
    ops[$m]=$(awk -v b="${base_ops[$m]}" -v s="$scale" -v q="$quick" \
        'BEGIN { n = int(b * s / (q ? 200 : 1)); print (n < 1 ? 1 : n) }')
done

# --- build ------------------------------------------------------------------
out=target/malloc-compare
mkdir -p "$out"
bin=$out/workloads
cc -O2 -pthread -std=c11 -Wall -Wextra -o "$bin" scripts/malloc-compare/workloads.c

if [[ -n ${RESTARTABLE_MALLOC_SO:-} ]]; then
    so=$RESTARTABLE_MALLOC_SO
else
    cargo build --release -p restartable-malloc-preload >&2
    so=${CARGO_TARGET_DIR:-target}/release/librestartable_malloc.so
fi
[[ -f $so ]] || { echo "malloc-compare.sh: no $so" >&2; exit 1; }
so=$(realpath "$so") # LD_PRELOAD wants a path that works from any cwd

multiarch=$(gcc -print-multiarch 2>/dev/null || cc -print-multiarch 2>/dev/null || true)
libdir=/usr/lib${multiarch:+/$multiarch}

# name -> preload ("" for none); the fallback row differs only by env
declare -A preload=(
    [glibc]=""
    [restartable]=$so
    [restartable-fallback]=$so
    [mimalloc]=$libdir/libmimalloc.so.2
    [jemalloc]=$libdir/libjemalloc.so.2
    [tcmalloc]=$libdir/libtcmalloc_minimal.so.4
)
alloc_list=()
IFS=, read -r -a wanted <<<"$allocators"
mapfile -t wanted < <(printf '%s\n' "${wanted[@]}" | awk 'NF && !seen[$0]++')
for a in "${wanted[@]}"; do
    if [[ ! -v "preload[$a]" ]]; then
        echo "malloc-compare.sh: unknown allocator '$a'" >&2
        exit 2
    fi
    if [[ -n ${preload[$a]} && ! -f ${preload[$a]} ]]; then
        echo "note: skipping $a: ${preload[$a]} not found"
        continue
    fi
    alloc_list+=("$a")
done
((${#alloc_list[@]})) || { echo "malloc-compare.sh: no allocator to run" >&2; exit 1; }

# --- thread counts ----------------------------------------------------------
n=$(nproc)
even_n=$(((n + 1) / 2 * 2)) # remote runs pairs
declare -A thread_counts
for m in "${mode_list[@]}"; do
    if [[ $m == remote ]]; then
        list="2 $even_n $((4 * even_n))"
    else
        list="1 $n $((4 * n))"
    fi
    # drop repeats (N = 1, or N = 2 for remote)
    thread_counts[$m]=$(tr ' ' '\n' <<<"$list" | sort -n -u | tr '\n' ' ')
done

glibc_version=$(getconf GNU_LIBC_VERSION 2>/dev/null || ldd --version 2>/dev/null | head -1 || echo unknown)
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
kernel=$(uname -r)
ops_text=""
for m in "${mode_list[@]}"; do ops_text+=" $m=${ops[$m]}"; done
echo "machine: nproc=$n, kernel $kernel, $glibc_version, $(uname -m)${cpu_model:+, $cpu_model}"
echo "command: $command_line"
echo "ops (total over threads):$ops_text; repeat $repeat, best kept; restartable: $so"

# --- runs -------------------------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
results=$tmp/results.tsv
: >"$results"
failures=()

# run_one MODE THREADS ALLOC REP: one process; appends a row to $results.
run_one() {
    local mode=$1 threads=$2 alloc=$3 rep=$4
    local envs=(-u LD_PRELOAD -u RESTARTABLE_DISABLE -u RESTARTABLE_MALLOC_STATS)
    local stats=$tmp/stats
    rm -f "$stats"
    if [[ -n ${preload[$alloc]} ]]; then envs+=("LD_PRELOAD=${preload[$alloc]}"); fi
    if [[ $alloc == restartable* ]]; then
        # the exit report names the path taken, to confirm each row's
        envs+=("RESTARTABLE_MALLOC_STATS=$stats")
    fi
    if [[ $alloc == restartable-fallback ]]; then envs+=(RESTARTABLE_DISABLE=1); fi
    local rc=0 problem=""
    timeout "$timeout_s" env "${envs[@]}" "$bin" "$mode" "$threads" "${ops[$mode]}" \
        >"$tmp/out" 2>"$tmp/err" || rc=$?
    local line
    line=$(grep '^result ' "$tmp/out" || true)
    if ((rc == 124)); then
        problem="timed out after ${timeout_s}s"
    elif ((rc != 0)); then
        problem="exit status $rc"
    elif [[ -z $line ]] || ! grep -q '^ok ' "$tmp/out"; then
        problem="no ok/result line"
    elif [[ $alloc == restartable* ]] && ! grep -q 'path: ' "$stats" 2>/dev/null; then
        problem="no RESTARTABLE_MALLOC_STATS report: is $so librestartable_malloc.so?"
    elif [[ $alloc == restartable-fallback ]] && ! grep -q 'path: fallback' "$stats"; then
        problem="RESTARTABLE_DISABLE=1 run did not report the fallback path"
    elif [[ $alloc == restartable ]] && ! grep -q 'path: rseq' "$stats"; then
        if [[ ${RESTARTABLE_REQUIRE_RSEQ:-} == 1 ]]; then
            problem="ran on the fallback path, not rseq (RESTARTABLE_REQUIRE_RSEQ=1)"
        else
            printf '\nnote: restartable %s threads=%s ran without rseq (fallback path)\n' "$mode" "$threads" >&2
        fi
    fi
    if [[ -n $problem ]]; then
        failures+=("$alloc $mode threads=$threads rep=$rep: $problem")
        {
            echo
            echo "FAILED: $alloc $mode threads=$threads rep=$rep: $problem"
            sed 's/^/  | /' "$tmp/err" | tail -n 20
        } >&2
        printf '%s\t%s\t%s\t%s\tfail\t0\t0\t0\n' "$mode" "$threads" "$alloc" "$rep" >>"$results"
        return 0
    fi
    local mops seconds rss
    mops=$(sed -n 's/.* mops=\([^ ]*\).*/\1/p' <<<"$line")
    seconds=$(sed -n 's/.* seconds=\([^ ]*\).*/\1/p' <<<"$line")
    rss=$(sed -n 's/.* peak_rss_kib=\([^ ]*\).*/\1/p' <<<"$line")
    printf '%s\t%s\t%s\t%s\tok\t%s\t%s\t%s\n' "$mode" "$threads" "$alloc" "$rep" \
        "$mops" "$seconds" "$rss" >>"$results"
    printf ' %s %s' "$alloc" "$mops" >&2
}

start=$SECONDS
for ((rep = 1; rep <= repeat; rep++)); do
    for m in "${mode_list[@]}"; do
        read -r -a ts <<<"${thread_counts[$m]}"
        for t in "${ts[@]}"; do
            printf '[%ss] rep %d/%d %s threads=%s Mops/s:' $((SECONDS - start)) "$rep" "$repeat" "$m" "$t" >&2
            for a in "${alloc_list[@]}"; do run_one "$m" "$t" "$a" "$rep"; done
            echo >&2
        done
    done
done
echo "runs took $((SECONDS - start))s" >&2

# --- tables and JSON --------------------------------------------------------
# One awk pass: best of the repeats per row, then the ratios against the
# other allocators of the same mode and thread count.
awk -F'\t' -v modes="$modes" -v allocs="${alloc_list[*]}" -v json="$json" \
    -v machine="nproc=$n kernel=$kernel $glibc_version" -v cmd="$command_line" \
    -v ops_text="$ops_text" -v repeat="$repeat" '
function jstr(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return "\"" s "\"" }
function ratio(x, y) { return (y > 0) ? sprintf("%.2f", x / y) : "-" }
{
    k = $1 SUBSEP $2 SUBSEP $3
    if (!(($1 SUBSEP $2) in seen_t)) { seen_t[$1 SUBSEP $2] = 1; nt[$1]++; tl[$1, nt[$1]] = $2 + 0 }
    runs[k] = runs[k] (runs[k] == "" ? "" : ",") \
        sprintf("{\"rep\":%d,\"ok\":%s,\"mops\":%s,\"seconds\":%s,\"peak_rss_kib\":%s}",
                $4, ($5 == "ok") ? "true" : "false", $6, $7, $8)
    if ($5 != "ok") { failed[k] = 1; next }
    if (!(k in best) || $6 + 0 > best[k]) best[k] = $6 + 0
    if (!(k in lean) || $8 + 0 < lean[k]) lean[k] = $8 + 0
}
END {
    nm = split(modes, ml, ",")
    na = split(allocs, al, " ")
    nrows = 0
    for (i = 1; i <= nm; i++) {
        m = ml[i]
        # thread counts ascending (insertion sort: a handful)
        for (a = 2; a <= nt[m]; a++) for (b = a; b > 1 && tl[m, b - 1] > tl[m, b]; b--) {
            x = tl[m, b]; tl[m, b] = tl[m, b - 1]; tl[m, b - 1] = x
        }
        printf "\n== %s (%s ops per run)\n", m, opsof(m)
        printf "%-21s %7s %9s %8s %15s %12s %15s\n", "allocator", "threads", "Mops/s", "x glibc", "x fastest other", "peak RSS MiB", "x leanest other"
        for (j = 1; j <= nt[m]; j++) {
            t = tl[m, j]
            for (a = 1; a <= na; a++) {
                k = m SUBSEP t SUBSEP al[a]
                if (!(k in runs)) continue
                ok = !(k in failed) && (k in best)
                fast = 0; leanest = -1
                for (b = 1; b <= na; b++) {
                    if (b == a) continue
                    o = m SUBSEP t SUBSEP al[b]
                    if ((o in failed) || !(o in best)) continue
                    if (best[o] > fast) fast = best[o]
                    if (leanest < 0 || lean[o] < leanest) leanest = lean[o]
                }
                g = m SUBSEP t SUBSEP "glibc"
                gm = ((g in best) && !(g in failed)) ? best[g] : 0
                if (ok) {
                    xg = ratio(best[k], gm); xf = ratio(best[k], fast); xl = ratio(lean[k], leanest)
                    printf "%-21s %7d %9.2f %8s %15s %12.1f %15s\n", al[a], t, best[k], xg, xf, lean[k] / 1024, xl
                } else {
                    xg = xf = xl = "-"
                    printf "%-21s %7d %9s %8s %15s %12s %15s\n", al[a], t, "FAILED", "-", "-", "-", "-"
                }
                rows[++nrows] = sprintf("{\"mode\":%s,\"allocator\":%s,\"threads\":%d,\"ops\":%d,\"ok\":%s,\"mops\":%s,\"x_glibc\":%s,\"x_fastest_other\":%s,\"peak_rss_kib\":%s,\"x_leanest_other\":%s,\"runs\":[%s]}",
                    jstr(m), jstr(al[a]), t, opsof(m), ok ? "true" : "false",
                    ok ? sprintf("%.3f", best[k]) : "null", (xg == "-") ? "null" : xg,
                    (xf == "-") ? "null" : xf, ok ? lean[k] : "null", (xl == "-") ? "null" : xl, runs[k])
            }
        }
    }
    if (json != "") {
        printf("{\"machine\":%s,\"command\":%s,\"repeat\":%d,\"rows\":[\n", jstr(machine), jstr(cmd), repeat) > json
        for (r = 1; r <= nrows; r++) printf("  %s%s\n", rows[r], (r < nrows) ? "," : "") > json
        printf("]}\n") > json
        close(json)
    }
}
function opsof(m,   n, parts, i, kv) {
    n = split(ops_text, parts, " ")
    for (i = 1; i <= n; i++) { split(parts[i], kv, "="); if (kv[1] == m) return kv[2] + 0 }
    return 0
}' "$results"

if ((${#failures[@]})); then
    echo
    echo "FAILED runs (${#failures[@]}):"
    printf '  %s\n' "${failures[@]}"
    exit 1
fi
