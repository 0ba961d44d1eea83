#!/bin/bash
# bench/plot.sh RESULT.txt... : a PNG per result file of
# bench/bench-snapshot.sh (its output saved, as in bench/results/):
# throughput of each workload with no filter, nbdkit's cow filter and
# the snapshot filter, and reads at chain depth 1 and 100.
#
#   bench/plot.sh bench/results/*.txt        (writes docs/img/NAME.png)
#   PLOT_DIR=/tmp bench/plot.sh my-run.txt
#
# Needs gnuplot (Debian: gnuplot-nox).  Values are the medians of the
# file's table; y is logarithmic (4K and 1M workloads differ 10x).
set -euo pipefail
top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
out=${PLOT_DIR:-$top/docs/img}
command -v gnuplot >/dev/null ||
    { echo "plot.sh: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: $0 RESULT.txt..." >&2; exit 2; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for f in "$@"; do
    name=$(basename "$f" .txt)
    # "4K random write   196.2   55.7   79.7   0.41   1.43" -> data rows.
    awk '/^test +baseline MB\/s/ { t = 1; next }
         t && NF == 0 { exit }
         t { printf "\"%s %s %s\" %s %s %s\n", $1, $2, $3, $4, $5, $6 }' \
        "$f" > "$tmp/thr.dat"
    awk '/^chain depth/ { t = 1; next }
         t && NF == 0 { exit }
         t { printf "\"%s %s %s\" %s %s\n", $1, $2, $3, $4, $5 }' \
        "$f" > "$tmp/depth.dat"
    [ -s "$tmp/thr.dat" ] ||
        { echo "plot.sh: $f: no throughput table (not bench-snapshot.sh output?)" >&2; exit 1; }
    when=$(awk '/^nbdsnap snapshot filter benchmark/ { getline; print $1; exit }' "$f" |
           tr -d ,)
    gnuplot <<GP
set terminal pngcairo size 900,420 font "sans,10"
set output "$out/$name.png"
set multiplot layout 1,2 title "snapshot filter benchmark ${when:-} ($name)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set yrange [10:*]
set ylabel "MB/s (median, log scale)"
set grid ytics
set key top left
set xtics rotate by -20 font ",9"
set title "throughput per configuration"
plot "$tmp/thr.dat" using 2:xtic(1) title "no filter", \
     "" using 3 title "cow filter", \
     "" using 4 title "snapshot filter"
set title "reads at chain depth 1 and 100"
plot "$tmp/depth.dat" using 2:xtic(1) title "depth 1", \
     "" using 3 title "depth 100"
unset multiplot
GP
    echo "plot.sh: $out/$name.png"
done
