#!/usr/bin/env bash
# Runs the aarch64 critical sections for real: builds the library's test
# binaries and the `restartable` CLI for aarch64 (static), packs them into an
# initramfs with busybox, and boots a Debian arm64 kernel under
# qemu-system-aarch64 (TCG; user-mode qemu does not implement rseq). The guest
# runs with glibc's own rseq registration on (the static binaries find it
# through the weak __rseq_* symbols and adopt it: owner "libc") and off
# (GLIBC_TUNABLES=glibc.pthread.rseq=0: the library registers its own area,
# owner "library"): `restartable info --json` in both, every test binary of
# the library (those about registration in both, the others with glibc's: scripts/lib/vm.sh), and the stress modes with the owner alternating so
# that each mode runs with both. This script then checks the console log for
# `AARCH64-VM: PASS` and for proof that the rseq path ran with each owner.
# The plumbing is shared with scripts/riscv64-vm.sh (scripts/lib/vm.sh).
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
#   AARCH64_VM_SKIP_TESTS="a b"   test binaries (tests/<name>.rs) to leave out
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SECONDS=0
# shellcheck source=lib/vm.sh
source "$ROOT/scripts/lib/vm.sh"
vm_setup aarch64 aarch64-vm.sh

# --- 1. prerequisites ---------------------------------------------------------
vm_phase "prerequisites"
vm_need_cmd qemu-system-aarch64 qemu-system-arm
vm_need_cmd aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
vm_need_file /usr/aarch64-linux-gnu/lib/libc.a libc6-dev-arm64-cross
vm_need_cmd aarch64-linux-gnu-objdump binutils-aarch64-linux-gnu
vm_install_missing "qemu-system-aarch64, the aarch64 cross toolchain, cpio"

# --- 2. kernel and busybox (arm64 .debs, cached) ------------------------------
vm_phase "arm64 kernel and busybox"
pick_kernel() { # the newest generic arm64 flavour (not rt, cloud, 16k, dbg, unsigned)
    apt-cache "${VM_APT_OPTS[@]}" search --names-only '^linux-image-[0-9].*-arm64$' |
        awk '{print $1}' | grep -Ev -- '-(rt|cloud)-arm64$' | sort -V | tail -n1
}
vm_apt arm64 \
    "http://deb.debian.org/debian bookworm" \
    "http://deb.debian.org/debian bookworm-updates" \
    "http://deb.debian.org/debian-security bookworm-security" \
    "http://deb.debian.org/debian bookworm-backports"
vm_fetch_kernel pick_kernel

# --- 3. static aarch64 binaries ----------------------------------------------
vm_phase "building static aarch64 test binaries and CLI ($PROFILE)"
# Static: the initramfs has no libc. The CLI and the test binaries pass 1 MiB
# of .text, which also checks that the sections' far branches link.
# tests/compile_fail.rs is left out (host-only: trybuild needs cargo).
vm_build_env aarch64-linux-gnu-gcc
vm_build_cli
vm_check_sections aarch64-linux-gnu-objdump
vm_build_tests

# --- 4. initramfs -------------------------------------------------------------
vm_phase "initramfs"
vm_initramfs

# --- 5. boot ------------------------------------------------------------------
vm_phase "booting qemu-system-aarch64 (TCG, timeout ${TIMEOUT}s)"
vm_boot qemu-system-aarch64 -M virt -cpu max \
    -append "console=ttyAMA0 panic=-1 quiet"

# --- 6. verdict ---------------------------------------------------------------
vm_verdict
