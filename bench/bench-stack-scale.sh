#!/bin/bash
# nbdsnap full stack at scale (issue 14, targets 3 and 4): costs against
# the virtual size of a thin disk and against the data written to it.
# A benchmark, not a test: it prints a table and never fails on a miss.
#
#   bash bench/bench-stack-scale.sh [SIZE:MIB...]
#        default: 1G:1024 64G:1024 1T:1024 16T:1024 16T:64 16T:256 16T:4096
#
# Each SIZE:MIB is one scenario on a fresh state:
#   nbdkit --filter=freeze --filter=cbt --filter=snapshot memory SIZE
#          freeze-dir= cbt-dir= snapshot-dir=   (all in BENCH_TMPDIR)
# then BENCH_SNAPS rounds of: write MIB/BENCH_SNAPS MiB in 1 MiB pieces
# (the MIB pieces spread evenly over the whole disk), flush,
# @snapshot:create/sN, and every BENCH_SNAPS/BENCH_CKPTS rounds
# @cbt:create/cN (BENCH_CKPTS checkpoints in all, interleaved). Then a
# clean stop and a restart with all that state, the lists, a full backup
# with tools/nbdsnap into a new repository, and a revert to the middle
# snapshot. Columns (times in ms unless said):
#   start     s from starting nbdkit (with all the state) to the first
#             answered read; fresh: the same with empty directories
#   rss       nbdkit's VmRSS (MiB) right after that first read
#   snap/ckpt median and max round trip of @snapshot:create, @cbt:create
#   slist     @snapshot:list; clist: @cbt:list (best of 3 each)
#   revert    @snapshot:revert/s<SNAPS/2> (the cbt filter above reads the
#             snapshot's diff first and marks it)
#   smeta     MiB of snapshot-dir without the layer data files (*.data)
#   cbt       MiB of cbt-dir; meta = smeta + cbt
#   bkp_s     s of `nbdsnap backup URI REPO --full --no-progress`
#   bkp_MiB   bytes of the repository on disk (MiB)
#   load      1-minute load average when the row was printed
# qcow2 rows (BENCH_QCOW2=1): qemu-img 7.2 on a qcow2 of the same size,
# the same writes with qemu-io, `qemu-img snapshot -c` after every round
# and `qemu-img bitmap --add` (the previous one --disable'd, as libvirt
# does) at the same rounds; slist: `qemu-img snapshot -l`; clist:
# `qemu-img info` (it lists the bitmaps); revert: `qemu-img snapshot -a`
# (after --remove of every bitmap, untimed: qemu refuses to apply a
# snapshot to an image with persistent bitmaps, even disabled ones);
# meta: du of the image minus the MiB written; full backup analogue:
# `qemu-img convert -O qcow2` of the image (its time and output du).
# Every qemu-img time includes starting a process (a few ms).
#
# A default run took 23 min on the shared 2-vCPU machine (2026-12-03,
# when a 16T revert took ~1 min; it takes 20-80 ms since the fixes in
# docs/benchmarks.md): the 16T qcow2 rows (a qemu-img snapshot -c takes
# 0.4-2 s there) are most of it now.  BENCH_QCOW2=0 or a few SIZE:MIB for
# a shorter one (the four 16T rows alone: about 2 min).
#
# Environment: BENCH_SNAPS=100 BENCH_CKPTS=30 BENCH_TMPDIR=/var/tmp
# BENCH_QCOW2=1, BENCH_PLUGIN=memory (null: nbdkit's null plugin, whose
# extents are one call for the whole disk; the snapshot filter keeps every
# write in its layers, so the disk is the same; rows "stack/null"), SNAPSHOT_FILTER / CBT_FILTER / FREEZE_FILTER / NBDSNAP
# (default: built in this tree).  Sizes need free space in BENCH_TMPDIR
# of about 4x the largest MIB (layer files, repository, qcow2, its copy).
set -uo pipefail

