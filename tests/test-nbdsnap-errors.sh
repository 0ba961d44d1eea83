#!/usr/bin/env bash
# nbdsnap: every failure is a clear error with a trustworthy exit code
# (1 refused/damaged/failed, 2 usage or no connection) and leaves no
# partial state: the repository keeps exactly its points (no .tmp-* left),
# no frozen point stays held, no checkpoint made for a failed backup stays.
#   usage errors; no server; missing, foreign and damaged repositories;
#   unknown points; a missing link in a chain; a server without the freeze
#   filter; incremental without a usable checkpoint (unknown, or
#   inconsistent after kill -9 with cbt-sync=flush: "a full backup is
#   needed"); a name taken in the repository or on the server; a frozen
#   point aborted by the server; a backup interrupted by SIGTERM, by the
#   server stopping, and by kill -9 of the tool.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built CBT_FILTER FREEZE_FILTER NBDSNAP
requires nbdcopy --version
requires nbdkit --filter=delay null --dump-plugin

K=65536
N=$NBDSNAP
repo=$tmpdir/repo

# expect_exit CODE REGEX CMD...: CMD exits with CODE and its stderr
# matches the (grep -E -i) REGEX.
expect_exit ()
{
    local code=$1 re=$2 st=0; shift 2
    "$@" > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
    if [ "$st" -ne "$code" ]; then
        cat "$tmpdir/out" "$tmpdir/err" >&2
        fail "expected exit $code, got $st: $*"
    fi
    if [ -n "$re" ] && ! grep -Eiq -- "$re" "$tmpdir/err"; then
        cat "$tmpdir/err" >&2
        fail "the message does not match /$re/: $*"
    fi
    sed 's/^/    /' "$tmpdir/err"
}

# no_tmp DIR: no temporary point left in repository DIR.
no_tmp ()
{
    if ls -A "$1/points" 2>/dev/null | grep -q '^\.tmp'; then
        ls -la "$1/points" >&2
        fail "a temporary point was left in $1"
    fi
}

# nothing_held SERVER: no frozen point is held.
nothing_held ()
{
    local out
    out=$(snapcmd "$1" @freeze:list)
    json_check "$out" 'j["ok"] is True' 'j["points"] == []'
}

# checkpoints SERVER: the checkpoint names, space separated.
checkpoints ()
{
    json_get "$(snapcmd "$1" @cbt:list)" '" ".join(c["name"] for c in j["checkpoints"])'
}

# fill SERVER SEED: data in every other 64K block of the first 8M (many
# separate runs: a full backup makes one read per block).
fill ()
{
    nbd_op "$1" "" "
import random
r = random.Random($2)
for b in range(0, 128, 2):
    h.pwrite(r.randbytes($K), b * $K)
h.flush()"
}

# ------------------------------------------------------------ usage: 2
echo "== usage"
expect_exit 2 'usage|try' "$N"
expect_exit 2 'unknown command' "$N" frobnicate
expect_exit 2 'unknown option' "$N" --frob list "$repo"
expect_exit 2 'usage' "$N" backup
expect_exit 2 'full.*incremental' "$N" backup nbd+unix:///?socket=/x "$repo" --full --incremental
expect_exit 2 'invalid name' "$N" backup nbd+unix:///?socket=/x "$repo" --name 'a..b'
expect_exit 2 'not an NBD URI' "$N" backup /not/a/uri "$repo"
expect_exit 2 'usage' "$N" restore "$repo" B1
expect_exit 2 'connections' "$N" backup nbd+unix:///?socket=/x "$repo" --connections 0
expect_exit 2 'invalid' "$N" snapshot create nbd+unix:///?socket=/x 'bad/name'
expect_exit 2 'unknown action' "$N" checkpoint frob nbd+unix:///?socket=/x
[ ! -e "$repo" ] || fail "a usage error created the repository"

# ------------------------------------------------- no server at all: 2
echo "== no server"
expect_exit 2 'cannot connect' "$N" backup "nbd+unix:///?socket=$tmpdir/none.sock" "$repo" --full
[ ! -e "$repo" ] || fail "a backup that could not connect created the repository"
expect_exit 2 'cannot connect' "$N" snapshot list "nbd+unix:///?socket=$tmpdir/none.sock"

# ------------------------------------------------- missing / foreign repo
echo "== repositories"
for cmd in list verify; do
    expect_exit 1 'does not exist' "$N" $cmd "$tmpdir/nope"
