#!/usr/bin/env bash
# Runs the aarch64 critical sections for real: builds the library's test
# binaries and the `restartable` CLI for aarch64 (static), packs them into an
# initramfs with busybox, and boots a Debian arm64 kernel under
# qemu-system-aarch64 (TCG; user-mode qemu does not implement rseq). The guest
# runs with glibc's own rseq registration on (the static binaries find it
# through the weak __rseq_* symbols and adopt it: owner "libc") and off
# (GLIBC_TUNABLES=glibc.pthread.rseq=0: the library registers its own area,
# owner "library"): `restartable info --json` in both, every test binary of
# the library in both, and the stress modes with the owner alternating so
# that each mode runs with both. This script then checks the console log for
# `AARCH64-VM: PASS` and for proof that the rseq path ran with each owner.
#
# Everything it downloads or builds lives under target/ (cached):
#   target/aarch64-vm/        kernel, busybox, apt state, initramfs, console.log
#   target/aarch64-vm-build/  cargo target dir
#
# Environment:
#   AARCH64_VM_TIMEOUT=900        seconds before the VM is killed
#   AARCH64_VM_CMD_TIMEOUT=300    seconds per command inside the VM
#   AARCH64_VM_STRESS_TIMEOUT=60  `stress --timeout` in the VM (a run takes ~1 s)
#   AARCH64_VM_BACKTRACE=0        RUST_BACKTRACE in the VM (1: backtraces, which
#                                 cost ~40 s per run of the unit tests, whose
#                                 panic tests print them)
#   AARCH64_VM_KERNEL=<package>   e.g. linux-image-6.1.0-40-arm64 (default: newest)
#   AARCH64_VM_REFRESH=1          re-resolve and re-download kernel and busybox
#   AARCH64_VM_PROFILE=release    or `debug`
#   AARCH64_VM_SMP=2, AARCH64_VM_MEM=1024
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SECONDS=0
VM="$ROOT/target/aarch64-vm"
export CARGO_TARGET_DIR="$ROOT/target/aarch64-vm-build"
TIMEOUT=${AARCH64_VM_TIMEOUT:-900}
CMD_TIMEOUT=${AARCH64_VM_CMD_TIMEOUT:-300}
STRESS_TIMEOUT=${AARCH64_VM_STRESS_TIMEOUT:-60}
BACKTRACE=${AARCH64_VM_BACKTRACE:-0}
PROFILE=${AARCH64_VM_PROFILE:-release}
TARGET=aarch64-unknown-linux-gnu
mkdir -p "$VM"

phase() {
    echo
    echo "==> [$(date +%T), +${SECONDS}s] $*"
}
trap 'echo "aarch64-vm.sh: FAILED after ${SECONDS}s (line $LINENO)" >&2' ERR

