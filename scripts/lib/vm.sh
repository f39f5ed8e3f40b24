# shellcheck shell=bash
# The plumbing shared by the VM scripts (scripts/aarch64-vm.sh,
# scripts/riscv64-vm.sh): each builds the library's test binaries and the
# `restartable` CLI for its architecture (static), packs them into an
# initramfs with busybox, boots a Debian kernel of that architecture under
# qemu-system-<arch> (TCG; user-mode qemu does not implement rseq) and
# checks the console log. A script sets ROOT (the repository) and then:
#
#     source "$ROOT/scripts/lib/vm.sh"
#     vm_setup ARCH SCRIPT           # aarch64 or riscv64; variables below
#     vm_need_cmd CMD PKG, vm_need_file FILE PKG; vm_install_missing WHAT
#     vm_apt DEB_ARCH "URL SUITE"...; vm_fetch_kernel PICK_FN  # IMAGE, BUSYBOX
#     [vm_fetch_sysroot PKG...]                              # SYSROOT
#     vm_build_env LINKER [RUSTFLAGS]; vm_build_json ARGS...
#     vm_build_cli; vm_check_sections OBJDUMP
#     [VM_LEFT_OUT[NAME]=REASON]; vm_build_tests  # or vm_add_test PATH...
#     vm_initramfs; vm_boot QEMU ARGS...; vm_verdict
#     (VM_NOTES+=(LINE): printed with the verdict)
#
# What the guest runs is the same for every architecture (vm_initramfs):
# `restartable info --json` with glibc's rseq registration on (owner
# "libc": the static binaries find it through the weak __rseq_* symbols)
# and off (GLIBC_TUNABLES=glibc.pthread.rseq=0: owner "library"), every
# test binary (those about registration, VM_BOTH_OWNER_TESTS, with each
# owner; the others with glibc's), and every stress mode with the owner
# alternating, all with RESTARTABLE_REQUIRE_RSEQ=1. Every architecture a
# script runs has critical sections: a build without them (no __rseq_cs
# in the CLI, or `critical_sections` false in the guest) fails, and every
# stress run must be exact on the rseq path.
#
# Everything downloaded or built lives under target/ (cached):
#   target/<arch>-vm/        kernel, busybox, apt state, initramfs, console.log
#   target/<arch>-vm-build/  cargo target dir
#
# Environment, with PREFIX the architecture in capitals (AARCH64, RISCV64):
#   PREFIX_VM_TIMEOUT=900        seconds before the VM is killed
#   PREFIX_VM_CMD_TIMEOUT=300    seconds per command inside the VM
#   PREFIX_VM_STRESS_TIMEOUT=60  `stress --timeout` in the VM (a run takes ~1 s)
#   PREFIX_VM_INJECT_OPS=5000    operations per worker of the injected stress runs
#   PREFIX_VM_BACKTRACE=0        RUST_BACKTRACE in the VM (1: backtraces, which
#                                cost ~40 s per run of the unit tests, whose
#                                panic tests print them)
#   PREFIX_VM_KERNEL=<package>   a linux-image-... package (default: newest)
#   PREFIX_VM_REFRESH=1          re-resolve and re-download kernel and busybox
#   PREFIX_VM_PROFILE=release    or `debug`
#   PREFIX_VM_SMP=2, PREFIX_VM_MEM=1024
#   PREFIX_VM_SKIP_TESTS="a b"   test binaries (tests/<name>.rs) to leave out

# shellcheck source=packages.sh
source "$ROOT/scripts/lib/packages.sh"

# vm_env NAME DEFAULT: the value of PREFIX_VM_NAME, or DEFAULT.
vm_env() {
    local var="${VM_PREFIX}_VM_$1"
    echo "${!var:-$2}"
}

vm_phase() {
    echo
    echo "==> [$(date +%T), +${SECONDS}s] $*"
}