done
expect_exit 1 'does not exist' "$N" restore "$tmpdir/nope" B1 -o "$tmpdir/x.img"
expect_exit 1 'does not exist' "$N" delete "$tmpdir/nope" B1
expect_exit 1 'does not exist' "$N" merge "$tmpdir/nope" B1
[ ! -e "$tmpdir/x.img" ] || fail "restore from a missing repository created its output"
mkdir "$tmpdir/foreign"
echo "my thesis" > "$tmpdir/foreign/thesis.txt"
fsum=$(dirsum "$tmpdir/foreign")
expect_exit 1 'not an nbdsnap repository' "$N" list "$tmpdir/foreign"
expect_exit 1 'not an nbdsnap repository' "$N" verify "$tmpdir/foreign"
expect_exit 1 'must be empty|not an nbdsnap repository|not empty' "$N" init "$tmpdir/foreign"
same_dir "$fsum" "$tmpdir/foreign"
# init on an existing (empty) repository refuses and changes nothing.
"$N" init "$tmpdir/twice" > /dev/null
expect_exit 1 'already a repository' "$N" init "$tmpdir/twice"
expect_exit 0 '' "$N" list "$tmpdir/twice"
rm -rf "$tmpdir/twice"

# ------------------------------------------- server with the full stack
# (a file disk: it keeps its content across server restarts)
truncate -s 16M "$tmpdir/disk.img"
start_srv ()
{
    start_server srv --filter=delay --filter="$FREEZE_FILTER" \
        --filter="$CBT_FILTER" file "$tmpdir/disk.img" freeze-dir="$tmpdir" \
        cbt-dir="$tmpdir/cbt" cbt-sync=flush delay-read=100ms
}
start_srv
U=$(uri srv)
fill srv 1
expect_exit 1 'not an nbdsnap repository' "$N" backup "$U" "$tmpdir/foreign" --full
same_dir "$fsum" "$tmpdir/foreign"
nothing_held srv
[ -z "$(checkpoints srv)" ] || fail "a refused backup made a checkpoint"

echo "== incremental into a missing repository"
expect_exit 1 'a full backup is needed' "$N" backup "$U" "$repo" --incremental
[ ! -e "$repo" ] || fail "the refused incremental created the repository"
nothing_held srv

"$N" backup "$U" "$repo" --full --name B1 --no-progress >/dev/null
dump srv "" "$tmpdir/exp-B1.img"
nbd_op srv "" "h.pwrite(b'2' * $K, 3 * $K); h.flush()"
"$N" backup "$U" "$repo" --name B2 --no-progress >/dev/null
dump srv "" "$tmpdir/exp-B2.img"
good=$(dirsum "$repo")

echo "== unknown points"
expect_exit 1 'B9' "$N" restore "$repo" B9 -o "$tmpdir/x.img"
expect_exit 1 'B9' "$N" verify "$repo" B9
expect_exit 1 'B9' "$N" delete "$repo" B9
expect_exit 1 'B9' "$N" merge "$repo" B9
expect_exit 1 'a full backup is needed' "$N" backup "$U" "$repo" --since B9
[ ! -e "$tmpdir/x.img" ] || fail "a failed restore created its output"
expect_exit 1 'already exists' "$N" backup "$U" "$repo" --name B2
expect_exit 1 'depend|child|parent' "$N" delete "$repo" B1
same_dir "$good" "$repo"
nothing_held srv
[ "$(checkpoints srv)" = "B1 B2" ] || fail "checkpoints changed: $(checkpoints srv)"

echo "== a checkpoint name taken on the server"
"$N" checkpoint create "$U" X1 >/dev/null
expect_exit 1 'refused to begin.*X1|X1.*exists' "$N" backup "$U" "$repo" --name X1
same_dir "$good" "$repo"
nothing_held srv
[ "$(checkpoints srv)" = "B1 B2 X1" ] ||
    fail "the backup deleted a checkpoint it did not make: $(checkpoints srv)"
# The same into an empty directory: it is left empty, not a repository.
mkdir "$tmpdir/empty"
expect_exit 1 'refused to begin.*X1|X1.*exists' "$N" backup "$U" "$tmpdir/empty" --name X1
[ -z "$(ls -A "$tmpdir/empty")" ] ||
    fail "a failed first backup left files in an empty directory: $(ls -A "$tmpdir/empty")"
"$N" checkpoint delete "$U" X1 >/dev/null

echo "== damaged repository file"
cp -a "$repo" "$tmpdir/r2"
sed -i 's/^block-size .*/block-size 4096/' "$tmpdir/r2/repository"
expect_exit 1 'repository' "$N" list "$tmpdir/r2"
expect_exit 1 'repository' "$N" backup "$U" "$tmpdir/r2"
nothing_held srv

echo "== a missing link in the chain"
rm -rf "$tmpdir/r2"; cp -a "$repo" "$tmpdir/r2"
rm -rf "$tmpdir/r2/points/B1"
expect_exit 1 'B1' "$N" restore "$tmpdir/r2" B2 -o "$tmpdir/x.img"
[ ! -e "$tmpdir/x.img" ] || fail "restore of a broken chain created its output"
expect_exit 1 'problem' "$N" verify "$tmpdir/r2"
grep -q 'B1' "$tmpdir/out" || fail "verify does not name the missing B1"
rm -rf "$tmpdir/r2"

