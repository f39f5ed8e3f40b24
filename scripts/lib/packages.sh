# shellcheck shell=bash
# Installs missing Debian packages without ever removing, downgrading,
# upgrading or replacing a package the machine already has. Sourced by
# scripts/test.sh and scripts/aarch64-vm.sh:
#
#     source "$ROOT/scripts/lib/packages.sh"
#     pkg_install valgrind cpio ...   # only those not installed are considered
#
# How:
#   1. Packages already installed (dpkg status "install ok installed") are
#      dropped; when none is left, nothing runs (no apt-get update either).
#   2. apt runs with a private state under target/apt-host/ (lists, caches,
#      and a private sources.list next to the host's sources.list.d), so the
#      host's apt configuration and lists are left as they are. When
#      installed packages came from <codename>-backports (a version with
#      "~bpo"), the private sources.list adds that suite, which the host's
#      sources may lack.
#   3. A requested package whose archive offers exactly the version of an
#      installed backports package (the same source package: qemu-system-arm
#      next to qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1) is asked for at that
#      version, together with the not yet installed packages of the same
#      version it depends on (qemu-system-common, qemu-system-data): the
#      plain candidates would replace the installed package by the stable
#      one, or remove it. A not yet installed dependency of such a package
#      whose versioned constraint the plain candidate does not meet
#      (qemu-system-riscv 1:10.0.2...~bpo12+1 needs opensbi >> 1.5.1-1~,
#      bookworm has 1.1-2) is asked for at the newest version that meets
#      it (opensbi 1.5.1-1~bpo12+2), and so on for its own dependencies.
#   4. Every plan is simulated first (apt-get -s). A plan that would remove,
#      purge or change the version of any installed package is refused, with
#      the packages at stake named; the next plan (the plain candidates) is
#      tried; if none is clean, nothing is installed and pkg_install fails.
#   5. The clean plan is installed with --no-remove --no-install-recommends,
#      and the versions of every package installed before are compared
#      afterwards.
#
# Environment: PKG_APT_DIR (default <repo>/target/apt-host), PKG_DRY_RUN=1
# (simulate and report, install nothing).

_PKG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

_pkg_log() { echo "packages: $*" >&2; }

_pkg_as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        _pkg_log "not root and no sudo: cannot run $*"
        return 1
    fi
}

# Prints the packages among "$@" that dpkg does not list as installed.
pkg_missing() {
    local p status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || echo "$p"
    done
}

# "name:arch version" for every installed package, sorted.
_pkg_snapshot() {
    dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package} ${Version}\n' |
        awk '$1 ~ /^.i/ {print $2, $3}' | LC_ALL=C sort
}

# Sets _pkg_opts: the private apt configuration.
_pkg_setup() {
    local dir=${PKG_APT_DIR:-$_PKG_ROOT/target/apt-host}
    local codename="" bpo_suite=""
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    : >"$dir/sources.list"
    # (No `grep -q` at the end of a pipe: under pipefail its early exit
    # fails the writer with SIGPIPE.)
    if [[ -n $codename && $(dpkg-query -W -f='${Version}\n' | grep -c '~bpo') != 0 ]]; then
        bpo_suite="$codename-backports"
        # Only when the host's own sources lack it (two entries for one
        # suite with different options make apt refuse).
        if ! grep -rqsE "(^|[[:space:]])$bpo_suite([[:space:]]|$)" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $bpo_suite main" \
                >"$dir/sources.list"
        fi
    fi
    _pkg_opts=(
        -o Dir::Etc::SourceList="$dir/sources.list"
        -o Dir::State::Lists="$dir/lists"
        -o Dir::Cache="$dir/cache"
    )
    _pkg_bpo_suite=$bpo_suite
}

# "name op version" (op empty when unversioned) for every dependency of
# package version "$1" that has no alternatives, one per line.
_pkg_depends() {
    apt-cache "${_pkg_opts[@]}" show --no-all-versions "$1" 2>/dev/null |
        sed -n 's/^\(Pre-\)\{0,1\}Depends: //p' | tr ',' '\n' | grep -v '|' |
        sed -E 's/:any//; s/^[[:space:]]*([^[:space:](]+)[[:space:]]*(\(([<>=]+)[[:space:]]*([^)[:space:]]+)\))?.*/\1 \3 \4/' |
        sort -u
}

