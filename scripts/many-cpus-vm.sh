#!/usr/bin/env bash
# The whole project on a many-CPU machine: an x86-64 VM with 64 possible
# CPUs of which 16 are online, sparse (0-3,8-19), booting Debian 13
# (trixie)'s newest x86-64 kernel (trixie-backports) under qemu-system-x86_64 (TCG: software
# emulation, for correctness, not speed). The guest runs what the aarch64
# and riscv64 VMs run (scripts/lib/vm.sh: `restartable info` with both
# registrations, every test binary of the library and the allocator's
# ownership, index and many-CPU tests with each owner, every stress mode,
# all on the rseq path), and then (scripts/many-cpus/extra.sh):
#
#   - hot-plug under load: stress runs (workers pinned to every online CPU;
#     more unpinned workers than CPUs, with delays inside the sections)
#     and the allocator's ownership test while CPUs are taken offline and
#     brought back through /sys/devices/system/cpu/cpuN/online, each
#     exact, with the number of CPUs that went offline and online;
#     tests/many_cpus.rs and tests/many_cpu_caches.rs take a CPU holding
#     objects offline and reclaim them (RESTARTABLE_REQUIRE_HOTPLUG=1);
#   - cpusets and affinity: CPUs 40-47 brought online and runs restricted
#     to them (taskset -c 40-47), and a run whose affinity is changed
#     under it every 0.2 s;
#   - mm_cid memory: the tests' [mm-cid-memory] lines (4 threads over 16
#     CPUs: PerCpu slots and allocator cache blocks by mm_cid and by CPU);
#   - growth: `restartable bench remote` at 2, 4, 8 and 16 online CPUs;
#     this script renders the growth table and chart (bench remote --from)
#     into target/many-cpus-vm/growth.{txt,json,svg}.
#
# Why 64 present CPUs with 16 booted (`-smp 64` and the kernel's
# maxcpus=16) rather than `-smp 16,maxcpus=64`: qemu lists the vCPUs it
# could hot-add as disabled MADT entries, which Linux 6.12 does not count
# as hot-pluggable ("Allowing 16 present CPUs plus 0 hotplug CPUs"), so
# the guest would see 16 possible CPUs. Present but offline CPUs give 64
# possible, and bringing them online is the same kernel path (cpuhp) as
# after an ACPI hot-add.
#
# The binaries are the host's target, linked statically against glibc
# (the initramfs has no libc), so the CLI that renders the growth table
# here is the guest's own.
#
# Everything it downloads or builds lives under target/ (cached):
#   target/many-cpus-vm/        kernel, busybox, apt state, initramfs,
#                               console.log, growth.*
#   target/env-static/          cargo target dir (shared with scripts/environments.sh)
#
# Environment (as for the other VM scripts, prefix MANY_CPUS):
#   MANY_CPUS_VM_TIMEOUT=1500       seconds before the VM is killed
#   MANY_CPUS_VM_CMD_TIMEOUT=300    seconds per command inside the VM
#   MANY_CPUS_VM_STRESS_TIMEOUT=120 `stress --timeout` in the VM
#   MANY_CPUS_VM_KERNEL=<package>   e.g. linux-image-6.12.118+deb13-amd64 (default: newest)
#   MANY_CPUS_VM_INJECT_OPS=2000    operations per worker of the suite's injected stress runs
#   MANY_CPUS_VM_REFRESH=1, MANY_CPUS_VM_PROFILE=release, MANY_CPUS_VM_MEM=2048
#   MANY_CPUS_VM_SKIP_TESTS="a b"   test binaries (tests/<name>.rs) to leave out
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SECONDS=0
# shellcheck source=lib/vm.sh
source "$ROOT/scripts/lib/vm.sh"
export MANY_CPUS_VM_TIMEOUT=${MANY_CPUS_VM_TIMEOUT:-1500}
export MANY_CPUS_VM_STRESS_TIMEOUT=${MANY_CPUS_VM_STRESS_TIMEOUT:-120}
export MANY_CPUS_VM_MEM=${MANY_CPUS_VM_MEM:-2048}
# The suite's injected stress runs at 2,000 operations per worker (5,000
# in the other VMs): 16 vCPUs on 2 host cores.
export MANY_CPUS_VM_INJECT_OPS=${MANY_CPUS_VM_INJECT_OPS:-2000}
vm_setup x86_64 many-cpus-vm.sh many-cpus
# The static glibc build's target dir (scripts/environments.sh static-glibc:
# the same target and RUSTFLAGS), so the test command compiles the
# dependencies for both once.
export CARGO_TARGET_DIR="$ROOT/target/env-static"
# 64 vCPUs, all present; the kernel brings up 16 (maxcpus=16 below).
VM_SMP=64
VM_GUEST_SETUP="$ROOT/scripts/many-cpus/setup.sh"
VM_GUEST_EXTRA="$ROOT/scripts/many-cpus/extra.sh"
# The test binaries with glibc's registration (the other VMs and the host
# run them with both owners; the stress modes here still alternate both),
# and the allocator's ownership stress with 32 workers (2 x the online
# CPUs, not 6 x) of 350 operations each: under emulation 16 vCPUs share 2
# host cores and each signal handler's munmap interrupts all of them; what
# fits the test command's time.
VM_TEST_OWNERS="libc"
# The allocator's conformance tests too (every size and alignment, the C
# contract's errors), on 64 possible CPUs.
VM_MALLOC_TESTS="conformance"
VM_GUEST_ENV="RESTARTABLE_MALLOC_TEST_OPS=350 RESTARTABLE_MALLOC_TEST_THREADS=32"

