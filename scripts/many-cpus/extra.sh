# --- many CPUs (scripts/many-cpus-vm.sh), after the suite ----------------------
# Hot-plug under load, cpusets and affinity, and the growth of the remote
# operations' costs with the online CPUs. Every line the host checks
# starts with $TAG-.
one_line() { tr -d '\n' </tmp/out | sed 's/  */ /g'; }

# churn: until /tmp/hp-stop exists, takes each CPU of HP_CPUS offline and
# brings it back, in turn (every CPU but 0, which Linux keeps); the counts
# of those done while the command ran go to /tmp/hp-counts (the pair under
# way when it ends completes, uncounted, so every CPU is back).
HP_CPUS="19 9 2 17 11 1 15 3 8 18 12 16 10 13 14"
churn() {
    off=0 on=0
    while [ ! -e /tmp/hp-stop ]; do
        for c in $HP_CPUS; do
            [ -e /tmp/hp-stop ] && break
            if echo 0 >"$SYS/cpu$c/online" 2>/dev/null && [ ! -e /tmp/hp-stop ]; then off=$((off + 1)); fi
            sleep 0.1
            if echo 1 >"$SYS/cpu$c/online" 2>/dev/null && [ ! -e /tmp/hp-stop ]; then on=$((on + 1)); fi
        done
    done
    echo "$off $on" >/tmp/hp-counts
}
# hotplug NAME stress|test COMMAND...: COMMAND while CPUs go offline and
# come back; a stress run must be exact on the rseq path, a test binary
# must pass; at least two CPUs must have gone offline during it, and the
# online set must be whole again after it.
hotplug() {
    hname=$1 kind=$2
    shift 2
    rm -f /tmp/hp-stop /tmp/hp-counts
    churn &
    hp=$!
    run "hotplug-$hname" "$@"
    rc=$?
    touch /tmp/hp-stop
    wait $hp
    counts=$(cat /tmp/hp-counts 2>/dev/null)
    off=${counts% *} on=${counts#* }
    if [ "$kind" = stress ]; then
        path=$(field path) exact=$(field exact)
    else
        path=$(grep -o 'path=[a-z]*' /tmp/out | head -n1 | cut -d= -f2)
        exact=false
        [ "$rc" -eq 0 ] && exact=true
    fi
    after=$(cat $SYS/online)
    echo "$TAG-HOTPLUG $hname offlined=${off:-0} onlined=${on:-0} path=$path exact=$exact online_after=$after"
    [ "$exact" = true ] && [ "${off:-0}" -ge 2 ] && [ "$after" = "$SPARSE" ] ||
        failed="$failed hotplug-$hname(offlined=${off:-0},exact=$exact,online=$after)"
}
S="env $REQ restartable stress"
start=$(date +%s)
# Workers pinned to every online CPU: each CPU taken offline is one a
# worker is pinned to (the kernel moves it), with the remote operations'
# fences running meanwhile.
# (Operations per worker: each run takes 5-15 s under emulation.)
for run in increment:400000 percpu:12000 stack:5000 pool:9000 drain:1000; do
    m=${run%:*}
    hotplug "$m-pinned" stress $S $m --threads 32 --pin-workers --ops ${run#*:} --timeout "$STRESS_TIMEOUT" --json
done
# More workers than CPUs, unpinned: the scheduler moves them onto CPUs as
# they come back online, so fences must reach those too; delays inside
# the sections and signals between operations widen every window.
for run in counter:600 buffer:500 fetch-update:120 pool:250; do
    m=${run%:*}
    hotplug "$m-inject" stress $S $m --threads 40 --ops ${run#*:} --inject 0=20,1=20,2=80,3=80 --signal-every 7 \
        --timeout "$STRESS_TIMEOUT" --json
done
# The allocator: its ownership stress test (blocks passed between
# threads, with tags checked), by CPU and by mm_cid, with the release
# policy's sweeps (every CPU's caches drained under their guards, offline
# CPUs' too) every second while the CPUs churn; the fallback path's and
# the 10 ms sweeps' variants ran in the suite above (the latter under
# hot-plug too takes minutes under emulation).
hotplug allocator-ownership test env $REQ /tests/ownership \
    --test-threads=1 --nocapture --skip the_fallback_path --skip sweeps_while_sections_run
echo "$TAG-TIME hotplug $(($(date +%s) - start))s"

# cpusets: CPUs 40-47 brought online, runs restricted to them.
start=$(date +%s)
for c in 40 41 42 43 44 45 46 47; do set_cpu $c 1; done
echo "$TAG-CPUS $(cpu_state)"
run taskset-info taskset -c 44 restartable info --json
echo "$TAG-TASKSET info cpu_id=$(field cpu_id)"
[ "$(field cpu_id)" = 44 ] || failed="$failed taskset-info(cpu_id=$(field cpu_id))"
for m in increment percpu pool drain; do
    run "taskset-$m" taskset -c 40-47 $S $m --threads 16 --ops 2000 --timeout "$STRESS_TIMEOUT" --json
    path=$(field path) exact=$(field exact)
    echo "$TAG-TASKSET $m cpus=40-47 path=$path exact=$exact"
    [ "$path" = rseq ] && [ "$exact" = true ] || failed="$failed taskset-$m(path=$path,exact=$exact)"
done
# A process whose affinity changes under it, every thread at once.
echo "===== [affinity-pool] restartable stress pool, affinity changed every 0.2 s"
$S pool --threads 24 --ops 10000 --timeout "$STRESS_TIMEOUT" --json >/tmp/out 2>&1 &
pid=$!
changes=0
while kill -0 $pid 2>/dev/null; do
    for set in 40-43 0-3,8-11 44-47,16-19 12-15,40,41 0-3,8-19,40-47; do
        kill -0 $pid 2>/dev/null || break
        taskset -a -p -c $set $pid >/dev/null 2>&1 && changes=$((changes + 1))
        sleep 0.2
    done
done
wait $pid
rc=$?
cat /tmp/out
path=$(field path) exact=$(field exact)
echo "$TAG-AFFINITY pool changes=$changes rc=$rc path=$path exact=$exact"
[ "$rc" -eq 0 ] && [ "$path" = rseq ] && [ "$exact" = true ] && [ "$changes" -ge 3 ] ||
    failed="$failed affinity-pool(rc=$rc,changes=$changes,exact=$exact)"
for c in 40 41 42 43 44 45 46 47; do set_cpu $c 0; done
echo "$TAG-TIME cpusets $(($(date +%s) - start))s"

# Growth: the remote operations and the allocator's footprint at 2, 4, 8
# and 16 online CPUs (the first N of the sparse set); the host renders
# the table and chart (restartable bench remote --from).
start=$(date +%s)
for n in 2 4 8 16; do
    i=0
    for c in $(echo "$SPARSE" | tr ',' ' '); do
        case $c in *-*) c=$(seq ${c%-*} ${c#*-}) ;; esac
        for cc in $c; do
            i=$((i + 1))
            [ "$cc" -eq 0 ] && continue
            if [ $i -le $n ]; then set_cpu $cc 1; else set_cpu $cc 0; fi
        done
    done
    # stdout only: the JSON (the console is a terminal, where the
    # benchmark's progress bar goes to stderr).
    echo "===== [growth-$n] restartable bench remote --json at $(cat $SYS/online)"
    env $REQ restartable bench remote --json >/tmp/out 2>/tmp/err
    rc=$?
    cat /tmp/err
    echo "$TAG-GROWTH $n $(one_line)"
    [ "$rc" -eq 0 ] || failed="$failed growth-$n(rc=$rc)"
done
[ "$(cat $SYS/online)" = "$SPARSE" ] || failed="$failed growth(online=$(cat $SYS/online))"
echo "$TAG-TIME growth $(($(date +%s) - start))s"
