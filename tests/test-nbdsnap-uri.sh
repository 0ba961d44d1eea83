#!/usr/bin/env bash
# nbdsnap takes the user's URI as libnbd does and reaches the other
# exports of the same server (commands, frozen views) by changing only
# the export name, in libnbd's option negotiation: a TLS-PSK URI (user
# name in the authority, tls-psk-file= in the query) works for
# management, backup and restore; an export name in the URI is replaced;
# a server that requires TLS, reached without it, is "cannot connect"
# (exit 2, with a hint), an unknown view of a reachable server "refused"
# (exit 1).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built CBT_FILTER FREEZE_FILTER NBDSNAP
nbdkit --dump-config | grep -qx 'tls=yes' || skip "nbdkit has no TLS"
$PYTHON -c 'import nbd, sys; sys.exit(not nbd.NBD().supports_tls())' ||
    skip "libnbd has no TLS"
N=$NBDSNAP
K=65536

# run CODE CMD...: CMD must exit with CODE; stdout in $tmpdir/out, stderr
# in $tmpdir/err.
run ()
{
    local code=$1 st=0; shift
    "$@" > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
    sed 's/^/    /' "$tmpdir/err"
    if [ "$st" -ne "$code" ]; then
        cat "$tmpdir/out" "$tmpdir/err" >&2
        fail "expected exit $code, got $st: $*"
    fi
}
out_has () { grep -Eq -- "$1" "$tmpdir/out" || { cat "$tmpdir/out" >&2; fail "stdout lacks /$1/"; }; }
err_has () { grep -Eiq -- "$1" "$tmpdir/err" || { cat "$tmpdir/err" >&2; fail "stderr lacks /$1/"; }; }

# A pre-shared key for user alice (hex, as nbdkit --tls-psk reads it).
psk=$tmpdir/keys.psk
printf 'alice:%s\n' "$($PYTHON -c 'import os; print(os.urandom(32).hex())')" > "$psk"
chmod 600 "$psk"

start_server srv --tls=require --tls-psk="$psk" \
    --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" memory 4M \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt"
sock=$tmpdir/srv.sock
U="nbds+unix://alice@/?socket=$sock&tls-psk-file=$psk"

echo "== management over TLS-PSK"
run 0 "$N" checkpoint create "$U" c1
out_has "checkpoint 'c1' created"
run 0 "$N" checkpoint list "$U"
out_has '^c1 '
# An export name in the URI is replaced by the command's.
run 0 "$N" --json checkpoint list "nbds+unix://alice@/some-export?socket=$sock&tls-psk-file=$psk"
json_check "$(cat "$tmpdir/out")" '[c["name"] for c in j["checkpoints"]] == ["c1"]'
run 1 "$N" checkpoint diff "$U" nope
err_has "refused export '@cbt/nope'"

echo "== a server that requires TLS, reached without it"
run 2 "$N" checkpoint list "nbd+unix:///?socket=$sock"
err_has 'cannot connect.*TLS'
run 2 "$N" backup "nbd+unix:///?socket=$sock" "$tmpdir/repo" --full
err_has 'cannot connect.*TLS'
[ ! -e "$tmpdir/repo" ] || fail "a backup that could not connect created the repository"

echo "== backup and restore over TLS-PSK"
mkdata "$tmpdir/d" $((4 * K)) 1
nbd_op "$U" "" "
h.pwrite(open('$tmpdir/d', 'rb').read(), 5 * $K)
h.flush()"
run 0 "$N" backup "$U" "$tmpdir/repo" --full --name B1 --no-progress
out_has "backup 'B1' \(full\)"
dump "$U" "" "$tmpdir/exp-B1.img"
nbd_op "$U" "" "h.pwrite(b'x' * $K, 0); h.flush()"
run 0 "$N" backup "$U" "$tmpdir/repo" --name B2 --no-progress
out_has "backup 'B2' \(incremental since B1\)"
# Restore B1 onto the live disk, through the same kind of URI.
run 0 "$N" restore "$tmpdir/repo" B1 -o "$U" --no-progress
dump "$U" "" "$tmpdir/now.img"
cmp "$tmpdir/now.img" "$tmpdir/exp-B1.img" || fail "B1 restored over TLS is wrong"
run 0 "$N" --json freeze list "$U"
json_check "$(cat "$tmpdir/out")" 'j["points"] == []'

echo "$testname: OK"
