#!/bin/bash
# nbdsnap: install dependencies (Debian 12), build, and optionally run
# the demo or the test suite.
#
#   ./setup.sh          install + build
#   ./setup.sh demo     install + build + run demo/demo.sh
#   ./setup.sh check    install + build + run the whole test suite
#   ./setup.sh bench    install + build + run bench/bench-snapshot.sh
#
# Idempotent: packages already present are not reinstalled, autoreconf
# and configure only run when their outputs are missing or stale.
# Works from any directory, without a terminal (CI=true, no stdin).

set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
top=$(pwd)

action=${1:-build}
case "$action" in
    build|demo|check|bench) ;;
    -h|--help|help)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 0 ;;
    *)
        echo "usage: $0 [build|demo|check|bench]" >&2
        exit 2 ;;
esac

say() { printf '\n==> %s\n' "$*"; }

# ---------------------------------------------------------------- packages
packages=(
    nbdkit nbdkit-plugin-dev libnbd-dev libnbd-bin python3-libnbd
    libgnutls28-dev libzstd-dev libjson-c-dev qemu-utils fio
    autoconf automake libtool pkg-config make gcc perl
    valgrind e2fsprogs
    clang libclang-rt-14-dev git
    gnutls-bin iproute2 python3-yaml systemd debhelper dpkg-dev
    # ^ TLS keys (certtool, psktool), network namespaces, the sidecar
    #   checks (yaml, systemd-analyze), the Debian package
    gnuplot-nox
    # ^ bench/plot.sh and bench/plot-scale.sh (docs/img/*.png)
)

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    say "installing packages: ${missing[*]}"
    sudo=
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            sudo="sudo -n"
        else
            echo "$0: missing packages (${missing[*]}) and not root; run: sudo $0 $action" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update </dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${packages[@]}" </dev/null
else
    say "all packages present"
fi

# ------------------------------------------------------------------- build
# libtoolize/aclocal want the macro directory to exist (git does not keep
# empty directories).
mkdir -p m4

newer() {   # newer FILE REF...: true if FILE is missing or older than a REF
    local f=$1; shift
    [ -e "$f" ] || return 0
    local r
    for r in "$@"; do
        [ -e "$r" ] && [ "$r" -nt "$f" ] && return 0
    done
    return 1
}

if newer configure configure.ac || newer Makefile.in Makefile.am; then
    say "autoreconf -fi"
    autoreconf -fi
fi

if newer config.status configure || [ ! -e Makefile ]; then
    say "./configure"
    ./configure
fi

say "make -j2"
make -j2

# --------------------------------------------------------------- actions
case "$action" in
    build)
        say "built; try: $0 demo   or   $0 check"
        ;;
    demo)
        say "demo"
        exec bash "$top/demo/demo.sh"
        ;;
    bench)
        say "benchmark"
        exec bash "$top/bench/bench-snapshot.sh"
        ;;
    check)
        say "make check"
        summary() {   # the plain closing line CI systems read
            [ -f test-suite.log ] || return 0
            local p f s e
            p=$(sed -n 's/^# PASS: *//p' test-suite.log)
            f=$(sed -n 's/^# FAIL: *//p' test-suite.log)
            s=$(sed -n 's/^# SKIP: *//p' test-suite.log)
            e=$(sed -n 's/^# ERROR: *//p' test-suite.log)
            echo "${p:-0} passed, $(( ${f:-0} + ${e:-0} )) failed, ${s:-0} skipped"
        }
        if make check -j"$(nproc)" </dev/null; then
            say "all tests passed"
            summary
            exit 0
        fi
        echo
        echo "==> make check FAILED; logs of the failed tests follow"
        shopt -s nullglob
        for trs in tests/*.trs; do
            if grep -Eq '^:test-result: (FAIL|ERROR)' "$trs"; then
                log=${trs%.trs}.log
                echo
                echo "=================== $log ==================="
                cat "$log" 2>/dev/null || echo "(no $log)"
            fi
        done
        [ -f test-suite.log ] && { echo; echo "=== test-suite.log summary ==="; head -n 20 test-suite.log; }
        summary
        exit 1
        ;;
esac