# Sets _pkg_pinned to "name=version" requests for the packages in "$@" (and
# their not yet installed same-version dependencies, and those whose
# versioned constraint the plain candidate does not meet) that the archive
# offers at the version of an installed backports package; empty when none
# is.
_pkg_backports_plan() {
    _pkg_pinned=()
    local -A bpo_versions=() wanted=() forced=()
    local v p ver dep op dver cand queue=() order=() changed=0
    while read -r v; do bpo_versions[$v]=1; done < <(dpkg-query -W -f='${Version}\n' | grep '~bpo' | sort -u)
    ((${#bpo_versions[@]})) || return 0
    queue=("$@")
    local -A seen=()
    while ((${#queue[@]})); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        [[ -n ${seen[$p]:-} ]] && continue
        seen[$p]=1
        ver=${forced[$p]:-}
        if [[ -z $ver ]]; then
            while read -r v; do
                if [[ -n ${bpo_versions[$v]:-} ]]; then ver=$v; break; fi
            done < <(apt-cache "${_pkg_opts[@]}" madison "$p" 2>/dev/null | awk -F' [|] ' '{print $2}')
        fi
        order+=("$p")
        if [[ -z $ver ]]; then
            wanted[$p]=""
            continue
        fi
        wanted[$p]=$ver
        changed=1
        # Its dependencies of the same version that are not installed yet.
        while read -r dep; do
            [[ -n $dep && -z ${seen[$dep]:-} ]] || continue
            [[ -n $(pkg_missing "$dep") ]] || continue
            if apt-cache "${_pkg_opts[@]}" madison "$dep" 2>/dev/null | awk -F' [|] ' -v v="$ver" '$2 == v {n++} END {exit !n}'; then
                queue+=("$dep")
            fi
        done < <(apt-cache "${_pkg_opts[@]}" show --no-all-versions "$p=$ver" 2>/dev/null |
            sed -n 's/^\(Pre-\)\{0,1\}Depends: //p' | tr ',|' '\n\n' |
            sed 's/([^)]*)//g; s/:any//; s/[[:space:]]//g' | sort -u)
        # Its missing dependencies whose constraint the plain candidate
        # does not meet: the newest version that does.
        while read -r dep op dver; do
            [[ -n $dep && -n $op && -z ${seen[$dep]:-} && -z ${forced[$dep]:-} ]] || continue
            [[ -n $(pkg_missing "$dep") ]] || continue
            cand=$(apt-cache "${_pkg_opts[@]}" policy "$dep" 2>/dev/null | awk '$1 == "Candidate:" && !n++ {print $2}')
            if [[ -n $cand && $cand != "(none)" ]] && dpkg --compare-versions "$cand" "$op" "$dver"; then
                continue
            fi
            while read -r v; do
                if dpkg --compare-versions "$v" "$op" "$dver"; then
                    forced[$dep]=$v
                    queue+=("$dep")
                    break
                fi
            done < <(apt-cache "${_pkg_opts[@]}" madison "$dep" 2>/dev/null | awk -F' [|] ' '{print $2}' | sort -u | sort -rV)
        done < <(_pkg_depends "$p=$ver")
    done
    ((changed)) || return 0
    for p in "${order[@]}"; do
        if [[ -n ${wanted[$p]} ]]; then
            _pkg_pinned+=("$p=${wanted[$p]}")
        else
            _pkg_pinned+=("$p")
        fi
    done
}

# Simulates installing "$@"; prints the plan's problems (nothing when the
# plan only adds packages) and returns 1 when there are any.
_pkg_check_plan() {
    local out rc=0 bad
    out=$(apt-get "${_pkg_opts[@]}" -s install -y --no-install-recommends --no-remove "$@" 2>&1) || rc=$?
    if ((rc != 0)); then
        echo "    apt-get -s --no-remove failed (exit $rc):"
        grep -E '^( |E:|W:|The following)' <<<"$out" | sed 's/^/    /' | head -n 30
        # Without --no-remove apt may find a plan: name what it would take.
        out=$(apt-get "${_pkg_opts[@]}" -s install -y --no-install-recommends "$@" 2>&1) || return 1
        echo "    without --no-remove the plan would be:"
    fi
    # "Remv pkg [ver]", "Purg pkg [ver]", and "Inst pkg [old] (new ...)":
    # the last one replaces an installed version (upgrade or downgrade).
    bad=$(awk '
        $1 == "Remv" || $1 == "Purg" { print "    would remove:  " $2 " " $3; next }
        $1 == "Inst" && $3 ~ /^\[/ { v = $4; sub(/^\(/, "", v); print "    would replace: " $2 " " $3 " by " v }
    ' <<<"$out")
    if [[ -n $bad ]]; then
        echo "$bad"
        return 1
    fi
    ((rc == 0)) || return 1
    awk '$1 == "Inst" { v = $3; sub(/^\(/, "", v); printf "    %s %s\n", $2, v }' <<<"$out"
    return 0
}

# pkg_install PACKAGE...: installs those of the packages that are missing,
# refusing any plan that would remove or change an installed package.
pkg_install() {
    local todo
    mapfile -t todo < <(pkg_missing "$@")
    if ((${#todo[@]} == 0)); then
        _pkg_log "all present: $*"
        return 0
    fi
    _pkg_log "missing: ${todo[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        _pkg_log "no apt-get on this machine: install ${todo[*]} by hand"
        return 1
    fi
    if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null 2>&1; then
        _pkg_log "not root and no sudo: install ${todo[*]} by hand (apt-get install --no-remove ${todo[*]})"
        return 1
    fi
    _pkg_setup
    _pkg_log "apt-get update (private lists under ${_pkg_opts[3]#Dir::State::Lists=}${_pkg_bpo_suite:+, with $_pkg_bpo_suite})"
    _pkg_as_root apt-get "${_pkg_opts[@]}" -q update >/dev/null || {
        _pkg_log "apt-get update failed"
        return 1
    }
    local plans=() names=() report chosen=-1 i
    _pkg_backports_plan "${todo[@]}"
    if ((${#_pkg_pinned[@]})); then
        plans+=("${_pkg_pinned[*]}")
        names+=("the versions of the installed backports packages")
    fi
    plans+=("${todo[*]}")
    names+=("the default candidates")
    for i in "${!plans[@]}"; do
        local -a req
        read -r -a req <<<"${plans[$i]}"
        _pkg_log "simulating ${names[$i]}: apt-get -s install --no-install-recommends --no-remove ${req[*]}"
        if report=$(_pkg_check_plan "${req[@]}"); then
            chosen=$i
            _pkg_log "clean plan, it installs:"
            echo "$report" >&2
            break
        fi
        _pkg_log "REFUSED (this plan would change packages the machine has):"
        echo "$report" >&2
    done
    if ((chosen < 0)); then
        _pkg_log "no plan installs ${todo[*]} without removing or changing an installed package;"
        _pkg_log "install them by hand (apt-get install --no-remove ...), choosing versions that fit what is installed"
        return 1
    fi
    if [[ ${PKG_DRY_RUN:-0} == 1 ]]; then
        _pkg_log "PKG_DRY_RUN=1: nothing installed"
        return 0
    fi
    local -a req
    read -r -a req <<<"${plans[$chosen]}"
    local before after
    before=$(_pkg_snapshot)
    _pkg_as_root env DEBIAN_FRONTEND=noninteractive apt-get "${_pkg_opts[@]}" -q install -y \
        --no-install-recommends --no-remove "${req[@]}" || {
        _pkg_log "apt-get install failed"
        return 1
    }
    _pkg_as_root apt-get "${_pkg_opts[@]}" clean || true
    after=$(_pkg_snapshot)
    local lost
    lost=$(LC_ALL=C comm -23 <(echo "$before") <(echo "$after"))
    if [[ -n $lost ]]; then
        _pkg_log "BUG: packages changed or removed despite the checks:"
        sed 's/^/    /' <<<"$lost" >&2
        return 1
    fi
    local still
    mapfile -t still < <(pkg_missing "${todo[@]}")
    if ((${#still[@]})); then
        _pkg_log "still missing after install: ${still[*]}"
        return 1
    fi
    _pkg_log "installed: ${todo[*]} (no installed package changed)"
}
