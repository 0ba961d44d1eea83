#!/usr/bin/env bash
# cbt filter, @cbt:upload/COUNT + @cbt:install/SUM[/replace] (bitmap
# migration): a good chain is installed whole (its maps are the uploaded
# bits, the newest is active), and bad input installs nothing: a bad
# COUNT, nothing uploaded, a partial upload (SHA-256 mismatch), garbage,
# another geometry, bits beyond the disk, a bad name, an upload still
# open, a disk that has checkpoints (without /replace), a client the
# policy does not allow, nbdkit -r; a failed state
# write and a crash before the state is written leave the old checkpoints
# and no stray file; under the freeze filter the upload is not taken for
# a write of the disk.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"
: "${FAULTINJECT:=$top_builddir/tests/.libs/libfaultinject.so}"
requires nbdinfo --version

K=65536
SIZE=$((40 * K + 4096))         # 41 blocks, the last one short
truncate -s $SIZE "$tmpdir/disk.img"
start_server s --filter="$C" file "$tmpdir/disk.img" cbt-dir="$tmpdir/cbt"

# up.py URI MODE NAME:BLOCKS...: upload a chain (BLOCKS: comma list of
# set bits, or "-"), print the SHA-256 of what was meant.  MODE: good,
# partial (only the first half written), garbage, geometry (header says
# another granularity), beyond (a bit past the last block), keepopen
# (print the sum and keep the upload open 8 s: longer than install waits for it).
cat > "$tmpdir/up.py" <<'PY'
import os, sys, nbd, hashlib, struct, time
uri, mode, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
G, NB, SIZE = 65536, 41, 41 * 65536 - 65536 + 4096
P = 8 * ((NB + 63) // 64)
buf = bytearray(b"NBDSNAPU" + struct.pack("<IIQQQ", 1, G, NB, SIZE, len(specs)))
buf += bytes(64 - len(buf))
if mode == "geometry":
    buf[12:16] = struct.pack("<I", 16384)
for s in specs:
    name, blocks = s.split(":")
    rec = bytearray(struct.pack("<q", 1700000000) + name.encode())
    rec += bytes(128 - len(rec))
    bits = bytearray(P)
    for b in ([] if blocks == "-" else [int(x) for x in blocks.split(",")]):
        bits[b // 8] |= 1 << (b % 8)
    if mode == "beyond":
        bits[NB // 8] |= 1 << (NB % 8)
    buf += rec + bits
if mode == "garbage":
    buf = bytearray(b"\x5a" * len(buf))
print(hashlib.sha256(buf).hexdigest(), flush=True)
h = nbd.NBD()
h.connect_uri(uri)
assert h.get_size() == len(buf), (h.get_size(), len(buf))
h.pwrite(bytes(buf[: len(buf) // 2] if mode == "partial" else buf), 0)
h.flush()
if mode == "keepopen":
    time.sleep(float(os.environ.get("UP_HOLD", "8")))
h.shutdown()
PY
up ()
{
    $PYTHON "$tmpdir/up.py" "$(uri s "@cbt:upload/$(($# - 1))")" "$@" ||
        fail "upload $* failed"
}

# Bad COUNT: the open fails.
open_fails s @cbt:upload/0
open_fails s @cbt:upload/x
open_fails s @cbt:upload/1001
# Nothing uploaded; a bad SUM; an unknown option.
Z=$(printf '0%.0s' {1..64})
cbt_err s "@cbt:install/$Z" ENOENT >/dev/null
cbt_err s @cbt:install/abc EINVAL >/dev/null
cbt_err s "@cbt:install/$Z/force" EINVAL >/dev/null

# Partial upload: the sum of the whole chain does not match.
sum=$(up partial a:1 b:2)
cbt_err s "@cbt:install/$sum" EINVAL | grep -q 'incomplete or damaged' ||
    fail "partial upload: no clear error"
for m in garbage geometry beyond; do
    sum=$(up $m a:1 b:2)
    cbt_err s "@cbt:install/$sum" EINVAL >/dev/null
done
sum=$(up good a:1 'bad..name:2')
cbt_err s "@cbt:install/$sum" EINVAL >/dev/null
sum=$(up good a:1 a:2)
cbt_err s "@cbt:install/$sum" EINVAL >/dev/null
[ "$(cbt_names s | paste -sd' ')" = "" ] || fail "bad input installed checkpoints"
[ -z "$(ls "$tmpdir/cbt" | grep bitmap)" ] || fail "bad input left bitmap files"

# An upload still open 5 s after the install began is not installed.
$PYTHON "$tmpdir/up.py" "$(uri s @cbt:upload/1)" keepopen a:1 > "$tmpdir/sum" &
bgp=$!
for ((i = 0; i < 100; i++)); do [ -s "$tmpdir/sum" ] && break; sleep 0.05; done
sleep 0.5
cbt_err s "@cbt:install/$(cat "$tmpdir/sum")" EBUSY >/dev/null
wait $bgp
# One that closes within those 5 s is waited for, then installed (the
# client closes its upload, then asks for the install: nbdkit may run
# the close a moment late).
UP_HOLD=1 $PYTHON "$tmpdir/up.py" "$(uri s @cbt:upload/1)" keepopen a:1 > "$tmpdir/sum" &
bgp=$!
for ((i = 0; i < 100; i++)); do [ -s "$tmpdir/sum" ] && break; sleep 0.05; done
cbt_ok s "@cbt:install/$(cat "$tmpdir/sum")" >/dev/null
wait $bgp
[ "$(cbt_names s | paste -sd' ')" = "a" ] || fail "the waited-for upload was not installed"
cbt_ok s "@cbt:delete/a" >/dev/null

# A good chain: a (blocks 1, 40), b (blocks 3..5), c (the newest, empty).
sum=$(up good a:1,40 b:3,4,5 c:-)
out=$(cbt_ok s "@cbt:install/$sum")
json_check "$out" 'j["installed"] == ["a", "b", "c"]' 'j["replaced"] is False'
[ "$(cbt_names s | paste -sd' ')" = "a b c" ] || fail "installed: $(cbt_names s | paste -sd' ')"
same_text "0 65536 1 hole
65536 65536 2 zero
131072 2490368 1 hole
2621440 4096 2 zero" "$(map s @cbt:diff/a/b)" "map a..b"
same_text "0 196608 1 hole
196608 196608 2 zero
393216 2232320 1 hole" "$(map s @cbt:diff/b/c)" "map b..c"
# c is active: a write shows in @cbt/c.
nbd_op s "" "h.pwrite(b'x' * 10, 20 * $K)"
same_text "0 1310720 1 hole
1310720 65536 0 data
1376256 1249280 1 hole" "$(map s @cbt/c)" "map since c"
# The chain survives a restart.
restart_server s
[ "$(cbt_names s | paste -sd' ')" = "a b c" ] || fail "after restart: $(cbt_names s | paste -sd' ')"
same_text "0 196608 1 hole
196608 196608 2 zero
393216 2232320 1 hole" "$(map s @cbt:diff/b/c)" "map b..c after restart"

# A disk with checkpoints: refused, unless /replace.
sum=$(up good x:7 y:-)
cbt_err s "@cbt:install/$sum" EEXIST >/dev/null
out=$(cbt_ok s "@cbt:install/$sum/replace")
json_check "$out" 'j["installed"] == ["x", "y"]' 'j["replaced"] is True'
[ "$(cbt_names s | paste -sd' ')" = "x y" ] || fail "replaced: $(cbt_names s | paste -sd' ')"
[ "$(ls "$tmpdir/cbt" | grep -c bitmap)" = 2 ] || fail "old bitmaps left"
stop_server s

# A failed state write (the rename of state.tmp): nothing installed, the
# new bitmap files removed.
if [ -z "$NBDSNAP_SANITIZER" ] && [ -f "$FAULTINJECT" ]; then
    before=$(ls "$tmpdir/cbt")
    LD_PRELOAD=$FAULTINJECT FI_CALLS=rename FI_NTH=3 FI_ARM=$tmpdir/arm \
        FI_PATH=$tmpdir/cbt \
        start_server s --filter="$C" file "$tmpdir/disk.img" cbt-dir="$tmpdir/cbt"
    sum=$(up good p:1 q:2)
    touch "$tmpdir/arm"
    cbt_err s "@cbt:install/$sum/replace" EIO >/dev/null
    rm "$tmpdir/arm"
    [ "$(cbt_names s | paste -sd' ')" = "x y" ] || fail "after a failed install: $(cbt_names s | paste -sd' ')"
    [ "$(ls "$tmpdir/cbt")" = "$before" ] || fail "a failed install left files"
    stop_server s

    # A crash while the state is written: the renames of the two bitmap
    # files pass, the state's waits 10 s, nbdkit is killed meanwhile.
    LD_PRELOAD=$FAULTINJECT FI_CALLS=rename FI_NTH=3 FI_DELAY=10000 \
        FI_ARM=$tmpdir/arm FI_PATH=$tmpdir/cbt \
        start_server s --filter="$C" file "$tmpdir/disk.img" cbt-dir="$tmpdir/cbt"
    sum=$(up good p:1 q:2)
    touch "$tmpdir/arm"
    snapcmd s "@cbt:install/$sum/replace" > /dev/null 2>&1 &
    bgp=$!
    for ((i = 0; i < 200; i++)); do
        [ "$(ls "$tmpdir/cbt" | grep -c '^bitmap-.*\.bits$')" -ge 4 ] && break
        sleep 0.05
    done
    kill9_server s
    wait $bgp || true
    rm "$tmpdir/arm"
    start_server s --filter="$C" file "$tmpdir/disk.img" cbt-dir="$tmpdir/cbt"
    [ "$(cbt_names s | paste -sd' ')" = "x y" ] || fail "after a crash mid-install: $(cbt_names s | paste -sd' ')"
    [ "$(ls "$tmpdir/cbt")" = "$before" ] || fail "strays after the crash: $(ls "$tmpdir/cbt")"
    stop_server s
fi
# Who may: not on nbdkit -r, not a TCP client by default.
start_server s -r --filter="$C" file "$tmpdir/disk.img" cbt-dir="$tmpdir/cbt"
open_fails s @cbt:upload/1
cbt_err s "@cbt:install/$Z" EROFS >/dev/null
stop_server s
start_server_tcp t --filter="$C" file "$tmpdir/disk.img" cbt-dir="$tmpdir/cbt"
open_fails t @cbt:upload/1
cbt_err t "@cbt:install/$Z" EPERM >/dev/null
stop_server t

# Under the freeze filter the upload passes through, and is not the disk:
# a frozen point held meanwhile still shows the disk as it was.
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
head -c $SIZE /dev/urandom > "$tmpdir/disk.img"
cp "$tmpdir/disk.img" "$tmpdir/orig.img"
start_server s --filter="$FREEZE_FILTER" --filter="$C" file "$tmpdir/disk.img" \
    cbt-dir="$tmpdir/cbt" freeze-dir="$tmpdir"
snapcmd s @freeze:begin/p | grep -q '"ok":true' || fail "freeze begin"
sum=$(up good u:1 v:-)
cbt_ok s "@cbt:install/$sum/replace" > /dev/null
[ "$(cbt_names s | paste -sd' ')" = "u v" ] || fail "through freeze: $(cbt_names s)"
same_content s @freeze/p "$tmpdir/orig.img"
same_content s "" "$tmpdir/orig.img"
snapcmd s @freeze:end/p | grep -q '"ok":true' || fail "freeze end"
stop_server s
echo "$testname: ok"
