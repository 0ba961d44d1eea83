#!/usr/bin/env bash
# nbdsnap: damaged repositories.  One flipped byte in a point's data file:
# verify names the point, the block and the file and exits 1; restoring
# that point (or a point whose chain goes through it) fails with exit 1
# and leaves the output file as it was; points that do not use the damaged
# block still restore.  Then a damaged index and a damaged manifest.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built CBT_FILTER FREEZE_FILTER NBDSNAP
requires nbdcopy --version

K=65536
repo=$tmpdir/repo
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    memory 4M freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
U=$(uri srv)

# status CMD...: run CMD, print its exit status (never fails).
status () { local st=0; "$@" > "$tmpdir/out" 2> "$tmpdir/err" || st=$?; echo "$st"; }

mkdata "$tmpdir/d1" $((16 * K)) 1
nbd_pwrite srv "" 0 "$tmpdir/d1"
"$NBDSNAP" backup "$U" "$repo" --full --name B1 --no-progress >/dev/null
dump srv "" "$tmpdir/exp-B1.img"
# B2: exactly one changed block, block 5.
mkdata "$tmpdir/d2" $K 2
nbd_pwrite srv "" $((5 * K)) "$tmpdir/d2"
"$NBDSNAP" backup "$U" "$repo" --name B2 --no-progress >/dev/null
dump srv "" "$tmpdir/exp-B2.img"
# B3 since B2: block 9 changes.
mkdata "$tmpdir/d3" $K 3
nbd_pwrite srv "" $((9 * K)) "$tmpdir/d3"
"$NBDSNAP" backup "$U" "$repo" --name B3 --no-progress >/dev/null
dump srv "" "$tmpdir/exp-B3.img"
"$NBDSNAP" verify "$repo" >/dev/null || fail "verify of a good repository failed"
[ "$("$NBDSNAP" --json list "$repo" | $PYTHON -c '
import sys, json
print([p["blocks"] for p in json.load(sys.stdin)["points"] if p["name"] == "B2"][0])')" = 1 ] ||
    fail "B2 should hold exactly one block"
cp -a "$repo" "$tmpdir/pristine"

# ---- one flipped byte in B2's data (its only block, block 5)
data=$repo/points/B2/data
sz=$(stat -c %s "$data")
off=$((sz - 1000))
byte=$(od -An -tu1 -j "$off" -N1 "$data" | tr -d ' ')
printf "\\$(printf '%03o' $(( (byte ^ 0x20) & 255 )))" |
    dd of="$data" bs=1 seek="$off" conv=notrunc status=none

[ "$(status "$NBDSNAP" verify "$repo")" = 1 ] || fail "verify: expected exit 1"
cat "$tmpdir/out" "$tmpdir/err"
grep -q 'B2' "$tmpdir/out" || fail "verify does not name point B2"
grep -Eq 'block 5\b' "$tmpdir/out" || fail "verify does not name block 5"
grep -q 'points/B2/data' "$tmpdir/out" || fail "verify does not name the data file"
grep -q 'B1' "$tmpdir/out" && fail "verify blames B1, which is intact"
[ "$(status "$NBDSNAP" verify "$repo" B1)" = 0 ] || fail "verify B1 alone should pass"
[ "$(status "$NBDSNAP" verify "$repo" B2)" = 1 ] || fail "verify B2 should fail"
"$NBDSNAP" --json verify "$repo" > "$tmpdir/v.json" || true
json_check "$(cat "$tmpdir/v.json")" 'j["ok"] is False' 'j["problems"] >= 1' \
    'any("B2" in l and "block 5" in l for l in j["problems_found"])'

# Restore of B2 and of B3 (its chain uses B2's block 5) fail, exit 1, and
# the output file is left as it was.
echo "old content" > "$tmpdir/out.img"
for p in B2 B3; do
    [ "$(status "$NBDSNAP" restore "$repo" $p -o "$tmpdir/out.img" --no-progress)" = 1 ] ||
        fail "restore $p from a damaged chain: expected exit 1"
    cat "$tmpdir/err"
    grep -q 'B2' "$tmpdir/err" || fail "restore $p: the error does not name B2"
    grep -Eq 'block 5\b' "$tmpdir/err" || fail "restore $p: the error does not name block 5"
    [ "$(cat "$tmpdir/out.img")" = "old content" ] || fail "restore $p changed the output file"
done
ls "$tmpdir" | grep -q 'out.img.nbdsnap-' && fail "a temporary file was left"
# Restore to NBD fails too (exit 1).
start_server dst memory 4M
[ "$(status "$NBDSNAP" restore "$repo" B2 -o "$(uri dst)" --no-progress)" = 1 ] ||
    fail "restore to NBD of a damaged point: expected exit 1"
# B1 does not use the damaged block: it restores.
"$NBDSNAP" restore "$repo" B1 -o "$tmpdir/r1.img" --no-progress >/dev/null ||
    fail "restore of the intact B1 failed"
cmp "$tmpdir/r1.img" "$tmpdir/exp-B1.img" || fail "B1 restored wrong"
# Merging the damaged point is refused and changes nothing.
before=$(dirsum "$repo")
[ "$(status "$NBDSNAP" merge "$repo" B3)" = 1 ] || fail "merge through a damaged block: expected exit 1"
same_dir "$before" "$repo"

# ---- a damaged index (B3) and a damaged manifest (B2)
rm -rf "$repo"; cp -a "$tmpdir/pristine" "$repo"
printf 'X' | dd of="$repo/points/B3/index" bs=1 seek=20 conv=notrunc status=none
[ "$(status "$NBDSNAP" verify "$repo")" = 1 ] || fail "damaged index: verify should exit 1"
grep -q 'B3' "$tmpdir/out" || fail "damaged index: B3 not named"
grep -q 'index' "$tmpdir/out" || fail "damaged index: the file is not named"
[ "$(status "$NBDSNAP" restore "$repo" B3 -o "$tmpdir/x.img")" = 1 ] ||
    fail "restore with a damaged index: expected exit 1"
[ -e "$tmpdir/x.img" ] && fail "restore with a damaged index created its output"

rm -rf "$repo"; cp -a "$tmpdir/pristine" "$repo"
sed -i 's/^disk-size .*/disk-size 8388608/' "$repo/points/B2/manifest"
[ "$(status "$NBDSNAP" verify "$repo")" = 1 ] || fail "damaged manifest: verify should exit 1"
grep -q 'B2' "$tmpdir/out" || fail "damaged manifest: B2 not named"
[ "$(status "$NBDSNAP" restore "$repo" B2 -o "$tmpdir/x.img")" = 1 ] ||
    fail "restore with a damaged manifest: expected exit 1"

# ---- a truncated data file
rm -rf "$repo"; cp -a "$tmpdir/pristine" "$repo"
truncate -s -10 "$repo/points/B3/data"
[ "$(status "$NBDSNAP" verify "$repo")" = 1 ] || fail "truncated data: verify should exit 1"
grep -q 'B3' "$tmpdir/out" || fail "truncated data: B3 not named"

# ---- a non-zero byte in the data header's reserved page
rm -rf "$repo"; cp -a "$tmpdir/pristine" "$repo"
printf 'X' | dd of="$repo/points/B1/data" bs=1 seek=2000 conv=notrunc status=none
[ "$(status "$NBDSNAP" verify "$repo" B1)" = 1 ] || fail "data header: verify should exit 1"
grep -q 'points/B1/data has no valid NBDSNAPD header' "$tmpdir/out" ||
    fail "data header: the damage is not named"

# ---- a manifest of another format version (its own checksum correct):
# refused as such, not as damage.
rm -rf "$repo"; cp -a "$tmpdir/pristine" "$repo"
$PYTHON - "$repo/points/B2/manifest" <<'PY'
import hashlib, sys
p = sys.argv[1]
body = open(p).read().rsplit("sha256 ", 1)[0].replace("version 2\n", "version 1\n", 1)
open(p, "w").write(body + "sha256 " + hashlib.sha256(body.encode()).hexdigest() + "\n")
PY
[ "$(status "$NBDSNAP" restore "$repo" B2 -o "$tmpdir/x.img")" = 1 ] ||
    fail "old manifest version: restore should exit 1"
grep -q 'points/B2/manifest has format version 1; this nbdsnap reads version 2' "$tmpdir/err" ||
    fail "old manifest version: not named as a version mismatch"
[ -e "$tmpdir/x.img" ] && fail "restore of an old format version created its output"

# The pristine copy is still good (the tool never writes when verifying).
before=$(dirsum "$tmpdir/pristine")
"$NBDSNAP" verify "$tmpdir/pristine" >/dev/null || fail "the pristine copy does not verify"
same_dir "$before" "$tmpdir/pristine"
"$NBDSNAP" restore "$tmpdir/pristine" B3 -o "$tmpdir/r3.img" --no-progress >/dev/null
cmp "$tmpdir/r3.img" "$tmpdir/exp-B3.img" || fail "B3 restored wrong"

echo "$testname: OK"