# --- 1. prerequisites ---------------------------------------------------------
# Missing packages are installed by scripts/lib/packages.sh, which never
# removes or changes an installed package (it refuses instead). No qemu-user:
# user-mode qemu does not implement rseq, so nothing here runs qemu-aarch64.
phase "prerequisites"
# shellcheck source=lib/packages.sh
source "$ROOT/scripts/lib/packages.sh"
missing=()
command -v qemu-system-aarch64 >/dev/null || missing+=(qemu-system-arm)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[[ -e /usr/aarch64-linux-gnu/lib/libc.a ]] || missing+=(libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-objdump >/dev/null || missing+=(binutils-aarch64-linux-gnu)
command -v cpio >/dev/null || missing+=(cpio)
command -v gzip >/dev/null || missing+=(gzip)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
command -v timeout >/dev/null || missing+=(coreutils)
command -v file >/dev/null || missing+=(file)
if ((${#missing[@]})); then
    pkg_install "${missing[@]}"
else
    echo "all present: qemu-system-aarch64, the aarch64 cross toolchain, cpio"
fi
if ! grep -qx "$TARGET" <<<"$(rustup target list --installed)"; then
    rustup target add "$TARGET"
fi

# --- 2. kernel and busybox (arm64 .debs, cached) ------------------------------
# A private apt configuration for arm64 only: it leaves the host's dpkg
# architectures and sources alone.
phase "arm64 kernel and busybox"
APT="$VM/apt"
KDIR="$VM/kernel"
IMAGE="$KDIR/Image"
BUSYBOX="$VM/busybox"
if [[ ${AARCH64_VM_REFRESH:-0} == 1 ]]; then
    rm -rf "$KDIR" "$BUSYBOX" "$VM/debs"
fi
if [[ ! -s $IMAGE || ! -s $BUSYBOX ]] ||
    { [[ -n ${AARCH64_VM_KERNEL:-} ]] && [[ $(cat "$KDIR/package" 2>/dev/null) != "$AARCH64_VM_KERNEL" ]]; }; then
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$VM/debs"
    cat >"$APT/sources.list" <<'EOF'
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
EOF
    apt_opts=(
        -o APT::Architecture=arm64 -o APT::Architectures::=arm64
        -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$APT/lists" -o Dir::State::status=/dev/null
        -o Dir::Cache="$APT/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root
    )
    apt-get "${apt_opts[@]}" update
    kpkg=${AARCH64_VM_KERNEL:-}
    if [[ -z $kpkg ]]; then
        # Newest generic arm64 flavour (not rt, cloud, 16k, dbg, unsigned).
        kpkg=$(apt-cache "${apt_opts[@]}" search --names-only '^linux-image-[0-9].*-arm64$' |
            awk '{print $1}' | grep -Ev -- '-(rt|cloud)-arm64$' | sort -V | tail -n1)
    fi
    [[ -n $kpkg ]] || { echo "no arm64 kernel package found" >&2; exit 1; }
    echo "kernel package: $kpkg"
    (cd "$VM/debs" && apt-get "${apt_opts[@]}" download "$kpkg" busybox-static)
    rm -rf "$KDIR" "$VM/extract"
    mkdir -p "$KDIR" "$VM/extract"
    dpkg-deb -x "$(ls -t "$VM/debs/${kpkg}"_*.deb | head -n1)" "$VM/extract"
    dpkg-deb -x "$(ls -t "$VM/debs"/busybox-static_*.deb | head -n1)" "$VM/extract"
    vmlinuz=$(ls "$VM"/extract/boot/vmlinuz-* | head -n1)
    cp "$VM"/extract/boot/config-* "$KDIR/"
    # qemu -kernel loads a plain or gzipped arm64 Image; an EFI zboot image
    # (PE with "zimg" at offset 4) carries its compressed Image as a payload.
    if [[ $(dd if="$vmlinuz" bs=1 skip=4 count=4 status=none) == zimg ]]; then
        off=$(od -An -tu4 -j8 -N4 "$vmlinuz" | tr -d ' ')
        size=$(od -An -tu4 -j12 -N4 "$vmlinuz" | tr -d ' ')
        comp=$(dd if="$vmlinuz" bs=1 skip=24 count=8 status=none | tr -d '\0')
        echo "EFI zboot image, $comp payload"
        tail -c +$((off + 1)) "$vmlinuz" | head -c "$size" >"$KDIR/payload"
        case $comp in
            zstd) command -v zstd >/dev/null || pkg_install zstd ;;
            xz | lzma) command -v xz >/dev/null || pkg_install xz-utils ;;
        esac
        case $comp in
            gzip) gzip -dc "$KDIR/payload" >"$IMAGE" ;;
            zstd) zstd -dc "$KDIR/payload" >"$IMAGE" ;;
            xz | lzma) xz -dc "$KDIR/payload" >"$IMAGE" ;;
            *) echo "unsupported zboot compression: $comp" >&2; exit 1 ;;
        esac
        rm -f "$KDIR/payload"
    elif [[ $(od -An -tx1 -N2 "$vmlinuz" | tr -d ' ') == 1f8b ]]; then
        gzip -dc "$vmlinuz" >"$IMAGE"
    else
        cp "$vmlinuz" "$IMAGE"
    fi
    cp "$VM/extract/bin/busybox" "$BUSYBOX"
    echo "$kpkg" >"$KDIR/package"
    rm -rf "$VM/extract"
fi
echo "kernel: $(cat "$KDIR/package") ($(file -b "$IMAGE" | cut -c1-60))"
grep -E '^CONFIG_RSEQ=' "$KDIR"/config-* || echo "warning: kernel config lacks CONFIG_RSEQ=y" >&2

