#!/usr/bin/env bash
# Runs the aarch64 critical sections for real: builds the library's test
# binaries and the `restartable` CLI for aarch64 (static), packs them into an
# initramfs with busybox, and boots a Debian arm64 kernel under
# qemu-system-aarch64 (TCG; user-mode qemu does not implement rseq). The guest
# runs every test with glibc's own rseq registration off, so the library
# registers its own area and the rseq path runs; this script then checks the
# console log for `AARCH64-VM: PASS` and for proof that the rseq path ran.
#
# Everything it downloads or builds lives under target/ (cached):
#   target/aarch64-vm/        kernel, busybox, apt state, initramfs, console.log
#   target/aarch64-vm-build/  cargo target dir
#
# Environment:
#   AARCH64_VM_TIMEOUT=900        seconds before the VM is killed
#   AARCH64_VM_CMD_TIMEOUT=300    seconds per command inside the VM
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
PROFILE=${AARCH64_VM_PROFILE:-release}
TARGET=aarch64-unknown-linux-gnu
mkdir -p "$VM"

phase() {
    echo
    echo "==> [$(date +%T), +${SECONDS}s] $*"
}
trap 'echo "aarch64-vm.sh: FAILED after ${SECONDS}s (line $LINENO)" >&2' ERR

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# --- 1. prerequisites ---------------------------------------------------------
phase "prerequisites"
missing=()
command -v qemu-system-aarch64 >/dev/null || missing+=(qemu-system-arm)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[[ -e /usr/aarch64-linux-gnu/lib/libc.a ]] || missing+=(libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-objdump >/dev/null || missing+=(binutils-aarch64-linux-gnu)
command -v cpio >/dev/null || missing+=(cpio)
command -v gzip >/dev/null || missing+=(gzip)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
command -v timeout >/dev/null || missing+=(coreutils)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
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
EOF
cat >>"$RAMFS/init" <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root TERM=dumb RUST_BACKTRACE=1
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
cd /tmp

failed=""
count=0
run() { # run NAME COMMAND...
    name=$1; shift
    count=$((count + 1))
    echo
    echo "===== [$name] $*"
    timeout -s KILL "$CMD_TIMEOUT" "$@"
    rc=$?
    echo "===== [$name] exit=$rc"
    [ "$rc" -eq 0 ] || failed="$failed $name(rc=$rc)"
}
NORSEQ="GLIBC_TUNABLES=glibc.pthread.rseq=0"

echo "AARCH64-VM: guest up: $(uname -srm), $(nproc) CPUs"
grep -m1 -i -E '^(Features|CPU implementer)' /proc/cpuinfo
run info-glibc-rseq restartable info
run info-no-glibc-rseq env $NORSEQ restartable info
for t in /tests/*; do
    run "test-$(basename "$t")" env $NORSEQ RESTARTABLE_REQUIRE_RSEQ=1 "$t" --test-threads=1 --nocapture
done
run stress-counter-default env $NORSEQ RESTARTABLE_REQUIRE_RSEQ=1 restartable stress counter --json
echo
echo "===== restartable stress --help"
restartable stress --help
modes=$(restartable stress -h 2>/dev/null | sed -n 's/.*<MODE>.*\[possible values: \([^]]*\)\].*/\1/p' | tr -d ',')
echo "stress modes: ${modes:-none found}"
for m in $modes; do
    run "stress-$m" env $NORSEQ RESTARTABLE_REQUIRE_RSEQ=1 restartable stress "$m" --threads 4 --ops 20000 --json
done
if restartable stress -h 2>/dev/null | grep -q 'mm-cid'; then
    for m in $modes; do
        case $m in counter|churn) continue ;; esac
        run "stress-$m-mmcid-release" env $NORSEQ RESTARTABLE_REQUIRE_RSEQ=1 restartable stress "$m" --threads 4 --ops 20000 --index mm-cid --order release --json
    done
fi
# Delay loops at every injection point, with signals raised between
# operations (the CLI is built with inject and compare-twice).
for m in $modes; do
    case $m in churn) continue ;; esac
    run "stress-$m-inject" env $NORSEQ RESTARTABLE_REQUIRE_RSEQ=1 restartable stress "$m" --threads 6 --ops 5000 --inject 0=20,1=20,2=80,3=80 --signal-every 7 --json
done
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
check "AARCH64-VM: PASS" '^AARCH64-VM: PASS'
check "sections test ran on the rseq path" '\[sections\] path=rseq'
check "a stress report with \"path\": \"rseq\"" '"path": ?"rseq"'
grep -E '^AARCH64-VM: FAIL' <<<"$clean" >&2 || true
((qemu_rc == 124 || qemu_rc == 137)) && { echo "the VM timed out" >&2; verdict=1; }
echo
echo "total time: ${SECONDS}s ($(date -u -d "@$SECONDS" +%Mm%Ss))"
if ((verdict == 0)); then
    echo "aarch64-vm.sh: PASS"
else
    echo "aarch64-vm.sh: FAIL" >&2
fi
exit "$verdict"
