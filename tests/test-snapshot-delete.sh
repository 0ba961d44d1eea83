#!/usr/bin/env bash
# Snapshot filter, delete: deleting a snapshot merges its layer into its
# children so that every other snapshot and the live disk read exactly the
# same bytes, immediately (during the background merge) and afterwards,
# across a clean restart and across kill -9 during the merge.  Covers a
# middle snapshot of a chain, the oldest snapshot, a snapshot with two
# children, the parent of the live layer while a client keeps writing, and
# views of the snapshot and of its descendants held open across the delete
# (they keep reading the same bytes; new views of it fail at once).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version

size=$((32 * 1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 4
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d"

# Write a different pattern over overlapping ranges before each create:
# base <- a <- b <- c <- live.  Each layer holds a few MB so merges take
# some time.
i=0
for n in a b c; do
    i=$((i + 1))
    mkdata "$tmpdir/p$n" $((6 * 1024 * 1024)) $((40 + i))
    nbd_pwrite srv "" $((i * 3 * 1024 * 1024 + i * 1000)) "$tmpdir/p$n"
    nbd_op srv "" "h.zero(100000, $((i * 5 * 1024 * 1024 + 7)))"
    snap_ok srv @snapshot:create/$n >/dev/null
done
nbd_pwrite srv "" 12345 "$tmpdir/pa"

save ()   # save: every view and the live disk
{
    local n
    for n in $(snap_names srv); do dump srv "@snapshot/$n" "$tmpdir/v-$n"; done
    dump srv "" "$tmpdir/v-live"
}
same ()   # same NAME...: these views and the live disk are unchanged
{
    local n
    for n in "$@"; do same_content srv "@snapshot/$n" "$tmpdir/v-$n"; done
    same_content srv "" "$tmpdir/v-live"
}
save

# 1. Views open during a delete keep working: hold views of b and of c
#    (whose chain includes b) open across the delete of b and its merge.
cat > "$tmpdir/holder.py" <<'EOF'
import sys, os, time
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st
sock, tmp = sys.argv[1:3]
hb = st.connect(sock, "@snapshot/b")
hc = st.connect(sock, "@snapshot/c")
print("open", flush=True)
while not os.path.exists(tmp + "/go"):
    time.sleep(0.05)
ok = True
for h, n in ((hb, "b"), (hc, "c")):
    if st.read_all(h) != open(tmp + "/v-" + n, "rb").read():
        print("view %s opened before the delete changed" % n, flush=True)
        ok = False
st.close(hb); st.close(hc)
print("views ok" if ok else "views changed", flush=True)
sys.exit(0 if ok else 1)
EOF
$PYTHON "$tmpdir/holder.py" "$(sock srv)" "$tmpdir" > "$tmpdir/holder.out" 2>&1 &
holder=$!
bg_register $holder
for j in $(seq 100); do grep -q open "$tmpdir/holder.out" && break; sleep 0.1; done
grep -q open "$tmpdir/holder.out" || fail "view holder did not start"

# 2. Delete the middle snapshot b: merged into c; a, c, live unchanged,
#    checked at once (merge may still be running) and after the merge.
#    New views of b fail at once.
out=$(snap_ok srv @snapshot:delete/b)
json_check "$out" 'j["snapshot"] == "b"' 'j["merged_into"] == ["c"]'
open_fails srv @snapshot/b
same a c
wait_merged srv
same a c
touch "$tmpdir/go"
wait $holder || { cat "$tmpdir/holder.out"; fail "views open across the delete changed"; }
out=$(snap_list srv)
json_check "$out" 'sorted(s["name"] for s in j["snapshots"]) == ["a", "c"]' \
    '[s for s in j["snapshots"] if s["name"] == "c"][0]["parent"] == "a"'
open_fails srv @snapshot/b
snap_err srv @snapshot:delete/b ENOENT >/dev/null

# 3. Clean restart: identical.
restart_server srv
same a c

# 4. Two children: revert to a, write, create d: a has children c and d.
#    Delete a (the oldest, parent null), kill -9 right after the command
#    returns (merge in the background), restart: c, d, live identical.
snap_ok srv @snapshot:revert/a >/dev/null
nbd_pwrite srv "" 999 "$tmpdir/pb"
snap_ok srv @snapshot:create/d >/dev/null
nbd_pwrite srv "" 5000000 "$tmpdir/pc"
nbd_op srv "" "h.flush()"      # (unflushed writes may be lost by kill -9)
save
out=$(snap_ok srv @snapshot:delete/a)
json_check "$out" 'j["snapshot"] == "a"' 'sorted(j["merged_into"]) == ["c", "d"]'
restart_server srv kill9
same c d
wait_merged srv
same c d
json_check "$(snap_list srv)" 'sorted(s["name"] for s in j["snapshots"]) == ["c", "d"]' \
    'all(s["parent"] is None for s in j["snapshots"])' 'j["live"]["parent"] == "d"'

# 5. Delete the parent of the live layer while a client keeps writing to
#    the live disk: the writer's own model of the disk must match at the end.
dump srv "" "$tmpdir/start"
$PYTHON - "$(sock srv)" "$tmpdir/start" "$tmpdir/writer.done" > "$tmpdir/writer.out" 2>&1 <<'EOF' &
import sys, os, random, time
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st
sock, start, done = sys.argv[1:4]
model = bytearray(open(start, "rb").read())
size = len(model)
h = st.connect(sock)
r = random.Random(5)
print("writing", flush=True)
n = 0
while not os.path.exists(done) or n < 200:
    ln = r.choice([1, 100, 4096, 65536, 65536 * 3 + 17])
    off = r.randrange(0, size - ln)
    data = r.randbytes(ln)
    h.pwrite(data, off)
    model[off:off + ln] = data
    n += 1
    if n % 50 == 0:
        h.flush()
got = st.read_all(h)
st.close(h)
bad = [i for i in range(0, size, 65536) if got[i:i+65536] != model[i:i+65536]]
print("writes=%d bad_blocks=%s" % (n, bad[:20]), flush=True)
sys.exit(1 if bad else 0)
EOF
writer=$!
bg_register $writer
for j in $(seq 100); do grep -q writing "$tmpdir/writer.out" && break; sleep 0.1; done
sleep 0.5
out=$(snap_ok srv @snapshot:delete/d)
json_check "$out" 'j["snapshot"] == "d"' 'j["merged_into"] == [None]'
wait_merged srv
touch "$tmpdir/writer.done"
st=0; wait $writer || st=$?
cat "$tmpdir/writer.out"
[ $st -eq 0 ] || fail "live disk differs from the writer's model after deleting its parent"
json_check "$(snap_list srv)" '[s["name"] for s in j["snapshots"]] == ["c"]' \
    'j["live"]["parent"] is None'
dump srv "" "$tmpdir/v-live"
same c
restart_server srv
same c
stop_server srv