# vm_setup ARCH SCRIPT [NAME]: the variables every step uses. NAME (default
# ARCH) names the VM: its PREFIX, its console tag and its target/ folders.
vm_setup() {
    VM_ARCH=$1
    VM_SCRIPT=$2
    local name=${3:-$1}
    VM_PREFIX=$(tr 'a-z-' 'A-Z_' <<<"$name")
    VM_TAG="$(tr 'a-z_' 'A-Z-' <<<"$name")-VM"
    TARGET=$VM_ARCH-unknown-linux-gnu
    [[ $VM_ARCH == riscv64 ]] && TARGET=riscv64gc-unknown-linux-gnu
    VM="$ROOT/target/$name-vm"
    export CARGO_TARGET_DIR="$ROOT/target/$name-vm-build"
    TIMEOUT=$(vm_env TIMEOUT 900)
    CMD_TIMEOUT=$(vm_env CMD_TIMEOUT 300)
    STRESS_TIMEOUT=$(vm_env STRESS_TIMEOUT 60)
    INJECT_OPS=$(vm_env INJECT_OPS 5000)
    BACKTRACE=$(vm_env BACKTRACE 0)
    PROFILE=$(vm_env PROFILE release)
    VM_SMP=$(vm_env SMP 2)
    VM_MEM=$(vm_env MEM 1024)
    VM_ACCEL="tcg,thread=multi"
    # The owners the test binaries run with (the stress modes alternate
    # both whatever this says); VM_GUEST_ENV: VAR=VALUE words exported in
    # the guest.
    VM_TEST_OWNERS="libc library"
    # The test binaries that run with every owner of VM_TEST_OWNERS (the
    # rest with its first): those whose subject is the registration.
    VM_BOTH_OWNER_TESTS="runtime sections abort_sweep first_registration fork restartable"
    VM_MISSING=()
    VM_TESTS=()
    VM_NOTES=()
    declare -gA VM_LEFT_OUT=()
    mkdir -p "$VM"
    # errtrace: the steps run in functions, which must report too; only the
    # script's own process does (not a command or process substitution,
    # whose failure its caller sees or deliberately ignores).
    set -E
    trap 'if [[ $BASHPID == "$$" ]]; then echo "$VM_SCRIPT: FAILED after ${SECONDS}s (line $LINENO)" >&2; fi' ERR
}

