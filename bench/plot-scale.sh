#!/bin/bash
# bench/plot-scale.sh RESULT.txt [MORE.txt...] : two PNGs from the saved output of
# bench/bench-stack-scale.sh (as in bench/results/):
#   NAME-vsize.png    costs against the virtual size (the rows written
#                     with PLOT_WMIB MiB, default 1024), log x axis
#   NAME-written.png  costs against the MiB written (the rows of virtual
#                     size PLOT_SIZE, default 16T), log x axis
# each with six panels, our full stack next to qcow2: creates, revert and
# lists, start-up and RSS, metadata on disk, full backup time and size;
# rows "stack/null" (BENCH_PLUGIN=null), if the file has them, are drawn
# in the revert and backup panels.
#
#   bench/plot-scale.sh bench/results/2026-12-03-scale-stack.txt \
#                       bench/results/2026-12-03-scale-stack-null.txt
# (the PNGs are named after the first file; rows are taken from all).
#   PLOT_DIR=/tmp bench/plot-scale.sh my-run.txt
#
# Needs gnuplot (Debian: gnuplot-nox). Every y axis is logarithmic: the
# values span 1 to 10^4; a value <= 0 (qcow2's metadata estimate can
# be) is left out.
set -euo pipefail
top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
out=${PLOT_DIR:-$top/docs/img}
WMIB=${PLOT_WMIB:-1024}
SIZE=${PLOT_SIZE:-16T}
command -v gnuplot >/dev/null ||
    { echo "plot-scale.sh: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: $0 RESULT.txt [MORE.txt...]" >&2; exit 2; }
f=$1
name=$(basename "$f" .txt)
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A row: what size wMiB start fresh rss snap smax ckpt cmax slist clist
# revert smeta cbt meta bkp_s bkp_MiB load.  Written out as: x, then
# start(ms) fresh(ms) rss snap smax ckpt cmax slist clist revert smeta cbt
# meta bkp_s bkp_MiB  (columns 2..16), "-" kept (gnuplot: missing).
# The first row of a (what, size, wMiB) in the files is used.
split() {   # split AXIS FILE...: AXIS=vsize or written
    local axis=$1; shift
    awk -v axis="$axis" -v wmib="$WMIB" -v size="$SIZE" -v dir="$tmp" '
    function gib(s,  n, u) {
        n = s + 0; u = substr(s, length(s))
        return u == "T" ? n * 1024 : u == "G" ? n : u == "M" ? n / 1024 : n
    }
    function ms(v) { return v == "-" ? "-" : v * 1000 }
    ($1 == "stack" || $1 == "stack/null" || $1 == "qcow2") && NF >= 18 {
        if (axis == "vsize" && $3 != wmib) next
        if (axis == "written" && $2 != size) next
        k = $1 " " $2 " " $3
        if (k in seen) next
        seen[k] = 1
        x = axis == "vsize" ? gib($2) : $3
        w = $1; sub("/", "-", w)
        print x, ms($4), ms($5), $6, $7, $8, $9, $10, $11, $12, $13, \
              $14, $15, $16, $17, $18 > (dir "/" axis "-" w ".dat")
    }' "$@"
    for w in stack stack-null qcow2; do
        [ -s "$tmp/$axis-$w.dat" ] || : > "$tmp/$axis-$w.dat"
        sort -n -o "$tmp/$axis-$w.dat" "$tmp/$axis-$w.dat"
    done
}

plot() {    # plot AXIS XLABEL XTICS TITLE
    local s=$tmp/$1-stack.dat q=$tmp/$1-qcow2.dat n=$tmp/$1-stack-null.dat
    # The null-plugin rows (if any) only where they differ: revert, backup.
    local nrev= nbkp=
    if [ -s "$n" ]; then
        nrev=", \"$n\" u 1:11 t \"@snapshot:revert (null plugin)\" lw 2 pt 13"
        nbkp=", \"$n\" u 1:15 t \"nbdsnap backup (null plugin)\" lw 2 pt 13"
    fi
    [ -s "$s" ] || { echo "plot-scale.sh: $*: no stack rows for $1" >&2; return 0; }
    gnuplot <<GP
set terminal pngcairo noenhanced size 1200,900 font "sans,9"
set output "$out/$name-$1.png"
set datafile missing "-"
set multiplot layout 2,3 title "$4 (bench-stack-scale.sh, $name)"
set logscale xy
set xlabel "$2"
set xtics ($3)
set grid
set key below font ",8"
set style data linespoints
set title "create: median round trip (ms)"
plot "$s" u 1:5 t "@snapshot:create" lw 2 pt 7, \
     "$s" u 1:7 t "@cbt:create" lw 2 pt 5, \
     "$q" u 1:5 t "qemu-img snapshot -c" dt 2 pt 6, \
     "$q" u 1:7 t "qemu-img bitmap --add" dt 2 pt 4
set title "revert and lists (ms)"
plot "$s" u 1:11 t "@snapshot:revert" lw 2 pt 7, \
     "$s" u 1:9 t "@snapshot:list" lw 2 pt 5, \
     "$s" u 1:10 t "@cbt:list" lw 2 pt 9, \
     "$q" u 1:11 t "qemu-img snapshot -a" dt 2 pt 6, \
     "$q" u 1:9 t "qemu-img snapshot -l" dt 2 pt 4, \
     "$q" u 1:10 t "qemu-img info" dt 2 pt 8 $nrev
set title "start-up to first read (ms), RSS (MiB): ours only"
plot "$s" u 1:2 t "start-up, all state (ms)" lw 2 pt 7, \
     "$s" u 1:3 t "start-up, empty (ms)" lw 2 pt 5, \
     "$s" u 1:4 t "RSS after it (MiB)" lw 2 pt 9
set title "metadata on disk (MiB)"
plot "$s" u 1:14 t "snapshot-dir w/o data + cbt-dir" lw 2 pt 7, \
     "$s" u 1:13 t "cbt-dir" lw 2 pt 5, \
     "$q" u 1:14 t "qcow2 du minus data" dt 2 pt 6
set title "full backup (s)"
plot "$s" u 1:15 t "nbdsnap backup --full" lw 2 pt 7, \
     "$q" u 1:15 t "qemu-img convert -O qcow2" dt 2 pt 6 $nbkp
set title "full backup size on disk (MiB)"
plot "$s" u 1:16 t "nbdsnap repository" lw 2 pt 7, \
     "$q" u 1:16 t "converted qcow2" dt 2 pt 6
unset multiplot
GP
    echo "plot-scale.sh: $out/$name-$1.png"
}

split vsize "$@"
split written "$@"
plot vsize "virtual size (GiB)" '"1G" 1, "64G" 64, "1T" 1024, "16T" 16384' \
    "full stack vs qcow2 against virtual size, $WMIB MiB written"
plot written "MiB written" '64, 256, 1024, 4096' \
    "full stack vs qcow2 against data written, virtual size $SIZE"
