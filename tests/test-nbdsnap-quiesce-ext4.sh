#!/usr/bin/env bash
# nbdsnap backup --freeze-cmd 'fsfreeze -f' --thaw-cmd 'fsfreeze -u' on a
# real ext4 that is being written: the nbdkit stack (freeze + cbt over
# memory) is put on a loop device through nbdfuse, formatted and mounted,
# and a writer creates, appends to and removes files all the time.  The
# freeze hook, once the file system is frozen, records the SHA-256 of
# every file.  Four backups (full, then incrementals); every point
# restores to an image that passes e2fsck -fn and, mounted read-only,
# holds exactly the files recorded at its freeze.
#
# Needs root, /dev/fuse, a free loop device, nbdfuse (Debian package
# libnbd-bin on Debian 12), fsfreeze (util-linux), mkfs.ext4, e2fsck;
# else skipped.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/nbdsnap-functions.sh"
[ "$(id -u)" = 0 ] || skip "needs root (loop devices, mount)"
requires nbdfuse --version
requires fsfreeze --version
requires mkfs.ext4 -V
requires e2fsck -V
requires losetup --version
[ -c /dev/fuse ] || skip "no /dev/fuse"

repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 64M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
U=$(uri srv)

# The live disk as a file (nbdfuse), a loop device on it, ext4 on that.
mkdir "$tmpdir/fuse" "$tmpdir/mnt" "$tmpdir/check"
nbdfuse -P "$tmpdir/nbdfuse.pid" "$tmpdir/fuse" "$U" \
    > "$tmpdir/nbdfuse.log" 2>&1 &
fpid=$!
cleanup_fn quietly kill "$fpid"
cleanup_fn quietly umount "$tmpdir/fuse"        # as root: no fusermount3
for ((i = 0; i < 250; i++)); do [ -s "$tmpdir/nbdfuse.pid" ] && break; sleep 0.02; done
[ -s "$tmpdir/nbdfuse.pid" ] || skip "nbdfuse did not start: $(cat "$tmpdir/nbdfuse.log")"
dev=$(losetup --find --show "$tmpdir/fuse/nbd" 2>/dev/null) ||
    skip "no free loop device"
cleanup_fn quietly losetup -d "$dev"
mkfs.ext4 -q -F -b 4096 "$dev"
mount -o noatime "$dev" "$tmpdir/mnt" || skip "cannot mount ext4 on $dev"
cleanup_fn quietly umount "$tmpdir/mnt"
cleanup_fn quietly fsfreeze -u "$tmpdir/mnt"

# The writer: new files, appends, removals, all the time.
(
    set +e
    k=0
    while :; do
        k=$((k + 1))
        head -c $(( (k * 7919) % 200000 + 1 )) /dev/urandom > "$tmpdir/mnt/f$k"
        head -c 3000 /dev/urandom >> "$tmpdir/mnt/log"
        (( k % 300 == 0 )) && : > "$tmpdir/mnt/log"
        rm -f "$tmpdir/mnt/f$((k - 40))"
        (( k % 50 == 0 )) && mkdir -p "$tmpdir/mnt/d$k" &&
            head -c 10000 /dev/urandom > "$tmpdir/mnt/d$k/x"
    done
) &
wpid=$!
cleanup_fn quietly kill "$wpid"

# Hooks: freeze, then record every file (a frozen ext4 can be read).
cat > "$tmpdir/freeze.sh" <<EOF
#!/bin/bash
set -e
fsfreeze -f "$tmpdir/mnt"
cd "$tmpdir/mnt" && find . -type f ! -path './lost+found/*' -print0 |
    sort -z | xargs -0 -r sha256sum > "$tmpdir/files-\$NBDSNAP_POINT"
EOF
chmod +x "$tmpdir/freeze.sh"
H=(--freeze-cmd "$tmpdir/freeze.sh" --thaw-cmd "fsfreeze -u $tmpdir/mnt")

for p in P1 P2 P3 P4; do
    sleep 1
    "$N" backup "$U" "$repo" --name "$p" --no-progress "${H[@]}" \
        --quiesce-timeout 20 || fail "backup $p"
    [ -s "$tmpdir/files-$p" ] || fail "the freeze hook recorded nothing for $p"
    # thawed: the writer goes on
    touch "$tmpdir/mnt/after-$p" || fail "the file system is still frozen after $p"
done
kill -0 "$wpid" || fail "the writer stopped"
kill "$wpid"; wait "$wpid" 2>/dev/null || true

for p in P1 P2 P3 P4; do
    "$N" restore "$repo" "$p" -o "$tmpdir/r.img" --no-progress > /dev/null ||
        fail "restore $p"
    e2fsck -fn "$tmpdir/r.img" > "$tmpdir/fsck.log" 2>&1 ||
        { cat "$tmpdir/fsck.log"; fail "e2fsck -fn of $p"; }
    mount -o loop,ro,noload "$tmpdir/r.img" "$tmpdir/check" || fail "mount $p"
    (cd "$tmpdir/check" && find . -type f ! -path './lost+found/*' -print0 |
         sort -z | xargs -0 -r sha256sum) > "$tmpdir/got-$p"
    umount "$tmpdir/check"
    cmp "$tmpdir/files-$p" "$tmpdir/got-$p" ||
        { diff "$tmpdir/files-$p" "$tmpdir/got-$p" | head; fail "$p: not the files as of its freeze"; }
    echo "$p: $(wc -l < "$tmpdir/files-$p") files as of the freeze, e2fsck clean"
done
rm -f "$tmpdir/r.img"
echo "$testname: ok"
