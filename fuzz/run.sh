#!/bin/bash
# Run every libFuzzer harness over its checked-in corpus (fuzz/corpus/NAME:
# seeds and every input that ever crashed a harness), then fuzz each for
# SECONDS more.  New inputs go to a scratch directory, not the tree.
#
#   fuzz/run.sh [SECONDS] [BUILDDIR]     (default 5 s each)
#
# Exit 1 on the first crash, printing the input that caused it: copy it
# into fuzz/corpus/NAME/ once fixed, so it stays a regression input.
# Prints executions and coverage per harness (for docs/reliability.md).
set -uo pipefail

src=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
secs=${1:-5}
build=$(cd "${2:-$src}" && pwd)
bin=$build/fuzz/bin
work=$(mktemp -d "${TMPDIR:-/tmp}/nbdsnap-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
status=0

for h in "$bin"/fuzz-*; do
    [ -x "$h" ] || continue
    name=${h##*/fuzz-}
    corpus=$src/fuzz/corpus/$name
    mkdir -p "$work/$name"
    log=$work/$name.log
    # One pass over the checked-in corpus, then fuzz into the scratch dir.
    if ! "$h" -runs=0 "$corpus" > "$log" 2>&1 ||
       ! "$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$work/$name-" "$work/$name" "$corpus" \
            >> "$log" 2>&1; then
        echo "fuzz-$name: CRASH"
        tail -n 40 "$log"
        ls "$work/$name"-* 2>/dev/null | sed 's/^/  input: /'
        for f in "$work/$name"-*; do
            [ -f "$f" ] && cp "$f" "${TMPDIR:-/tmp}/" &&
                echo "  kept as ${TMPDIR:-/tmp}/$(basename "$f")"
        done
        status=1
        continue
    fi
    stats=$(grep -E "^#[0-9]+.*(DONE|pulse|NEW|REDUCE)" "$log" | tail -n 1)
    echo "fuzz-$name: ok, $(echo "$stats" | sed -E 's/^#([0-9]+).*cov: ([0-9]+) ft: ([0-9]+).*/\1 executions, cov \2, ft \3/')"
done
exit $status
