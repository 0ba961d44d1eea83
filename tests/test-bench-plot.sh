#!/usr/bin/env bash
# bench/plot.sh draws a PNG from each saved bench-snapshot.sh result in
# bench/results/ (gnuplot; other benchmarks' results there are left
# alone), and refuses a file that is not one.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires gnuplot --version
n=0
for f in "$top_srcdir"/bench/results/*.txt; do
    # Only bench-snapshot.sh's results (other benchmarks save theirs too).
    grep -q '^nbdsnap snapshot filter benchmark' "$f" || continue
    PLOT_DIR=$tmpdir bash "$top_srcdir/bench/plot.sh" "$f" ||
        fail "plot.sh failed on $f"
    png=$tmpdir/$(basename "$f" .txt).png
    [ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
        fail "$png is not a PNG"
    [ "$(stat -c %s "$png")" -gt 5000 ] || fail "$png is too small to hold a plot"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || fail "no result files in bench/results"
echo "not a result" > "$tmpdir/bad.txt"
if PLOT_DIR=$tmpdir bash "$top_srcdir/bench/plot.sh" "$tmpdir/bad.txt" 2> "$tmpdir/err"; then
    fail "plot.sh accepted a file with no result table"
fi
grep -q 'no throughput table' "$tmpdir/err" || fail "unclear error: $(cat "$tmpdir/err")"
echo "ok: $n plots"