# --- 3. static aarch64 binaries ----------------------------------------------
phase "building static aarch64 test binaries and CLI ($PROFILE)"
# Static: the initramfs has no libc. The CLI and the test binaries pass 1 MiB
# of .text, which also checks that the sections' far branches link.
rustflags='-C target-feature=+crt-static'
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export RUSTFLAGS="$rustflags"
profile_flag=()
[[ $PROFILE == release ]] && profile_flag=(--release)

build_json() { # prints the `executable` of every artifact, one per line
    local out
    out=$(mktemp)
    if ! cargo "$@" --message-format=json-render-diagnostics >"$out"; then
        rm -f "$out"
        return 1
    fi
    grep -o '"executable":"[^"]*"' "$out" | sed 's/^"executable":"//; s/"$//'
    rm -f "$out"
}
mapfile -t tests < <(build_json test --no-run "${profile_flag[@]}" --target "$TARGET" \
    -p restartable --features abort-stats)
((${#tests[@]})) || { echo "no test binaries built" >&2; exit 1; }
mapfile -t clis < <(build_json build "${profile_flag[@]}" --target "$TARGET" \
    -p restartable-cli --features abort-stats,inject,compare-twice --bin restartable)
((${#clis[@]})) || { echo "CLI not built" >&2; exit 1; }

# --- 4. initramfs -------------------------------------------------------------
phase "initramfs"
RAMFS="$VM/initramfs"
rm -rf "$RAMFS"
mkdir -p "$RAMFS"/{bin,sbin,dev,proc,sys,tmp,tests,root}
cp "$BUSYBOX" "$RAMFS/bin/busybox"
ln -s busybox "$RAMFS/bin/sh"
cp "${clis[0]}" "$RAMFS/bin/restartable"
for t in "${tests[@]}"; do
    name=$(basename "$t")
    name=${name%-*} # strip cargo's -<hash>
    cp "$t" "$RAMFS/tests/$name"
    echo "test binary: $name  <- $t"
done
# /dev/console must exist before /init runs for it to have stdio.
mknod -m 600 "$RAMFS/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$RAMFS/dev/null" c 1 3 2>/dev/null || true

cat >"$RAMFS/init" <<EOF
#!/bin/busybox sh
CMD_TIMEOUT=$CMD_TIMEOUT
STRESS_TIMEOUT=$STRESS_TIMEOUT
export RUST_BACKTRACE=$BACKTRACE
EOF
cat >>"$RAMFS/init" <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root TERM=dumb
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
cd /tmp

# Both registrations: glibc's own (the static binaries find it through the
# weak __rseq_* symbols; owner "libc") and, with the tunable off, the
# library's ("library"). The host checks the AARCH64-VM-* lines.
NORSEQ="GLIBC_TUNABLES=glibc.pthread.rseq=0"
failed=""
count=0
set -o pipefail
run() { # run NAME COMMAND...: output to the console and to /tmp/out
    name=$1; shift
    count=$((count + 1))
    echo
    echo "===== [$name] $*"
    t0=$(date +%s)
    timeout -s KILL "$CMD_TIMEOUT" "$@" 2>&1 | tee /tmp/out
    rc=$?
    echo "===== [$name] exit=$rc ($(($(date +%s) - t0))s)"
    [ "$rc" -eq 0 ] || failed="$failed $name(rc=$rc)"
    return $rc
}
field() { # field KEY: a scalar of the JSON in /tmp/out
    tr -d '\n' </tmp/out | grep -o "\"$1\": *[^,}]*" | head -n1 | sed 's/^"[^"]*": *//; s/"//g; s/ *$//'
}
owners() { # the "owners" array of the stress report in /tmp/out
    tr -d '\n ' </tmp/out | grep -o '"owners":\[[^]]*\]' | sed 's/^"owners":\[//; s/\]$//; s/"//g'
}
info_check() { # info_check ON|OFF WANT_OWNER COMMAND...
    rseq=$1 want=$2; shift 2
    run "info-glibc-rseq-$rseq" "$@" info --json
    owner=$(field owner) avail=$(field rseq_available)
    echo "AARCH64-VM-INFO glibc-rseq=$rseq owner=$owner rseq_available=$avail"
    [ "$owner" = "$want" ] && [ "$avail" = true ] ||
        failed="$failed info-glibc-rseq-$rseq(owner=$owner,want=$want,rseq_available=$avail)"
}
stress() { # stress NAME libc|library ARGS...: one stress run with that owner
    sname=$1 want=$2; shift 2
    if [ "$want" = libc ]; then set -- env RESTARTABLE_REQUIRE_RSEQ=1 restartable stress "$@" --timeout "$STRESS_TIMEOUT" --json
    else set -- env $NORSEQ RESTARTABLE_REQUIRE_RSEQ=1 restartable stress "$@" --timeout "$STRESS_TIMEOUT" --json; fi
    run "stress-$sname-$want" "$@" || return
    path=$(field path) exact=$(field exact) got=$(owners)
    echo "AARCH64-VM-STRESS $sname want=$want owners=$got path=$path exact=$exact"
    [ "$path" = rseq ] && [ "$exact" = true ] && [ "$got" = "$want" ] ||
        failed="$failed stress-$sname-$want(owners=$got,path=$path,exact=$exact)"
}

echo "AARCH64-VM: guest up: $(uname -srm), $(nproc) CPUs"
grep -m1 -i -E '^(Features|CPU implementer)' /proc/cpuinfo
start=$(date +%s)
restartable info
info_check on libc restartable
info_check off library env $NORSEQ restartable
# Every test binary of the library with each owner.
for t in /tests/*; do
    run "test-$(basename "$t")-libc" env RESTARTABLE_REQUIRE_RSEQ=1 "$t" --test-threads=1 --nocapture
    run "test-$(basename "$t")-library" env $NORSEQ RESTARTABLE_REQUIRE_RSEQ=1 "$t" --test-threads=1 --nocapture
done
echo "AARCH64-VM-TIME tests $(($(date +%s) - start))s"
start=$(date +%s)
stress counter-default libc counter
stress counter-default library counter
echo
echo "===== restartable stress --help"
restartable stress --help >/tmp/help 2>&1
cat /tmp/help
# clap lists the modes as "- NAME: doc" lines under Arguments (long help)
# or as "[possible values: a, b]" (short help, undocumented values).
modes=$(sed -n '/^Arguments:/,/^Options:/s/^ *- \([a-z0-9-]*\):.*/\1/p' /tmp/help)
[ -n "$modes" ] ||
    modes=$(sed -n 's/.*<MODE>.*\[possible values: \([^]]*\)\].*/\1/p' /tmp/help | tr -d ',')
modes=$(echo $modes)
echo "AARCH64-VM-MODES $(echo $modes | wc -w): $modes"
[ -n "$modes" ] || failed="$failed stress-modes(none-found-in-help)"
# The owner alternates by the mode's place in the list, the other way round
# in the mm-cid and the injection variants, so that a mode in two variants
# runs with both owners.
pick() { # pick INDEX FLIP: libc or library
    if [ $((($1 + $2) % 2)) -eq 0 ]; then echo libc; else echo library; fi
}
i=0
for m in $modes; do
    i=$((i + 1))
    # churn starts short-lived threads: --threads is how many in all, and
    # it takes no --ops; it runs with both owners here (no other variant).
    case $m in
        churn) for o in libc library; do stress churn "$o" churn --threads 400; done ;;
        *) stress "$m" "$(pick $i 1)" "$m" --threads 4 --ops 20000 ;;
    esac
done
if grep -q 'mm-cid' /tmp/help; then
    i=0
    for m in $modes; do
        i=$((i + 1))
        # --index applies to percpu and the raw-section modes, --order to
        # the raw-section modes only; the others refuse them.
        case $m in
            counter|churn|fetch-update|stack|pool|drain) continue ;;
            percpu) stress "$m-mmcid" "$(pick $i 0)" "$m" --threads 4 --ops 20000 --index mm-cid ;;
            *) stress "$m-mmcid-release" "$(pick $i 0)" "$m" --threads 4 --ops 20000 --index mm-cid --order release ;;
        esac
    done
fi
# Delay loops at every injection point, with signals raised between
# operations (the CLI is built with inject and compare-twice).
i=0
for m in $modes; do
    i=$((i + 1))
    case $m in churn) continue ;; esac
    stress "$m-inject" "$(pick $i 0)" "$m" --threads 6 --ops 5000 --inject 0=20,1=20,2=80,3=80 --signal-every 7