# ------------------------------------------------ no freeze filter
echo "== server without the freeze filter"
start_server plain --filter="$CBT_FILTER" memory 16M cbt-dir="$tmpdir/cbt2"
expect_exit 1 'no freeze filter' "$N" backup "$(uri plain)" "$repo" --full --name P1
expect_exit 1 'no freeze filter' "$N" backup "$(uri plain)" "$tmpdir/new" --full
[ ! -e "$tmpdir/new" ] || fail "a backup refused by the server created the repository"
[ "$(checkpoints plain)" = "" ] || fail "a checkpoint was made on the plain server"
start_server bare memory 16M
expect_exit 1 'no freeze filter' "$N" backup "$(uri bare)" "$repo" --full --name P1
expect_exit 1 'snapshot filter|refused' "$N" snapshot list "$(uri bare)"
same_dir "$good" "$repo"

# ------------------------------------------------ freeze without cbt
echo "== incremental on a server without the cbt filter"
start_server fonly --filter="$FREEZE_FILTER" memory 16M freeze-dir="$tmpdir"
expect_exit 1 'a full backup is needed' "$N" backup "$(uri fonly)" "$repo" --incremental
nothing_held fonly
same_dir "$good" "$repo"

# ------------------------------------------------ interrupted by SIGTERM
echo "== backup interrupted by SIGTERM"
fill srv 2
nbd_op srv "" "h.pwrite(b'T' * $K, 201 * $K); h.flush()"
"$N" backup "$U" "$repo" --full --name T1 --connections 1 --no-progress \
    > "$tmpdir/t1.out" 2>&1 &
pid=$!
bg_register "$pid"
for ((i = 0; i < 200; i++)); do
    snapcmd srv @freeze:list | grep -q '"T1"' && break
    sleep 0.05
done
sleep 0.3
kill -TERM "$pid"
st=0; wait "$pid" || st=$?
cat "$tmpdir/t1.out"
[ "$st" -eq 1 ] || fail "interrupted backup: expected exit 1, got $st"
grep -qi 'interrupted' "$tmpdir/t1.out" || fail "no 'interrupted' message"
same_dir "$good" "$repo"
nothing_held srv
[ "$(checkpoints srv)" = "B1 B2" ] ||
    fail "the interrupted backup left its checkpoint: $(checkpoints srv)"
# The next incremental still has everything changed since B2.
dump srv "" "$tmpdir/exp-B3.img"
"$N" backup "$U" "$repo" --name B3 --no-progress >/dev/null
"$N" restore "$repo" B3 -o "$tmpdir/r3.img" --no-progress >/dev/null
cmp "$tmpdir/r3.img" "$tmpdir/exp-B3.img" || fail "B3 after an interrupted backup is wrong"
good=$(dirsum "$repo")

# ------------------------------------------------ the server stops
echo "== the server stops during a backup"
fill srv 3
dump srv "" "$tmpdir/exp-B4.img"
"$N" backup "$U" "$repo" --name S1 --connections 1 --no-progress \
    > "$tmpdir/s1.out" 2>&1 &
pid=$!
bg_register "$pid"
for ((i = 0; i < 200; i++)); do
    snapcmd srv @freeze:list | grep -q '"S1"' && break
    sleep 0.05
done
sleep 0.3
term_server srv
st=0; wait "$pid" || st=$?
cat "$tmpdir/s1.out"
[ "$st" -eq 1 ] || fail "backup with a vanished server: expected exit 1, got $st"
grep -q 'repository is unchanged' "$tmpdir/s1.out" || fail "no clear failure message"
grep -q 'nbdsnap checkpoint delete' "$tmpdir/s1.out" ||
    fail "the user is not told how to remove the checkpoint left on the server"
same_dir "$good" "$repo"
no_tmp "$repo"
start_srv
nothing_held srv
[ "$(checkpoints srv)" = "B1 B2 B3 S1" ] || fail "checkpoints: $(checkpoints srv)"
"$N" checkpoint delete "$U" S1 >/dev/null
# Nothing was written since the dump: B4 (since B3) is that disk.
"$N" backup "$U" "$repo" --name B4 --no-progress >/dev/null
"$N" restore "$repo" B4 -o "$tmpdir/r4.img" --no-progress >/dev/null
cmp "$tmpdir/r4.img" "$tmpdir/exp-B4.img" || fail "B4 after a failed backup is wrong"

