#!/usr/bin/env bash
# nbdsnap end to end: a live server with the whole stack
#   --filter=delay --filter=freeze --filter=cbt --filter=snapshot memory
# (delay outermost slows client reads so that writes really happen while a
# backup copies), random writes (data, zeroes, trims) between backups and
# during some of them, and every kind of point:
#   B1 full (repository block 128K over cbt granularity 16K, disk size not
#      a multiple of either)            B2 incremental, writes during the copy
#   s1 snapshot, writes, B3 incremental --compress
#   revert to s1 (cbt must see it), writes, B4 incremental, writes during
#   writes, B5 differential --since B2
#   T4 (no writes in between): B6 incremental since B5, B7 --since B2,
#      B8 full: the seed thread's acceptance, all three give the same disk
# The live disk is dumped at each backup instant (writers paused); every
# point must restore to exactly that (cmp and qemu-img compare), also after
# merges, to an NBD server holding garbage, and served by the backup plugin
# (instant recovery, writable through the snapshot filter).  At the end no
# frozen point is held and verify is clean.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built CBT_FILTER FREEZE_FILTER BACKUP_PLUGIN NBDSNAP
requires nbdcopy --version
requires qemu-img --version
requires nbdkit --filter=delay null --dump-plugin

SIZE=$((32 * 1024 * 1024 + 12 * 1024))
repo=$tmpdir/repo
# Reads are slowed, so that views are read while other requests run.
start_server srv --filter=delay --filter="$FREEZE_FILTER" \
    --filter="$CBT_FILTER" --filter="$F" memory "$SIZE" \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap" \
    cbt-granularity=16K delay-read=200ms
U=$(uri srv)

# writes SEED COUNT: random writes, zeroes and trims on the live disk.
writes ()
{
    nbd_op srv "" "
import random
r = random.Random($1)
size = h.get_size()
for i in range($2):
    n = r.choice([512, 4096, 16384, 65536, 100000, 262144, 1048576])
    off = r.randrange(0, size - n) // 512 * 512
    k = r.random()
    if k < 0.1:
        h.zero(n, off)
    elif k < 0.15:
        h.trim(n, off)
    else:
        h.pwrite(r.randbytes(n), off)
# the last bytes of the disk (a short last block) change now and then
if r.random() < 0.5:
    h.pwrite(r.randbytes(700), size - 700)
h.flush()"
}

# expect NAME: the live disk now (writers paused) is what NAME must give.
expect ()
{
    dump srv "" "$tmpdir/exp-$1.img"
    sha256sum < "$tmpdir/exp-$1.img" > "$tmpdir/exp-$1.sha"
}

# backup NAME ARGS...: run a backup, it must succeed.
backup ()
{
    local name=$1; shift
    "$NBDSNAP" backup "$U" "$repo" --name "$name" --no-progress "$@" \
        > "$tmpdir/backup-$name.out" 2>&1 ||
        { cat "$tmpdir/backup-$name.out" >&2; fail "backup $name failed"; }
    cat "$tmpdir/backup-$name.out"
}

held () # NAME: is frozen point NAME held?
{
    "$NBDSNAP" --json freeze list "$U" | grep -q "\"name\":\"$1\""
}