done
echo "AARCH64-VM-TIME stress $(($(date +%s) - start))s"
echo
if [ -z "$failed" ]; then
    echo "AARCH64-VM: PASS ($count commands)"
else
    echo "AARCH64-VM: FAIL$failed"
fi
sync
poweroff -f
EOF
chmod 755 "$RAMFS/init"
INITRD="$VM/initramfs.cpio.gz"
(cd "$RAMFS" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 >"$INITRD")
echo "initramfs: $(du -h "$INITRD" | cut -f1)"

# --- 5. boot ------------------------------------------------------------------
phase "booting qemu-system-aarch64 (TCG, timeout ${TIMEOUT}s)"
LOG="$VM/console.log"
boot_start=$SECONDS
set +e
timeout --foreground -k 10 "$TIMEOUT" qemu-system-aarch64 \
    -M virt -cpu max -smp "${AARCH64_VM_SMP:-2}" -m "${AARCH64_VM_MEM:-1024}" \
    -accel tcg,thread=multi \
    -nographic -no-reboot -nic none \
    -kernel "$IMAGE" -initrd "$INITRD" \
    -append "console=ttyAMA0 panic=-1 quiet" </dev/null 2>&1 | tee "$LOG"
qemu_rc=${PIPESTATUS[0]}
set -e
echo
echo "qemu exited with $qemu_rc after $((SECONDS - boot_start))s; console log: $LOG"