# --- 1. prerequisites ---------------------------------------------------------
# Missing packages are installed by scripts/lib/packages.sh, which never
# removes or changes an installed package (it refuses instead). No
# qemu-user: user-mode qemu does not implement rseq.
vm_need_cmd() { # vm_need_cmd COMMAND PACKAGE
    command -v "$1" >/dev/null || VM_MISSING+=("$2")
}
vm_need_file() { # vm_need_file FILE PACKAGE
    [[ -e $1 ]] || VM_MISSING+=("$2")
}
vm_install_missing() { # vm_install_missing DESCRIPTION-OF-WHAT-IS-NEEDED
    vm_need_cmd cpio cpio
    vm_need_cmd gzip gzip
    vm_need_cmd dpkg-deb dpkg
    vm_need_cmd timeout coreutils
    vm_need_cmd file file
    if ((${#VM_MISSING[@]})); then
        pkg_install "${VM_MISSING[@]}"
    else
        echo "all present: $1"
    fi
    if ! grep -qx "$TARGET" <<<"$(rustup target list --installed)"; then
        rustup target add "$TARGET"
    fi
}

# --- 2. kernel and busybox (.debs of the guest architecture, cached) ----------
# vm_apt DEB_ARCH "URL SUITE"...: a private apt configuration for DEB_ARCH
# only, with those suites (it leaves the host's dpkg architectures and
# sources alone): sets VM_APT_OPTS, for apt-get and apt-cache.
vm_apt() {
    local deb_arch=$1 suite apt="$VM/apt"
    shift
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$VM/debs"
    : >"$apt/sources.list"
    for suite in "$@"; do
        echo "deb [arch=$deb_arch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $suite main" \
            >>"$apt/sources.list"
    done
    VM_APT_OPTS=(
        -o APT::Architecture="$deb_arch" -o APT::Architectures::="$deb_arch"
        -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$apt/lists" -o Dir::State::status=/dev/null
        -o Dir::Cache="$apt/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root
    )
    VM_APT_UPDATED=0
}

vm_apt_update() { # once per run, and only when something is to be fetched
    ((VM_APT_UPDATED)) && return 0
    apt-get "${VM_APT_OPTS[@]}" update
    VM_APT_UPDATED=1
}

# vm_fetch_kernel PICK_FN: downloads the kernel package (PREFIX_VM_KERNEL,
# or the one PICK_FN prints; PICK_FN runs apt-cache with
# "${VM_APT_OPTS[@]}") and busybox-static, through vm_apt's configuration.
# Sets KDIR, IMAGE (a kernel image qemu's -kernel loads) and BUSYBOX.
vm_fetch_kernel() {
    local pick=$1 want
    KDIR="$VM/kernel"
    IMAGE="$KDIR/Image"
    BUSYBOX="$VM/busybox"
    want=$(vm_env KERNEL "")
    if [[ $(vm_env REFRESH 0) == 1 ]]; then
        rm -rf "$KDIR" "$BUSYBOX" "$VM/debs"
        mkdir -p "$VM/debs"
    fi
    if [[ ! -s $IMAGE || ! -s $BUSYBOX ]] ||
        { [[ -n $want ]] && [[ $(cat "$KDIR/package" 2>/dev/null) != "$want" ]]; }; then
        vm_apt_update
        local kpkg=$want
        [[ -n $kpkg ]] || kpkg=$("$pick")
        [[ -n $kpkg ]] || { echo "no kernel package found" >&2; exit 1; }
        echo "kernel package: $kpkg"
        (cd "$VM/debs" && apt-get "${VM_APT_OPTS[@]}" download "$kpkg" busybox-static)
        rm -rf "$KDIR" "$VM/extract"
        mkdir -p "$KDIR" "$VM/extract"
        dpkg-deb -x "$(ls -t "$VM/debs/${kpkg}"_*.deb | head -n1)" "$VM/extract"
        dpkg-deb -x "$(ls -t "$VM/debs"/busybox-static_*.deb | head -n1)" "$VM/extract"
        # Debian's 7.x kernels ship the image in linux-binary-<version> and
        # the config in linux-base-<version>, on which linux-image-<version>
        # only depends; both under /usr/lib/modules/<version>/.
        if ! compgen -G "$VM/extract/boot/vmlinu[xz]-*" >/dev/null; then
            local part deb
            for part in binary base; do
                deb=${kpkg/#linux-image-/linux-$part-}
                (cd "$VM/debs" && apt-get "${VM_APT_OPTS[@]}" download "$deb")
                dpkg-deb -x "$(ls -t "$VM/debs/${deb}"_*.deb | head -n1)" "$VM/extract"
            done
            mkdir -p "$VM/extract/boot"
            local mod
            for mod in "$VM"/extract/usr/lib/modules/*/; do
                cp "$mod/vmlinuz" "$VM/extract/boot/vmlinuz-$(basename "$mod")"
                cp "$mod/config" "$VM/extract/boot/config-$(basename "$mod")"
            done
        fi
        # vmlinuz-* (arm64), vmlinux-* (riscv64: a flat Image with a PE header).
        local vmlinuz
        vmlinuz=$(ls "$VM"/extract/boot/vmlinu[xz]-* | head -n1)
        cp "$VM"/extract/boot/config-* "$KDIR/"
        vm_unpack_image "$vmlinuz" "$IMAGE"
        # /bin (bookworm) or /usr/bin (trixie, merged /usr).
        local bb
        for bb in "$VM/extract/bin/busybox" "$VM/extract/usr/bin/busybox"; do
            [[ -e $bb ]] && { cp "$bb" "$BUSYBOX"; break; }
        done
        [[ -s $BUSYBOX ]] || { echo "no busybox in busybox-static" >&2; exit 1; }
        echo "$kpkg" >"$KDIR/package"
        rm -rf "$VM/extract"
    fi
    echo "kernel: $(cat "$KDIR/package") ($(file -b "$IMAGE" | cut -c1-60))"
    grep -E '^CONFIG_RSEQ=' "$KDIR"/config-* || echo "warning: kernel config lacks CONFIG_RSEQ=y" >&2
}

# vm_fetch_sysroot PKG...: the guest architecture's PKGs (e.g. libc6-dev),
# through vm_apt's configuration, extracted into SYSROOT (set here), which
# PREFIX_VM_REFRESH=1 renews.
vm_fetch_sysroot() {
    SYSROOT="$VM/sysroot"
    if [[ $(vm_env REFRESH 0) == 1 ]]; then
        rm -rf "$SYSROOT"
    fi
    if [[ ! -s $SYSROOT/packages || $(cat "$SYSROOT/requested" 2>/dev/null) != "$*" ]]; then
        vm_apt_update
        local p deb
        rm -rf "$SYSROOT" "$VM/sysroot-debs"
        mkdir -p "$SYSROOT" "$VM/sysroot-debs"
        (cd "$VM/sysroot-debs" && apt-get "${VM_APT_OPTS[@]}" download "$@")
        for deb in "$VM/sysroot-debs"/*.deb; do
            dpkg-deb -x "$deb" "$SYSROOT"
            dpkg-deb -f "$deb" Package Version | paste -sd' ' >>"$SYSROOT/packages.tmp"
        done
        echo "$*" >"$SYSROOT/requested"
        mv "$SYSROOT/packages.tmp" "$SYSROOT/packages"
        rm -rf "$VM/sysroot-debs"
    fi
    echo "sysroot: $(sed 's/^Package: //; s/ Version: / /' "$SYSROOT/packages" | paste -sd, -)"
}

# vm_unpack_image VMLINUZ IMAGE: qemu -kernel loads a plain Image (or, on
# arm64, a gzipped one); an EFI zboot image (PE with "zimg" at offset 4)
# carries its compressed Image as a payload.
vm_unpack_image() {
    local vmlinuz=$1 image=$2
    if [[ $(dd if="$vmlinuz" bs=1 skip=4 count=4 status=none | tr -d '\0') == zimg ]]; then
        local off size comp
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
            gzip) gzip -dc "$KDIR/payload" >"$image" ;;
            zstd) zstd -dc "$KDIR/payload" >"$image" ;;
            xz | lzma) xz -dc "$KDIR/payload" >"$image" ;;
            *) echo "unsupported zboot compression: $comp" >&2; exit 1 ;;
        esac
        rm -f "$KDIR/payload"
    elif [[ $(od -An -tx1 -N2 "$vmlinuz" | tr -d ' ') == 1f8b ]]; then
        gzip -dc "$vmlinuz" >"$image"
    else
        cp "$vmlinuz" "$image"
    fi
}

# --- 3. static binaries -------------------------------------------------------
# vm_build_env LINKER [RUSTFLAGS]: static (the initramfs has no libc), with
# LINKER for the target (and more RUSTFLAGS). Sets VM_PROFILE_FLAG.
vm_build_env() {
    local var
    var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$TARGET")_LINKER"
    export "$var=$1"
    export RUSTFLAGS="-C target-feature=+crt-static${2:+ $2}"
    VM_PROFILE_FLAG=()
    [[ $PROFILE == release ]] && VM_PROFILE_FLAG=(--release)
    return 0
}

vm_build_json() { # prints the `executable` of every artifact, one per line
    local out
    out=$(mktemp)
    if ! cargo "$@" --message-format=json-render-diagnostics >"$out"; then
        rm -f "$out"
        return 1
    fi
    grep -o '"executable":"[^"]*"' "$out" | sed 's/^"executable":"//; s/"$//'
    rm -f "$out"
}

# vm_build_cli: the CLI with every testing feature; sets VM_CLI.
vm_build_cli() {
    local clis
    mapfile -t clis < <(vm_build_json build "${VM_PROFILE_FLAG[@]}" --target "$TARGET" \
        -p restartable-cli --features abort-stats,inject,compare-twice --bin restartable)
    ((${#clis[@]})) || { echo "CLI not built" >&2; exit 1; }
    VM_CLI=${clis[0]}
}

# vm_check_sections OBJDUMP: the CLI (vm_build_cli) must carry the critical
# sections' descriptors in a __rseq_cs ELF section. (grep -c: a `grep -q`
# at the end of the pipe could fail objdump with SIGPIPE under pipefail.)
vm_check_sections() {
    if (($("$1" -h "$VM_CLI" | grep -cw __rseq_cs || true))); then
        echo "critical sections: present (__rseq_cs in the CLI)"
    else
        echo "no __rseq_cs section in the CLI: no critical sections for $VM_ARCH in this build" >&2
        exit 1
    fi
}

vm_add_test() { # vm_add_test PATH...: test binaries for the initramfs
    VM_TESTS+=("$@")
}

# vm_build_tests: the library's test binaries (its unit tests and every
# tests/<name>.rs, --features abort-stats) for the initramfs, but those in
# VM_LEFT_OUT (name -> reason, each named in the verdict): compile_fail
# (host-only), PREFIX_VM_SKIP_TESTS, and what the script puts there.
vm_build_tests() {
    local t args=(--lib) tests
    VM_LEFT_OUT[compile_fail]="host-only: a trybuild test, which compiles its cases with cargo (not in the guest)"
    for t in $(vm_env SKIP_TESTS ""); do
        VM_LEFT_OUT[$t]="${VM_PREFIX}_VM_SKIP_TESTS"
    done
    for t in "$ROOT"/crates/restartable/tests/*.rs; do
        t=$(basename "$t" .rs)
        if [[ -n ${VM_LEFT_OUT[$t]:-} ]]; then
            VM_NOTES+=("test binary $t left out: ${VM_LEFT_OUT[$t]}")
            echo "test binary $t left out: ${VM_LEFT_OUT[$t]}"
        else
            args+=(--test "$t")
        fi
    done
    mapfile -t tests < <(vm_build_json test --no-run "${VM_PROFILE_FLAG[@]}" --target "$TARGET" \
        -p restartable --features abort-stats "${args[@]}")
    ((${#tests[@]})) || { echo "no test binaries built" >&2; exit 1; }
    vm_add_test "${tests[@]}"
    # The allocator's unit tests, its ownership stress test (sections on
    # this architecture: rseq and fallback paths, cpu_id and mm_cid
    # indexes), the index test (frees land in the block of the
    # thread's id) and the many-CPU test (cache memory by index; an
    # offline CPU's cache reclaimed, where hot-plug is on), and the tests
    # VM_MALLOC_TESTS names (tests/<name>.rs; the many-CPU VM adds
    # conformance). Its conformance and model tests do not depend on the
    # architecture's sections and are long under emulation: the host runs
    # them, and the other VMs leave them out.
    local extra=() t2
    for t2 in ${VM_MALLOC_TESTS:-}; do extra+=(--test "$t2"); done
    mapfile -t tests < <(vm_build_json test --no-run "${VM_PROFILE_FLAG[@]}" --target "$TARGET" \
        -p restartable-malloc --features abort-stats --lib --test ownership --test index --test many_cpu_caches \
        "${extra[@]}")
    ((${#tests[@]} == 4 + ${#extra[@]} / 2)) || { echo "allocator test binaries not built" >&2; exit 1; }
    vm_add_test "${tests[@]}"
}

# --- 4. initramfs -------------------------------------------------------------
# vm_initramfs: busybox, the CLI, VM_TESTS and the guest's /init; sets INITRD.
vm_initramfs() {
    local ramfs="$VM/initramfs" t name
    rm -rf "$ramfs"
    mkdir -p "$ramfs"/{bin,sbin,dev,proc,sys,tmp,tests,root}
    cp "$BUSYBOX" "$ramfs/bin/busybox"
    ln -s busybox "$ramfs/bin/sh"
    cp "$VM_CLI" "$ramfs/bin/restartable"
    for t in "${VM_TESTS[@]}"; do
        name=$(basename "$t")
        name=${name%-*} # strip cargo's -<hash>
        cp "$t" "$ramfs/tests/$name"
        echo "test binary: $name  <- $t"
    done
    # /dev/console must exist before /init runs for it to have stdio.
    mknod -m 600 "$ramfs/dev/console" c 5 1 2>/dev/null || true
    mknod -m 666 "$ramfs/dev/null" c 1 3 2>/dev/null || true

    cat >"$ramfs/init" <<EOF
#!/bin/busybox sh
CMD_TIMEOUT=$CMD_TIMEOUT
STRESS_TIMEOUT=$STRESS_TIMEOUT
INJECT_OPS=$INJECT_OPS
TAG=$VM_TAG
OWNERS="$VM_TEST_OWNERS"
BOTH_OWNERS="$VM_BOTH_OWNER_TESTS"
export RUST_BACKTRACE=$BACKTRACE ${VM_GUEST_ENV:-}
EOF
    cat >>"$ramfs/init" <<'EOF'
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root TERM=dumb
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
cd /tmp
EOF
    # What a VM script adds to the guest, files of busybox sh:
    # VM_GUEST_SETUP runs before the suite (plain sh: the suite's helpers
    # are not defined yet), VM_GUEST_EXTRA after it, before the verdict
    # (with run, field, stress and $failed); its checks are the script's
    # vm_verdict_extra, if it defines one.
    if [[ -n ${VM_GUEST_SETUP:-} ]]; then cat "$VM_GUEST_SETUP" >>"$ramfs/init"; fi
    cat >>"$ramfs/init" <<'EOF'

# Both registrations: glibc's own (the static binaries find it through the
# weak __rseq_* symbols; owner "libc") and, with the tunable off, the
# library's ("library"). The host checks the $TAG-* lines.
NORSEQ="GLIBC_TUNABLES=glibc.pthread.rseq=0"
REQ="RESTARTABLE_REQUIRE_RSEQ=1"
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
    echo "$TAG-INFO glibc-rseq=$rseq owner=$owner rseq_available=$avail"
    [ "$owner" = "$want" ] && [ "$avail" = true ] ||
        failed="$failed info-glibc-rseq-$rseq(owner=$owner,want=$want,rseq_available=$avail)"
}
stress() { # stress NAME libc|library ARGS...: one stress run with that owner
    sname=$1 want=$2; shift 2
    if [ "$want" = libc ]; then set -- env $REQ restartable stress "$@" --timeout "$STRESS_TIMEOUT" --json
    else set -- env $NORSEQ $REQ restartable stress "$@" --timeout "$STRESS_TIMEOUT" --json; fi
    run "stress-$sname-$want" "$@" || return 1
    path=$(field path) exact=$(field exact) got=$(owners)
    echo "$TAG-STRESS $sname want=$want owners=$got path=$path exact=$exact"
    [ "$path" = rseq ] && [ "$exact" = true ] && [ "$got" = "$want" ] ||
        failed="$failed stress-$sname-$want(owners=$got,path=$path,exact=$exact)"
}

echo "$TAG: guest up: $(uname -srm), $(nproc) CPUs"
grep -m1 -i -E '^(Features|CPU implementer|isa)' /proc/cpuinfo
start=$(date +%s)
restartable info
info_check on libc restartable
sections=$(field critical_sections)
info_check off library env $NORSEQ restartable
echo "$TAG-SECTIONS critical_sections=$sections"
[ "$sections" = true ] || failed="$failed critical-sections(none)"
# Every test binary of the library: VM_BOTH_OWNER_TESTS with each owner.
for t in /tests/*; do
    # The registration-sensitive binaries with every owner; the others
    # (their sections run the same once a thread is registered) with the
    # first only.
    owners=${OWNERS%% *}
    case " $BOTH_OWNERS " in *" $(basename "$t") "*) owners=$OWNERS ;; esac
    for o in $owners; do
        case $o in
            libc) run "test-$(basename "$t")-libc" env $REQ "$t" --test-threads=1 --nocapture ;;
            *) run "test-$(basename "$t")-library" env $NORSEQ $REQ "$t" --test-threads=1 --nocapture ;;
        esac
    done
done
echo "$TAG-TIME tests $(($(date +%s) - start))s"
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
echo "$TAG-MODES $(echo $modes | wc -w): $modes"
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
        # --index applies to percpu and the hand-driven raw-section modes,
        # --order to the hand-driven raw-section modes only; the others
        # refuse them, among them the modes on sections the section
        # language generates (ring, bounded-stack, histogram: indexed by
        # CPU, with a fixed commit order), which run in the other loops.
        case $m in
            counter|churn|fetch-update|stack|pool|drain) continue ;;
            ring|bounded-stack|histogram) continue ;;
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
    stress "$m-inject" "$(pick $i 0)" "$m" --threads 6 --ops "$INJECT_OPS" --inject 0=20,1=20,2=80,3=80 --signal-every 7
done
echo "$TAG-TIME stress $(($(date +%s) - start))s"
EOF
    if [[ -n ${VM_GUEST_EXTRA:-} ]]; then cat "$VM_GUEST_EXTRA" >>"$ramfs/init"; fi
    cat >>"$ramfs/init" <<'EOF'
echo
if [ -z "$failed" ]; then
    echo "$TAG: PASS ($count commands)"
else
    echo "$TAG: FAIL$failed"
fi
sync
poweroff -f
EOF
    chmod 755 "$ramfs/init"
    INITRD="$VM/initramfs.cpio.gz"
    (cd "$ramfs" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 >"$INITRD")
    echo "initramfs: $(du -h "$INITRD" | cut -f1)"
}

# --- 5. boot ------------------------------------------------------------------
# vm_boot QEMU ARGS...: boots IMAGE with INITRD (and ARGS: machine, CPU,
# console), the console to the terminal and to LOG; sets QEMU_RC.
vm_boot() {
    local qemu=$1 boot_start=$SECONDS
    shift
    LOG="$VM/console.log"
    set +e
    timeout --foreground -k 10 "$TIMEOUT" "$qemu" \
        -smp "$VM_SMP" -m "$VM_MEM" \
        -accel "$VM_ACCEL" \
        -nographic -no-reboot -nic none \
        -kernel "$IMAGE" -initrd "$INITRD" \
        "$@" </dev/null 2>&1 | tee "$LOG"
    QEMU_RC=${PIPESTATUS[0]}
    set -e
    echo
    echo "qemu exited with $QEMU_RC after $((SECONDS - boot_start))s; console log: $LOG"
}

# --- 6. verdict ---------------------------------------------------------------
# vm_verdict: checks the console log; exits 0 on a pass.
vm_verdict() {
    local clean verdict=0 owner Owner n m modes inexact=()
    clean=$(tr -d '\r' <"$LOG")
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
    check "$VM_TAG: PASS" "^$VM_TAG: PASS"
    check "info --json with glibc's rseq on: owner libc, rseq available" \
        "^$VM_TAG-INFO glibc-rseq=on owner=libc rseq_available=true\$"
    check "info --json with glibc's rseq off: owner library, rseq available" \
        "^$VM_TAG-INFO glibc-rseq=off owner=library rseq_available=true\$"
    check "critical sections in the guest's build" "^$VM_TAG-SECTIONS critical_sections=true\$"
    for owner in $VM_TEST_OWNERS; do
        Owner=${owner^}
        check_block "runtime test adopted owner $owner" "test-runtime-$owner" "\\[in-process\\] Registration \\{ owner: $Owner,"
        check_block "sections test ran on the rseq path with owner $owner" "test-sections-$owner" '\[sections\] path=rseq'
        check_block "abort sweep stopped the section at each instruction, owner $owner" "test-abort_sweep-$owner" '\[abort-sweep\] [a-z0-9_]+: stopped at each of [0-9]+ instructions'
    done
    for owner in libc library; do
        n=$(grep -cE "^$VM_TAG-STRESS .* want=$owner owners=$owner path=rseq exact=true\$" <<<"$clean" || true)
        if ((n >= 10)); then
            echo "ok:      $n stress runs exact on the rseq path with owner $owner"
        else
            echo "MISSING: stress runs exact on the rseq path with owner $owner: $n, expected 10 or more" >&2
            verdict=1
        fi
    done
    # Every mode the CLI lists, in its plain run at least.
    modes=$(sed -n "s/^$VM_TAG-MODES [0-9]*: //p" <<<"$clean" | head -n1)
    for m in $modes; do
        grep -qE "^$VM_TAG-STRESS $m want=([a-z]+) owners=\\1 path=rseq exact=true\$" <<<"$clean" || inexact+=("$m")
    done
    if [[ -z $modes ]]; then
        echo "MISSING: the stress modes (no $VM_TAG-MODES line)" >&2
        verdict=1
    elif ((${#inexact[@]})); then
        echo "MISSING: an exact run on the rseq path of stress mode(s) ${inexact[*]}" >&2
        verdict=1
    else
        echo "ok:      every stress mode ($(wc -w <<<"$modes")) exact on the rseq path: $modes"
    fi
    # What single_step did (it skips where the kernel cannot single-step).
    grep -oE '\[single-step\] .*' <<<"$clean" | sort -u | sed 's/^/note:    /' || true
    for n in "${VM_NOTES[@]}"; do echo "note:    $n"; done
    if declare -F vm_verdict_extra >/dev/null; then vm_verdict_extra; fi
    grep -E "^$VM_TAG: FAIL" <<<"$clean" >&2 || true
    grep -E "^$VM_TAG-TIME " <<<"$clean" || true
    ((QEMU_RC == 124 || QEMU_RC == 137)) && { echo "the VM timed out" >&2; verdict=1; }
    echo
    echo "total time: ${SECONDS}s ($(date -u -d "@$SECONDS" +%Mm%Ss))"
    if ((verdict == 0)); then
        echo "$VM_SCRIPT: PASS"
    else
        echo "$VM_SCRIPT: FAIL" >&2
    fi
    exit "$verdict"
}
