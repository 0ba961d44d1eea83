#!/usr/bin/env bash
# cbt filter, scale with written data (issue 14): on a thin 16 TiB disk
# (memory plugin) with five checkpoints and a few MiB written in regions
# spread over the disk (start, middle, last block), after a restart:
# nbdkit's resident memory stays under 64 MiB and cbt-dir under 1 MiB
# (dense bitmaps took 32 MiB each, in memory and on disk); the change
# maps name exactly the blocks written; the bitmap files, decoded here
# from docs/cbt-format.md section 5 (not with the filter's code), hold
# exactly those bits.  Then a cbt-dir whose bitmap is in the old format 1
# is refused with the documented message and left unchanged.  Not timed.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

G=65536
T16=$((16 << 40))
d=$tmpdir/cbt
args=(--filter="$C" memory 16T cbt-dir="$d")

# Regions written after checkpoint Ci: offset and length in bytes.
regions=(
    "0 $((3 * G))"
    "$((T16 / 2 + 5 * G)) $((2 * G + 100))"
    "$((T16 - G)) $G"
    "$((7 << 40)) $((33 * G))"
    "$((T16 / 2)) 4096"
)
start_server srv "${args[@]}"
for i in 1 2 3 4 5; do
    cbt_ok srv @cbt:create/C$i >/dev/null
    set -- ${regions[$((i - 1))]}
    # A data write and a zero request: both are marked.
    nbd_op srv "" "h.pwrite(b'x' * 4096, $1); h.zero($2, $1)"
done
stop_server srv
start_server srv "${args[@]}"

# blocks_of "OFF LEN"...: the block numbers, ascending.
blocks_of ()
{
    $PYTHON -c '
import sys
G = int(sys.argv[1]); s = set()
for r in sys.argv[2:]:
    o, n = map(int, r.split())
    s.update(range(o // G, (o + n - 1) // G + 1))
print(" ".join(str(b) for b in sorted(s)))' $G "$@"
}
same_text "$(blocks_of "${regions[@]}")" \
    "$(changed_blocks srv @cbt/C1 $G)" "@cbt/C1"
same_text "$(blocks_of "${regions[@]:2}")" \
    "$(changed_blocks srv @cbt/C3 $G)" "@cbt/C3"
same_text "$(blocks_of "${regions[1]}")" \
    "$(changed_blocks srv @cbt:diff/C2/C3 $G)" "@cbt:diff/C2/C3"
json_check "$(cbt_list srv)" \
    "j['checkpoints'][0]['dirty_blocks'] == $(blocks_of "${regions[@]}" | wc -w)"

rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$(cat "$tmpdir/srv.pid")/status")
echo "$testname: nbdkit VmRSS ${rss} kB with 5 checkpoints on 16 TiB"
[ "$rss" -lt $((64 * 1024)) ] || fail "resident memory ${rss} kB >= 64 MiB"
stop_server srv
du=$(du -sk "$d" | cut -f1)
echo "$testname: cbt-dir ${du} kB"
[ "$du" -lt 1024 ] || fail "cbt-dir takes ${du} kB"

# The files, decoded independently: bitmap-i.bits holds region i.
for i in 1 2 3 4 5; do
    got=$($PYTHON - "$d/bitmap-$i.bits" <<'PY'
import hashlib, struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
magic, ver, gran, ident, nblocks, size, plen = struct.unpack_from("<8sIIQQQQ", b)
assert magic == b"NBDSNAPB" and ver == 2, (magic, ver)
assert len(b) == 80 + plen and plen % 4104 == 0, (len(b), plen)
stored = bytes(b[48:80]); b[48:80] = bytes(32)
assert hashlib.sha256(b).digest() == stored, "checksum"
out = []
for r in range(plen // 4104):
    o = 80 + r * 4104
    leaf = struct.unpack_from("<Q", b, o)[0] - 1
    bits = int.from_bytes(b[o + 8:o + 4104], "little")
    out += [leaf * 32768 + k for k in range(32768) if bits >> k & 1]
print(" ".join(map(str, sorted(out))))
PY
)
    same_text "$(blocks_of "${regions[$((i - 1))]}")" "$got" "bitmap-$i.bits"
done

# Format 1 is refused: a real state file naming one checkpoint, whose
# bitmap is a well-formed, sealed format 1 file.
d1=$tmpdir/cbt1
img=$tmpdir/disk.img
truncate -s 1M "$img"
start_server one --filter="$C" file "$img" cbt-dir="$d1"
cbt_ok one @cbt:create/OLD >/dev/null
stop_server one
$PYTHON - "$d1/bitmap-1.bits" <<'PY'
import hashlib, struct, sys
nblocks = 16
b = bytearray(struct.pack("<8sIIQQQQ", b"NBDSNAPB", 1, 65536, 1, nblocks,
                          1 << 20, 8)) + bytes(32) + struct.pack("<Q", 1)
b[48:80] = hashlib.sha256(b).digest()
open(sys.argv[1], "wb").write(b)
PY
sum=$(dirsum "$d1")
expect_start_fails "$tmpdir/old.log" \
    'bitmap format 1 of an older nbdsnap.*does not convert old cbt-dirs' \
    --filter="$C" file "$img" cbt-dir="$d1"
same_dir "$sum" "$d1"
