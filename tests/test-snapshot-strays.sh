#!/usr/bin/env bash
# Snapshot filter, a first start scans snapshot-dir twice (issue 10,
# item 8): check_no_layers (.get_ready) accepts a directory without a
# state file only if it holds nothing but what an interrupted first start
# leaves, and after the new state is written remove_strays (.after_fork)
# removes every layer file the state does not name.  Both scans read the
# one directory descriptor; when statedir_open dup()ed it, the two
# streams shared one read position and the second scan, starting where
# the first ended, saw nothing.
#
# Every stray a real first start can meet (layer-1.*, state.tmp) is
# overwritten by the new layer and state themselves, so the test opens a
# window between the two scans: a delay filter below makes the probe of
# the disk in .after_fork sleep 2 s, and strays of an unknown layer are
# dropped into the directory then.  The directory is checked before and
# after: the leftovers of the interrupted start are replaced by the new
# layer 1, the strays are gone, the state names layer 1 only.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdkit --filter=delay null --dump-plugin

d=$tmpdir/snap
mkdir -m 0700 "$d"
# What an interrupted first start leaves: an empty layer-1.data, half a
# map, the lock file.
: > "$d/layer-1.data"
head -c 100 /dev/urandom > "$d/layer-1.map.tmp"
: > "$d/lock"
echo "before: $(cd "$d" && ls | tr '\n' ' ')"

NBDSNAP_START_NO_WAIT=1 start_server srv --filter="$F" --filter=delay \
    memory 1M delay-open=2 snapshot-dir="$d"
# The socket exists: .get_ready (the first scan) is done, .after_fork is
# sleeping in the probe's open (start_server returns without waiting for
# the greeting, which comes only after .after_fork).
for x in layer-9.data layer-9.map layer-9.map.tmp; do
    head -c 4096 /dev/urandom > "$d/$x"
done
echo "during: $(cd "$d" && ls | tr '\n' ' ')"
nbd_op srv "" "h.pwrite(b'x' * 4096, 0); h.flush()"
after=$(cd "$d" && ls | tr '\n' ' ')
echo "after: $after"
same_text "layer-1.data layer-1.map lock state " "$after" \
    "the files of snapshot-dir after the first start"
grep -q '^layer 1 0 ' "$d/state" || fail "the state does not name layer 1"
[ "$(grep -c '^layer ' "$d/state")" -eq 1 ] || fail "the state names more than layer 1"
stop_server srv

# And it starts again on what it made.
start_server srv --filter="$F" memory 1M snapshot-dir="$d"
nbd_op srv "" "assert h.pread(4096, 0) == b'x' * 4096"
stop_server srv