# backup_during_writes NAME SEED ARGS...: the backup runs (one connection,
# slow reads); its --thaw-cmd hook, which runs right after its frozen
# point is begun and before the copy, waits for the test: more writes go
# to the live disk while the point is held and nothing is copied yet, so
# every block they change must come from the frozen point's saved copy.
backup_during_writes ()
{
    local name=$1 seed=$2 pid i; shift 2
    local begun=$tmpdir/begun-$name go=$tmpdir/go-$name
    "$NBDSNAP" backup "$U" "$repo" --name "$name" --no-progress \
        --connections 1 \
        --thaw-cmd "touch '$begun'; while [ ! -e '$go' ]; do sleep 0.05; done" \
        "$@" > "$tmpdir/backup-$name.out" 2>&1 &
    pid=$!
    bg_register "$pid"
    for ((i = 0; i < 600; i++)); do
        [ -e "$begun" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    [ -e "$begun" ] || { touch "$go"; fail "backup $name: its point was never begun"; }
    held "$name" || { touch "$go"; fail "backup $name: its frozen point is not held"; }
    writes "$seed" 8
    held "$name" || { touch "$go"; fail "backup $name: its frozen point went away during the writes"; }
    touch "$go"
    wait "$pid" || { cat "$tmpdir/backup-$name.out" >&2; fail "backup $name failed"; }
    cat "$tmpdir/backup-$name.out"
}

# check_restore NAME [EXPECTED]: restore NAME to a file; it must be the
# expected image (default: exp-NAME), byte for byte.
check_restore ()
{
    local name=$1 exp=$tmpdir/exp-${2:-$1}.img out=$tmpdir/restored.img
    rm -f "$out"
    "$NBDSNAP" restore "$repo" "$name" -o "$out" --no-progress >/dev/null ||
        fail "restore $name failed"
    cmp "$out" "$exp" || fail "restore of $name differs from its moment"
    qemu-img compare -q -f raw -F raw "$out" "$exp" ||
        fail "qemu-img compare: restore of $name differs"
    [ "$(sha256sum < "$out")" = "$(cat "${exp%.img}.sha")" ] ||
        fail "restore of $name: sha256 differs"
    [ "$(stat -c %s "$out")" -eq "$SIZE" ] || fail "restore of $name: wrong size"
}

# T1: a new disk gets data; first (full) backup, repository created.
writes 1 60
expect B1
backup B1 --full --block-size 128K
grep -q "full" "$tmpdir/backup-B1.out"
[ -f "$repo/repository" ] || fail "the first full backup did not create the repository"

# T2: incremental, with writes while it copies.
writes 2 40
expect B2
backup_during_writes B2 3
grep -q "incremental since B1" "$tmpdir/backup-B2.out" ||
    fail "B2 should be incremental since B1 (the newest point)"

# Snapshot s1 (snapshot filter below cbt), more writes, B3 compressed.
"$NBDSNAP" snapshot create "$U" s1 >/dev/null
writes 4 30
expect B3
backup B3 --compress

# Revert to s1: blocks change that nobody wrote through cbt; cbt marks
# them, so B4 must contain them.  Then writes during the copy.
"$NBDSNAP" snapshot revert "$U" s1 >/dev/null
writes 5 20
expect B4
backup_during_writes B4 6 --incremental

# A differential: B5 since B2.
writes 7 20
expect B5
backup B5 --since B2
grep -q "incremental since B2" "$tmpdir/backup-B5.out" || fail "B5 is not since B2"

# T4: three backups of the same moment: B6 (since B5), B7 (since B2),
# B8 full.
writes 8 30
expect T4
backup B6
backup B7 --since B2
backup B8 --full --connections 2
for p in B6 B7 B8; do
    cp "$tmpdir/exp-T4.img" "$tmpdir/exp-$p.img"
    cp "$tmpdir/exp-T4.sha" "$tmpdir/exp-$p.sha"
done

"$NBDSNAP" list "$repo"
"$NBDSNAP" verify "$repo" || fail "verify found problems in a good repository"
[ "$("$NBDSNAP" --json freeze list "$U" | grep -c '"name"')" -eq 0 ] ||
    fail "a frozen point is still held after the backups"
for p in B1 B2 B3 B4 B5 B6 B7 B8; do
    check_restore "$p"
done
# B6 and B7 and B8 are the same disk (chains B1<-B2<-..<-B6, B1<-B2<-B7, B8).
"$NBDSNAP" restore "$repo" B6 -o "$tmpdir/r6.img" --no-progress >/dev/null
"$NBDSNAP" restore "$repo" B7 -o "$tmpdir/r7.img" --no-progress >/dev/null
cmp "$tmpdir/r6.img" "$tmpdir/r7.img" || fail "B6 and B7 differ"
rm -f "$tmpdir/r6.img" "$tmpdir/r7.img"

# Incrementals stored only what changed.
blocks () { "$NBDSNAP" --json list "$repo" | $PYTHON -c '
import sys, json
print({p["name"]: p["blocks"] for p in json.load(sys.stdin)["points"]}[sys.argv[1]])' "$1"; }
[ "$(blocks B6)" -lt "$(blocks B7)" ] || fail "B6 (since B5) should hold fewer blocks than B7 (since B2)"

# Retention: merges never change what a point restores to.
"$NBDSNAP" merge "$repo" B3 >/dev/null        # B3 folded onto B2
"$NBDSNAP" merge "$repo" B4 >/dev/null        # B4 folded onto (merged) B3
"$NBDSNAP" --json list "$repo" | grep -q '"name":"B3"' &&
    fail "B3 should be gone: its only child B4 was merged into it"
"$NBDSNAP" verify "$repo" >/dev/null || fail "verify after merge"
for p in B1 B2 B4 B5 B6 B7 B8; do
    check_restore "$p"
done
"$NBDSNAP" delete "$repo" B8 >/dev/null
check_restore B6

# Restore to an NBD server that holds garbage: zero blocks must be zeroed.
start_server dst memory "$SIZE"
nbd_op dst "" "
import random
h.pwrite(random.Random(99).randbytes($SIZE), 0)"
"$NBDSNAP" restore "$repo" B4 -o "$(uri dst)" --no-progress >/dev/null ||
    fail "restore to NBD failed"
same_content dst "" "$tmpdir/exp-B4.img"

# Instant recovery: serve B5 at once, writable through the snapshot filter.
start_server ir --filter="$F" "$BACKUP_PLUGIN" repo="$repo" point=B5 \
    snapshot-dir="$tmpdir/irsnap"
same_content ir "" "$tmpdir/exp-B5.img"
nbd_op ir "" 'h.pwrite(b"x" * 4096, 8192); h.flush()'
"$NBDSNAP" restore "$repo" B5 -o "$tmpdir/again.img" --no-progress >/dev/null
cmp "$tmpdir/again.img" "$tmpdir/exp-B5.img" ||
    fail "writing to the recovered disk changed the repository"

echo "$testname: OK"