# ----------------------------------- inconsistent checkpoint after kill -9
echo "== incremental after kill -9 with cbt-sync=flush"
nbd_op srv "" "h.pwrite(b'5' * $K, 7 * $K)"
kill9_server srv
start_srv
good=$(dirsum "$repo")
expect_exit 1 'not consistent.*a full backup is needed' "$N" backup "$U" "$repo" --incremental
expect_exit 1 'a full backup is needed' "$N" backup "$U" "$repo"
same_dir "$good" "$repo"
nothing_held srv
"$N" backup "$U" "$repo" --full --name B5 --no-progress >/dev/null ||
    fail "the full backup after the refused incremental failed"
dump srv "" "$tmpdir/exp-B5.img"
"$N" restore "$repo" B5 -o "$tmpdir/r5.img" --no-progress >/dev/null
cmp "$tmpdir/r5.img" "$tmpdir/exp-B5.img" || fail "B5 is wrong"

echo "== incremental when the server lost the checkpoint"
stop_server srv
rm -rf "$tmpdir/cbt"
start_srv
good=$(dirsum "$repo")
expect_exit 1 "no checkpoint 'B5'.*a full backup is needed" "$N" backup "$U" "$repo"
same_dir "$good" "$repo"
nothing_held srv
[ -z "$(checkpoints srv)" ] || fail "the refused incremental made a checkpoint"

# ----------------------------------- the frozen point is aborted
echo "== frozen point aborted by the server (freeze-max-size)"
stop_server srv
# One worker thread per connection: nbdkit 1.32 itself can abort
# (raw_send_socket: Assertion 'sock >= 0') when a client vanishes while
# several of its requests are being answered: one reply fails with EPIPE,
# the server closes the socket, another thread then sends on it.  The
# delay filter makes that likely here (every sleeping request wakes at
# once when the tool is killed below); what is tested is the tool and
# the filters, not that race.  See docs/nbdkit-1.32.md.
start_server small --threads=1 --filter=delay --filter="$FREEZE_FILTER" \
    --filter="$CBT_FILTER" memory 16M freeze-dir="$tmpdir" \
    cbt-dir="$tmpdir/cbt3" freeze-max-size=256K delay-read=200ms
fill small 4
"$N" backup "$(uri small)" "$tmpdir/repo3" --full --name A1 --connections 1 \
    --no-progress > "$tmpdir/a1.out" 2>&1 &
pid=$!
bg_register "$pid"
for ((i = 0; i < 200; i++)); do
    snapcmd small @freeze:list | grep -q '"A1"' && break
    sleep 0.05
done
nbd_op small "" "h.pwrite(b'w' * (4 << 20), 0); h.flush()"
st=0; wait "$pid" || st=$?
cat "$tmpdir/a1.out"
[ "$st" -eq 1 ] || fail "backup of an aborted frozen point: expected exit 1, got $st"
grep -q "aborted frozen point 'A1'.*freeze-max-size" "$tmpdir/a1.out" ||
    fail "the message does not say that the server aborted the frozen point"
nothing_held small
[ -z "$(checkpoints small)" ] || fail "the failed backup left its checkpoint"
# The first backup had created the repository (and its directory): both
# are gone again.
[ -e "$tmpdir/repo3" ] &&
    fail "the failed first backup left its repository: $(ls -AR "$tmpdir/repo3")"
grep -q "removed the repository .*repo3 this backup had created" "$tmpdir/a1.out" ||
    fail "the tool does not say that it removed the repository it created"

# ----------------------------------- kill -9 of the tool
echo "== kill -9 of the tool"
"$N" backup "$(uri small)" "$tmpdir/repo3" --full --name K0 --no-progress >/dev/null
good=$(dirsum "$tmpdir/repo3")
"$N" backup "$(uri small)" "$tmpdir/repo3" --full --name K1 --connections 1 \
    --no-progress > "$tmpdir/k1.out" 2>&1 &
pid=$!
for ((i = 0; i < 200; i++)); do
    snapcmd small @freeze:list | grep -q '"K1"' && break
    sleep 0.05
done
sleep 0.2
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
# The point stays held (nothing can catch kill -9) until released by hand;
# the repository has only a temporary directory, which verify removes.
snapcmd small @freeze:list | grep -q '"K1"' || fail "expected K1 still held after kill -9"
expect_exit 0 '' "$N" verify "$tmpdir/repo3"
same_dir "$good" "$tmpdir/repo3"
"$N" freeze end "$(uri small)" K1 >/dev/null
"$N" checkpoint delete "$(uri small)" K1 >/dev/null
nothing_held small
"$N" backup "$(uri small)" "$tmpdir/repo3" --name K2 --no-progress >/dev/null ||
    fail "incremental after a killed backup failed"
dump small "" "$tmpdir/exp-K2.img"
"$N" restore "$tmpdir/repo3" K2 -o "$tmpdir/rk2.img" --no-progress >/dev/null
cmp "$tmpdir/rk2.img" "$tmpdir/exp-K2.img" || fail "K2 restored wrong"

echo "$testname: OK"
