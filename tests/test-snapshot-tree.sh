#!/usr/bin/env bash
# Snapshot filter, the snapshot tree: base <- a <- b <- c.  Revert to the
# older a and write: a new branch starts; the later snapshots b and c keep
# their bytes, a snapshot made on the branch has parent a, and reverting
# back and forth between branches gives each snapshot's exact bytes.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version

size=$((8 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 5
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d" snapshot-block-size=64K

m=$tmpdir/m
cp "$base" "$m"
# write OFFSET SEED LEN: write to the live disk and to the model $m
write ()
{
    mkdata "$tmpdir/w" "$3" "$2"
    nbd_pwrite srv "" "$1" "$tmpdir/w"
    file_pwrite "$m" "$1" "$tmpdir/w"
}

write 0 51 100000;           snap_ok srv @snapshot:create/a >/dev/null; cp "$m" "$tmpdir/a"
write 50000 52 300000;       snap_ok srv @snapshot:create/b >/dev/null; cp "$m" "$tmpdir/b"
write 1000000 53 70000;      snap_ok srv @snapshot:create/c >/dev/null; cp "$m" "$tmpdir/c"
write 65536 54 65536

# Revert to a and write over blocks that b and c also changed.
snap_ok srv @snapshot:revert/a >/dev/null
cp "$tmpdir/a" "$m"
same_content srv "" "$m"
write 40000 55 1100000
same_content srv "" "$m"
for n in a b c; do same_content srv @snapshot/$n "$tmpdir/$n"; done

# A snapshot on the new branch has parent a; b keeps parent a, c parent b.
out=$(snap_ok srv @snapshot:create/d)
json_check "$out" 'j["snapshot"]["parent"] == "a"'
cp "$m" "$tmpdir/d"
write 7 56 3
out=$(snap_list srv)
json_check "$out" \
    '{s["name"]: s["parent"] for s in j["snapshots"]} == {"a": None, "b": "a", "c": "b", "d": "a"}' \
    'j["live"]["parent"] == "d"'

# Jump between branches: each revert gives that snapshot's exact bytes,
# and writing after it never changes any snapshot.
for n in c d b a c; do
    snap_ok srv @snapshot:revert/$n >/dev/null
    cp "$tmpdir/$n" "$m"
    same_content srv "" "$m"
    write $((RANDOM * 64)) $RANDOM 70000
    same_content srv "" "$m"
done
for n in a b c d; do same_content srv @snapshot/$n "$tmpdir/$n"; done

# And after a restart.
restart_server srv
same_content srv "" "$m"
for n in a b c d; do same_content srv @snapshot/$n "$tmpdir/$n"; done
stop_server srv
