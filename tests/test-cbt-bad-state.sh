#!/usr/bin/env bash
# cbt filter, damaged or unusable cbt-dir: nbdkit refuses to start with a
# message saying what is wrong, and leaves cbt-dir byte-identical, when
# the state file is corrupt (a flipped byte), truncated, empty, foreign,
# missing while bitmaps are present, or well-checksummed but invalid;
# when a bitmap is corrupt, truncated, missing, foreign or another
# checkpoint's; when cbt-granularity differs from the directory's; when
# another nbdkit holds the directory.  The undamaged directory still
# works afterwards.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

img=$tmpdir/disk.img
truncate -s 1M "$img"
d=$tmpdir/cbt
args=(--filter="$C" file "$img" cbt-dir="$d")

start_server srv "${args[@]}"
cbt_ok srv @cbt:create/C1 >/dev/null; nbd_op srv "" "h.pwrite(b'w', 70000)"
cbt_ok srv @cbt:create/C2 >/dev/null; nbd_op srv "" "h.pwrite(b'w', 140000)"
cbt_ok srv @cbt:create/C3 >/dev/null; nbd_op srv "" "h.pwrite(b'w', 210000)"
stop_server srv
cp -a "$d" "$tmpdir/pristine"
ls "$d"/bitmap-1.bits "$d"/bitmap-2.bits "$d"/bitmap-3.bits >/dev/null

# py FILE CODE: run python on FILE's bytes (b), writing the result back.
py ()
{
    $PYTHON -c "
import sys, hashlib
f = sys.argv[1]
b = bytearray(open(f, 'rb').read())
$2
open(f, 'wb').write(b)" "$1"
}
# resign STATE: recompute the sha256 line of a state file.
resign ()
{
    py "$1" '
text = bytes(b).rsplit(b"sha256 ", 1)[0]
b = bytearray(text + b"sha256 " + hashlib.sha256(text).hexdigest().encode() + b"\n")'
}
n=0
# refuses REGEX [EXTRA-ARGS...]: start must fail, dir must be unchanged,
# then the pristine copy is restored.
refuses ()
{
    local re=$1 sum; shift
    n=$((n + 1))
    sum=$(dirsum "$d")
    expect_start_fails "$tmpdir/refuse-$n.log" "$re" "${args[@]}" "$@"
    same_dir "$sum" "$d"
    rm -rf "$d"; cp -a "$tmpdir/pristine" "$d"
}

# State file.
py "$d/state" 'i = b.index(b"checkpoint 2"); b[i + 20] ^= 1'
refuses 'corrupt|checksum'
py "$d/state" 'b = b[:len(b) // 2]'
refuses 'truncated|not an nbdsnap'
: > "$d/state"
refuses 'truncated|empty'
printf 'hello, world\n' > "$d/state"
refuses 'not an nbdsnap'
head -c 300 /dev/urandom > "$d/state"
refuses 'not an nbdsnap|truncated'
rm "$d/state"
refuses 'state'
py "$d/state" 'b = b.replace(b"granularity 65536", b"granularity 3000")'
resign "$d/state"
refuses 'granularity'
py "$d/state" 'b = b.replace(b" C3\n", b" C1\n")'
resign "$d/state"
refuses 'checkpoint'
py "$d/state" 'b = b.replace(b"version 1\n", b"version 9\n")'
resign "$d/state"
refuses 'version'

# Bitmaps: frozen (1, 2) and the newest (3, sealed at the clean stop).
for id in 1 3; do
    py "$d/bitmap-$id.bits" 'b[80] ^= 0x80'
    refuses 'corrupt|checksum'
    py "$d/bitmap-$id.bits" 'b[17] ^= 1'
    refuses 'corrupt|checksum'
    py "$d/bitmap-$id.bits" 'b = b[:-8]'
    refuses 'truncated|length'
    py "$d/bitmap-$id.bits" 'b = b[:40]'
    refuses 'truncated|not an nbdsnap'
    head -c 88 /dev/urandom > "$d/bitmap-$id.bits"
    refuses 'not an nbdsnap|magic'
    rm "$d/bitmap-$id.bits"
    refuses "bitmap-$id"
done
cp "$d/bitmap-1.bits" "$d/bitmap-2.bits"
refuses 'another checkpoint|belongs'

# Granularity mismatch.
refuses 'granularity' cbt-granularity=4K
refuses 'granularity' cbt-granularity=128K

# Locked by a running nbdkit.
start_server srv "${args[@]}"
sum=$(dirsum "$d")
expect_start_fails "$tmpdir/locked.log" 'in use|lock' "${args[@]}"
same_dir "$sum" "$d"
same_text "1 2 3" "$(changed_blocks srv @cbt/C1 65536)" "@cbt/C1 while locked out"
stop_server srv

if [ "$(id -u)" != 0 ]; then
    chmod 555 "$d"
    sum=$(dirsum "$d")
    expect_start_fails "$tmpdir/ro.log" 'writable|permission' "${args[@]}"
    same_dir "$sum" "$d"
    chmod 755 "$d"
else
    echo "$testname: running as root: unwritable cbt-dir not tested"
fi

# The real directory is fine.
start_server srv "${args[@]}"
same_text "1 2 3" "$(changed_blocks srv @cbt/C1 65536)" "@cbt/C1"
same_text "3" "$(changed_blocks srv @cbt/C3 65536)" "@cbt/C3"
stop_server srv