# --- 1. prerequisites ---------------------------------------------------------
vm_phase "prerequisites"
vm_need_cmd qemu-system-x86_64 qemu-system-x86
vm_need_cmd objdump binutils
vm_need_cmd cc gcc
vm_install_missing "qemu-system-x86_64, cpio"

# --- 2. kernel and busybox (Debian 13 amd64 .debs, cached) --------------------
vm_phase "x86-64 kernel and busybox (Debian 13 and its backports)"
# The newest generic amd64 kernel, trixie-backports' (7.x): from 6.13 on the
# kernel keeps mm_cids below min(threads, allowed CPUs) (6.12 lets a CPU
# keep the id of the last thread that ran there, so threads that hop over
# 16 CPUs use 16 ids), which the mm_cid memory tests measure.
pick_kernel() {
    apt-cache "${VM_APT_OPTS[@]}" search --names-only '^linux-image-[0-9].*-amd64$' |
        awk '{print $1}' | grep -Ev -- '-(rt|cloud)-amd64$' | sort -V | tail -n1
}
vm_apt amd64 \
    "http://deb.debian.org/debian trixie" \
    "http://deb.debian.org/debian trixie-updates" \
    "http://deb.debian.org/debian-security trixie-security" \
    "http://deb.debian.org/debian trixie-backports"
vm_fetch_kernel pick_kernel
grep -E '^CONFIG_HOTPLUG_CPU=y' "$KDIR"/config-* || { echo "the kernel has no CPU hot-plug" >&2; exit 1; }

# --- 3. static x86-64 binaries -----------------------------------------------
vm_phase "building static x86-64 test binaries and CLI ($PROFILE)"
vm_build_env cc
vm_build_cli
vm_check_sections objdump
vm_build_tests

# --- 4. initramfs -------------------------------------------------------------
vm_phase "initramfs"
vm_initramfs

# --- 5. boot ------------------------------------------------------------------
vm_phase "booting qemu-system-x86_64, 64 vCPUs, 16 online (TCG, timeout ${TIMEOUT}s)"
vm_boot qemu-system-x86_64 -M pc -cpu max \
    -append "console=ttyS0 panic=-1 quiet maxcpus=16"