top=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
SF=${SNAPSHOT_FILTER:-$top/filters/snapshot/.libs/nbdkit-snapshot-filter.so}
CF=${CBT_FILTER:-$top/filters/cbt/.libs/nbdkit-cbt-filter.so}
FF=${FREEZE_FILTER:-$top/filters/freeze/.libs/nbdkit-freeze-filter.so}
NBDSNAP=${NBDSNAP:-$top/tools/nbdsnap}
SNAPS=${BENCH_SNAPS:-100}
CKPTS=${BENCH_CKPTS:-30}
BASEDIR=${BENCH_TMPDIR:-/var/tmp}
PLUGIN=${BENCH_PLUGIN:-memory}
QCOW2=${BENCH_QCOW2:-1}
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH LC_ALL=C
for f in "$SF" "$CF" "$FF" "$NBDSNAP"; do
    [ -f "$f" ] || { echo "bench: $f not built" >&2; exit 1; }
done
[ $# -gt 0 ] || set -- 1G:1024 64G:1024 1T:1024 16T:1024 16T:64 16T:256 16T:4096
work=$(mktemp -d "$BASEDIR/bench-stack-scale.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "# bench-stack-scale: freeze+cbt+snapshot over $PLUGIN; snaps=$SNAPS" \
     "ckpts=$CKPTS; 1 MiB pieces spread evenly over the disk"
echo "# $(date -u '+%F %T') UTC, $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)," \
     "$(nbdkit --version | head -1), $(qemu-img --version | head -1)"
printf '%-10s %-5s %5s %6s %6s %6s %6s %6s %6s %6s %6s %6s %7s %7s %7s %7s %7s %8s %5s\n' \
    what size wMiB start fresh rss snap smax ckpt cmax slist clist revert \
    smeta cbt meta bkp_s bkp_MiB load

for sc in "$@"; do
    size=${sc%%:*}; wmib=${sc#*:}
    rm -rf "$work"/{snap,cbt,frz,repo,sock,*.qcow2}
    mkdir -p "$work/snap" "$work/cbt" "$work/frz"
    PYTHONPATH="$top/bench" /usr/bin/python3 - "$SF" "$CF" "$FF" "$NBDSNAP" "$size" "$wmib" "$work" \
        "$SNAPS" "$CKPTS" "$PLUGIN" <<'PY' || echo "# $sc: stack run failed (log: see stderr)"
import os, re, sys, time, subprocess, statistics, json, nbd
import benchlib
sf, cf, ff, nbdsnap, size, wmib, work, snaps, ckpts, plugin = sys.argv[1:11]
wmib, snaps, ckpts = int(wmib), int(snaps), int(ckpts)
sock = os.path.join(work, "sock"); log = os.path.join(work, "log")
sd, cd, fd = (os.path.join(work, x) for x in ("snap", "cbt", "frz"))
def start():
    if os.path.exists(sock): os.unlink(sock)
    return benchlib.start(["--filter=" + ff, "--filter=" + cf,
                           "--filter=" + sf, plugin, size,
                           "freeze-dir=" + fd, "cbt-dir=" + cd,
                           "snapshot-dir=" + sd], sock, log)
def stop(p):
    p.terminate(); p.wait()
def cmd(c):
    return benchlib.cmd(sock, c)
rss = benchlib.rss
def du(path, skip_data=False):
    t = 0
    for dp, dn, fn in os.walk(path):
        for f in fn:
            if skip_data and re.search(r"\.data(\.[0-9]+)?$", f): continue
            t += os.lstat(os.path.join(dp, f)).st_blocks * 512
    return t / 1048576
p, h, t_fresh = start()
vsize = h.get_size(); M = 1 << 20
step = (vsize // wmib) // M * M
buf = b"\x5a" * M; sc, cc = [], []
for s in range(snaps):
    for i in range(s * wmib // snaps, (s + 1) * wmib // snaps):
        h.pwrite(buf, i * step)
    h.flush()
    sc.append(cmd("@snapshot:create/s%d" % s))
    if s * ckpts // snaps != (s + 1) * ckpts // snaps:
        cc.append(cmd("@cbt:create/c%d" % len(cc)))
h.shutdown(); stop(p)
p, h, t_start = start()
r = rss(p); h.shutdown()
t_sl = min(cmd("@snapshot:list") for _ in range(3))
t_cl = min(cmd("@cbt:list") for _ in range(3))
repo = os.path.join(work, "repo")
t0 = time.monotonic()
b = subprocess.run([nbdsnap, "backup", "nbd+unix:///?socket=" + sock, repo,
                    "--full", "--no-progress"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
t_b = time.monotonic() - t0
if b.returncode: sys.exit("nbdsnap backup: " + b.stderr.decode()[-500:])
t_rev = cmd("@snapshot:revert/s%d" % (snaps // 2))
stop(p)
sm, cm = du(sd, True), du(cd)
print("%-10s %-5s %5d %6.3f %6.3f %6.1f %6.1f %6.1f %6.1f %6.1f %6.1f %6.1f %7.1f %7.2f %7.2f %7.2f %7.2f %8.1f %5.1f" % (
    "stack" if plugin == "memory" else "stack/" + plugin, size, wmib, t_start, t_fresh, r, statistics.median(sc), max(sc),
    statistics.median(cc), max(cc), t_sl, t_cl, t_rev, sm, cm, sm + cm,
    t_b, du(repo), os.getloadavg()[0]), flush=True)
PY
    rm -rf "$work"/{snap,cbt,frz,repo,sock}
    [ "$QCOW2" = 1 ] || continue
    /usr/bin/python3 - "$size" "$wmib" "$work" "$SNAPS" "$CKPTS" <<'PY' ||
import os, sys, time, subprocess, statistics, json
size, wmib, work, snaps, ckpts = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
img = os.path.join(work, "q.qcow2"); out = os.path.join(work, "copy.qcow2")
def run(*a):
    t0 = time.monotonic(); subprocess.run(a, check=True, stdout=subprocess.DEVNULL)
    return (time.monotonic() - t0) * 1000
def du(f): return os.stat(f).st_blocks * 512 / 1048576
run("qemu-img", "create", "-q", "-f", "qcow2", img, size)
vsize = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", img]))["virtual-size"]
M = 1 << 20; step = (vsize // wmib) // M * M; sc, cc = [], []
for s in range(snaps):
    cs = []
    for i in range(s * wmib // snaps, (s + 1) * wmib // snaps):
        cs += ["-c", "write -q -P 90 %d 1M" % (i * step)]
    if cs: subprocess.run(["qemu-io", "-f", "qcow2"] + cs + [img], check=True, stdout=subprocess.DEVNULL)
    sc.append(run("qemu-img", "snapshot", "-c", "s%d" % s, img))
    if s * ckpts // snaps != (s + 1) * ckpts // snaps:
        if cc: run("qemu-img", "bitmap", "--disable", img, "c%d" % (len(cc) - 1))
        cc.append(run("qemu-img", "bitmap", "--add", img, "c%d" % len(cc)))
t_sl = min(run("qemu-img", "snapshot", "-l", img) for _ in range(3))
t_cl = min(run("qemu-img", "info", img) for _ in range(3))
t_b = run("qemu-img", "convert", "-O", "qcow2", img, out) / 1000
bk = du(out); os.unlink(out)
# qemu refuses to apply an internal snapshot while the image has any
# persistent bitmap, even a disabled one: remove them all (untimed); the
# checkpoints are lost, which our stack does not need.
for i in range(len(cc)): run("qemu-img", "bitmap", "--remove", img, "c%d" % i)
t_rev = run("qemu-img", "snapshot", "-a", "s%d" % (snaps // 2), img)
dk = du(img) - wmib
print("%-10s %-5s %5d %6s %6s %6s %6.1f %6.1f %6.1f %6.1f %6.1f %6.1f %7.1f %7s %7s %7.2f %7.2f %8.1f %5.1f" % (
    "qcow2", size, wmib, "-", "-", "-", statistics.median(sc), max(sc),
    statistics.median(cc), max(cc), t_sl, t_cl, t_rev, "-", "-", dk, t_b, bk,
    os.getloadavg()[0]), flush=True)
os.unlink(img)
PY
        echo "# $sc: qcow2 run failed"
done
echo "# end $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