# --- 6. verdict ---------------------------------------------------------------
clean=$(tr -d '\r' <"$LOG")
verdict=0
check() { # check DESCRIPTION EXTENDED-REGEX
    if grep -qE "$2" <<<"$clean"; then
        echo "ok:      $1"
    else
        echo "MISSING: $1" >&2
        verdict=1
    fi
}
# block NAME: the console output of the guest command NAME.
block() {
    awk -v n="[$1]" 'index($0, "===== " n " ") == 1 { on = 1; next }
        index($0, "===== " n " exit=") == 1 { on = 0 } on' <<<"$clean"
}
check_block() { # check_block DESCRIPTION NAME EXTENDED-REGEX
    # (Not `block | grep -q`: under pipefail grep's early exit fails awk.)
    if grep -qE "$3" <<<"$(block "$2")"; then
        echo "ok:      $1"
    else
        echo "MISSING: $1 (in the output of [$2])" >&2
        verdict=1
    fi
}
check "AARCH64-VM: PASS" '^AARCH64-VM: PASS'
check "info --json with glibc's rseq on: owner libc, rseq available" \
    '^AARCH64-VM-INFO glibc-rseq=on owner=libc rseq_available=true$'
check "info --json with glibc's rseq off: owner library, rseq available" \
    '^AARCH64-VM-INFO glibc-rseq=off owner=library rseq_available=true$'
for owner in libc library; do
    Owner=${owner^}
    check_block "runtime test adopted owner $owner" "test-runtime-$owner" "\\[in-process\\] Registration \\{ owner: $Owner,"
    check_block "sections test ran on the rseq path with owner $owner" "test-sections-$owner" '\[sections\] path=rseq'
    n=$(grep -cE "^AARCH64-VM-STRESS .* want=$owner owners=$owner path=rseq exact=true$" <<<"$clean" || true)
    if ((n >= 10)); then
        echo "ok:      $n stress runs exact on the rseq path with owner $owner"
    else
        echo "MISSING: stress runs exact on the rseq path with owner $owner: $n, expected 10 or more" >&2
        verdict=1
    fi
done
grep -E '^AARCH64-VM: FAIL' <<<"$clean" >&2 || true
grep -E '^AARCH64-VM-TIME ' <<<"$clean" || true
((qemu_rc == 124 || qemu_rc == 137)) && { echo "the VM timed out" >&2; verdict=1; }
echo
echo "total time: ${SECONDS}s ($(date -u -d "@$SECONDS" +%Mm%Ss))"
if ((verdict == 0)); then
    echo "aarch64-vm.sh: PASS"
else
    echo "aarch64-vm.sh: FAIL" >&2
fi
exit "$verdict"