# --- 6. verdict ---------------------------------------------------------------
# The many-CPU checks, on top of the common ones (vm_verdict calls this).
vm_verdict_extra() {
    local owner name n line
    check "16 of 64 possible CPUs online, sparse" \
        "^$VM_TAG-CPUS possible=0-63 present=0-63 online=0-3,8-19 count=16\$"
    check_block "info: 64 possible CPUs" info-glibc-rseq-on '"possible_cpus": 64'
    check_block "info: 16 online CPUs" info-glibc-rseq-on '"online_cpus": 16'
    for owner in $VM_TEST_OWNERS; do
        check_block "structures reclaimed from an offline CPU, owner $owner" \
            "test-many_cpus-$owner" '\[hotplug\] structures: cpu[0-9]+ offline \(rseq\).*all exact'
        check_block "allocator cache reclaimed from an offline CPU, owner $owner" \
            "test-many_cpu_caches-$owner" '\[hotplug\] allocator: cpu[0-9]+ offline \(rseq\)'
        check_block "PerCpu slots by mm_cid, owner $owner" \
            "test-many_cpus-$owner" '\[mm-cid-memory\] PerCpu: 4 threads over 16 CPUs .* by mm_cid [1-5] slots .* by CPU 16 slots'
        check_block "allocator cache blocks by mm_cid, owner $owner" \
            "test-many_cpu_caches-$owner" '\[mm-cid-memory\] allocator: 4 threads over 16 CPUs: [0-9]+ cache blocks \([0-9]+ KiB; [01] new in the hops\) by mm_cid .*, 1[0-9] \([0-9]+ KiB; [0-9]+ new in the hops\) by CPU'
    done
    for name in increment-pinned percpu-pinned stack-pinned pool-pinned drain-pinned \
        counter-inject buffer-inject fetch-update-inject pool-inject allocator-ownership; do
        check "hot-plug run $name: exact, CPUs offline and back" \
            "^$VM_TAG-HOTPLUG $name offlined=([2-9]|[1-9][0-9]+) onlined=[0-9]+ path=rseq exact=true online_after=0-3,8-19\$"
    done
    check "CPUs 40-47 online" "^$VM_TAG-CPUS .* online=0-3,8-19,40-47 count=24\$"
    check "taskset -c 44: info runs on CPU 44" "^$VM_TAG-TASKSET info cpu_id=44\$"
    for name in increment percpu pool drain; do
        check "taskset -c 40-47: $name exact on rseq" "^$VM_TAG-TASKSET $name cpus=40-47 path=rseq exact=true\$"
    done
    check "affinity changed under a running pool stress: exact" \
        "^$VM_TAG-AFFINITY pool changes=([3-9]|[1-9][0-9]+) rc=0 path=rseq exact=true\$"
    # The figures, for the record.
    grep -E "^$VM_TAG-(HOTPLUG|AFFINITY|TASKSET) " <<<"$clean" | sed 's/^/note:    /' || true
    grep -oE '\[(mm-cid-memory|hotplug)\] .*' <<<"$clean" | sort -u | sed 's/^/note:    /' || true
    # Growth: one JSON report per online count, rendered here.
    local files=()
    rm -f "$VM"/growth-*.json
    for n in 2 4 8 16; do
        line=$(sed -n "s/^$VM_TAG-GROWTH $n //p" <<<"$clean" | head -n1)
        if [[ -z $line ]]; then
            echo "MISSING: bench remote at $n online CPUs" >&2
            verdict=1
            continue
        fi
        printf '%s\n' "$line" >"$VM/growth-$n.json"
        files+=("$VM/growth-$n.json")
    done
    if ((${#files[@]} == 4)) &&
        "$VM_CLI" bench remote --from "${files[@]}" --plot "$VM/growth.svg" >"$VM/growth.txt" &&
        "$VM_CLI" bench remote --from "${files[@]}" --json >"$VM/growth.json"; then
        echo "ok:      growth table and chart: $VM/growth.txt, $VM/growth.svg"
        sed 's/^/growth:  /' "$VM/growth.txt"
    else
        echo "MISSING: the growth table (bench remote --from)" >&2
        verdict=1
    fi
}
vm_verdict
