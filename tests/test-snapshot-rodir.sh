#!/usr/bin/env bash
# Snapshot filter, read-only snapshot directory: nbdkit refuses to start
# with a clear message, and nothing changes: an existing directory on a
# read-only bind mount, an existing directory that is immutable
# (chattr +i, since tests run as root and root ignores permissions), and a
# missing directory whose parent is immutable.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((4 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 17
d=$tmpdir/snap

start_server srv --filter="$F" file "$base" snapshot-dir="$d"
nbd_op srv "" "h.pwrite(b'x' * 1000, 0)"
snap_ok srv @snapshot:create/a >/dev/null
stop_server srv
sum=$(dirsum "$d")
re='read-only|writ|permission|EROFS|not permitted'
did=0

# 1. A read-only bind mount of the directory.
mkdir "$tmpdir/ro"
if mount --bind "$d" "$tmpdir/ro" 2>/dev/null; then
    cleanup_fn quietly umount "$tmpdir/ro"
    if mount -o remount,ro,bind "$tmpdir/ro" 2>/dev/null &&
       ! touch "$tmpdir/ro/probe" 2>/dev/null; then
        expect_start_fails "$tmpdir/ro.out" "$re" \
            --filter="$F" file "$base" snapshot-dir="$tmpdir/ro"
        cat "$tmpdir/ro.out"
        same_dir "$sum" "$d"
        did=1
    fi
    umount "$tmpdir/ro"
fi

# 2. An immutable directory (files can still be written in place, but
#    nothing can be created, renamed or removed in it).
if chattr +i "$d" 2>/dev/null; then
    cleanup_fn quietly chattr -i "$d"
    if ! touch "$d/probe" 2>/dev/null; then
        expect_start_fails "$tmpdir/immutable.out" "$re" \
            --filter="$F" file "$base" snapshot-dir="$d"
        cat "$tmpdir/immutable.out"
        chattr -i "$d"
        same_dir "$sum" "$d"
        did=1
    fi
    chattr -i "$d"
fi

# 3. A directory to be created under an immutable parent.
mkdir "$tmpdir/parent"
if chattr +i "$tmpdir/parent" 2>/dev/null; then
    cleanup_fn quietly chattr -i "$tmpdir/parent"
    if ! mkdir "$tmpdir/parent/probe" 2>/dev/null; then
        expect_start_fails "$tmpdir/parent.out" "$re|create|mkdir" \
            --filter="$F" file "$base" snapshot-dir="$tmpdir/parent/new"
        cat "$tmpdir/parent.out"
        did=1
    fi
    chattr -i "$tmpdir/parent"
fi

[ $did -eq 1 ] || skip "neither read-only bind mounts nor chattr +i work here"

# The directory itself still works.
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
json_check "$(snap_list srv)" '[s["name"] for s in j["snapshots"]] == ["a"]'
stop_server srv
