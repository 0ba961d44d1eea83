#!/usr/bin/env bash
# Security over the network: the full stack (freeze, cbt, snapshot) served
# by nbdkit in one network namespace, driven from a second one over TCP
# (addresses inside the namespaces only), as from another host.
#
#  1. --tls=require with X.509 certificates (a CA, a server and a client
#     certificate made with certtool; --tls-verify-peer): backup (full and
#     incremental), restore, snapshot and checkpoint commands work with
#     the client's certificates; a client without TLS, one that does not
#     trust the CA, and one without a client certificate get nothing.
#  2. --tls=require with a pre-shared key (psktool): the same with the
#     key; no key or a wrong key gets nothing.
#  3. --tls=on (TLS optional) with the default command policy: a plain-TCP
#     client lists and reads views, and every mutating command (snapshot,
#     checkpoint and freeze verbs, and so a backup) is refused with EPERM;
#     the same commands over TLS work.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/netns-functions.sh"

: "${CBT_FILTER:=$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}"
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
for f in "$CBT_FILTER" "$FREEZE_FILTER" "$NBDSNAP"; do
    [ -f "$f" ] || { echo "$testname: ERROR: not built: $f" >&2; exit 99; }
done
nbdkit --dump-config | grep -qx 'tls=yes' || skip "nbdkit has no TLS"
requires certtool --version
requires psktool --version
netns_setup
N=$NBDSNAP
K=65536

# run CODE CMD...: CMD (run in the client namespace) must exit with CODE;
# stdout in $tmpdir/out, stderr in $tmpdir/err.
run ()
{
    local code=$1 st=0; shift
    in_cli "$@" > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
    sed 's/^/    /' "$tmpdir/err"
    if [ "$st" -ne "$code" ]; then
        cat "$tmpdir/out" "$tmpdir/err" >&2
        fail "expected exit $code, got $st: $*"
    fi
}
out_has () { grep -Eq -- "$1" "$tmpdir/out" || { cat "$tmpdir/out" >&2; fail "stdout lacks /$1/"; }; }
err_has () { grep -Eiq -- "$1" "$tmpdir/err" || { cat "$tmpdir/err" >&2; fail "stderr lacks /$1/"; }; }

# ---------------------------------------------------------------- credentials
pki=$tmpdir/pki
mkdir -p "$pki/server" "$pki/client" "$pki/noclient" "$pki/otherca"
certtool --generate-privkey --key-type=ecdsa --outfile "$pki/ca-key.pem" 2>/dev/null
cat > "$pki/ca.info" <<EOF
cn = nbdsnap test CA
ca
cert_signing_key
expiration_days = 2
EOF
certtool --generate-self-signed --load-privkey "$pki/ca-key.pem" \
    --template "$pki/ca.info" --outfile "$pki/ca-cert.pem" 2>/dev/null
cert ()     # cert DIR NAME TEMPLATE-LINES...
{
    local dir=$1 name=$2; shift 2
    certtool --generate-privkey --key-type=ecdsa --outfile "$dir/$name-key.pem" 2>/dev/null
    printf '%s\n' "$@" "expiration_days = 2" > "$dir/$name.info"
    certtool --generate-certificate --load-ca-certificate "$pki/ca-cert.pem" \
        --load-ca-privkey "$pki/ca-key.pem" --load-privkey "$dir/$name-key.pem" \
        --template "$dir/$name.info" --outfile "$dir/$name-cert.pem" 2>/dev/null
    chmod 600 "$dir/$name-key.pem"
}
cert "$pki/server" server "cn = $SRV_IP" "ip_address = $SRV_IP" \
    tls_www_server encryption_key signing_key
cp "$pki/ca-cert.pem" "$pki/server/"
cert "$pki/client" client "cn = alice" tls_www_client encryption_key signing_key
cp "$pki/ca-cert.pem" "$pki/client/"
# A client that trusts the CA but has no certificate of its own.
cp "$pki/ca-cert.pem" "$pki/noclient/"
# A client whose certificate comes from another CA.
certtool --generate-privkey --key-type=ecdsa --outfile "$pki/otherca/ca-key.pem" 2>/dev/null
certtool --generate-self-signed --load-privkey "$pki/otherca/ca-key.pem" \
    --template "$pki/ca.info" --outfile "$pki/otherca/ca-cert.pem" 2>/dev/null
( pki=$pki/otherca; cert "$pki" client "cn = mallory" tls_www_client encryption_key signing_key )

psk=$tmpdir/keys.psk
psktool -u alice -p "$psk" >/dev/null
chmod 600 "$psk"
badpsk=$tmpdir/bad.psk
psktool -u alice -p "$badpsk" >/dev/null

mkdata "$tmpdir/d1" $((8 * K)) 1
mkdata "$tmpdir/d2" $((2 * K)) 2

# netwrite URI FILE OFFSET: write FILE at OFFSET of URI's export and
# flush, from the client namespace.
netwrite ()
{
    in_cli timeout 60 $PYTHON -c '
import sys, nbd
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(sys.argv[1])
h.pwrite(open(sys.argv[2], "rb").read(), int(sys.argv[3]))
h.flush()
h.shutdown()' "$@"
}

# stack NAME TLS-ARGS...: the full stack in the server namespace, over a
# file (state in $tmpdir/NAME/).
stack ()
{
    local name=$1; shift
    rm -rf "$tmpdir/$name"
    mkdir -p "$tmpdir/$name"
    truncate -s 4M "$tmpdir/$name/disk.img"
    ns_server "$name" "$@" \
        --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" --filter="$SNAPSHOT_FILTER" \
        file "$tmpdir/$name/disk.img" snapshot-dir="$tmpdir/$name/snap" \
        cbt-dir="$tmpdir/$name/cbt" freeze-dir="$tmpdir/$name"
}

# the_story URI NAME: everything a backup operator does, over URI.
the_story ()
{
    local U=$1 name=$2 repo=$tmpdir/$2/repo
    netwrite "$U" "$tmpdir/d1" $((3 * K))
    run 0 "$N" snapshot create "$U" s1
    out_has "snapshot 's1' created"
    run 0 "$N" checkpoint create "$U" c1
    run 0 "$N" --json checkpoint list "$U"
    json_check "$(cat "$tmpdir/out")" '"c1" in [c["name"] for c in j["checkpoints"]]'
    run 0 "$N" backup "$U" "$repo" --full --name B1 --no-progress
    out_has "backup 'B1' \(full\)"
    run 0 "$N" --json snapshot list "$U"
    json_check "$(cat "$tmpdir/out")" '[x["name"] for x in j["snapshots"]] == ["s1"]'
    # (nbdcopy lets a URI name local files: tls-certificates=, tls-psk-file=)
    run 0 nbdcopy --no-extents "$U" "$tmpdir/$name/exp-B1.img"
    netwrite "$U" "$tmpdir/d2" $((20 * K))
    run 0 "$N" backup "$U" "$repo" --name B2 --no-progress
    out_has "backup 'B2' \(incremental since B1\)"
    run 0 nbdcopy --no-extents "$U" "$tmpdir/$name/exp-B2.img"
    run 0 "$N" verify "$repo"
    # Restore B1 onto the live disk over the network, compare.
    run 0 "$N" restore "$repo" B1 -o "$U" --no-progress
    run 0 nbdcopy --no-extents "$U" "$tmpdir/$name/now.img"
    cmp "$tmpdir/$name/now.img" "$tmpdir/$name/exp-B1.img" ||
        fail "$name: B1 restored over the network differs"
    # And B2 into a local file.
    run 0 "$N" restore "$repo" B2 -o "$tmpdir/$name/B2.img" --no-progress
    cmp "$tmpdir/$name/B2.img" "$tmpdir/$name/exp-B2.img" ||
        fail "$name: B2 restored differs"
    # Revert to s1 (taken before B1, nothing written in between).
    netwrite "$U" "$tmpdir/d2" 0
    run 0 "$N" snapshot revert "$U" s1 --force
    run 0 nbdcopy --no-extents "$U" "$tmpdir/$name/now.img"
    cmp "$tmpdir/$name/now.img" "$tmpdir/$name/exp-B1.img" ||
        fail "$name: revert over the network did not bring s1 back"
    run 0 "$N" snapshot delete "$U" s1
    run 0 "$N" checkpoint delete "$U" c1
}

echo "== X.509: --tls=require --tls-verify-peer"
stack x509 --tls=require --tls-certificates="$pki/server" --tls-verify-peer
UX="nbds://$SRV_IP:$NS_PORT/?tls-certificates=$pki/client"
the_story "$UX" x509
echo "   without TLS"
run 2 "$N" checkpoint list "nbd://$SRV_IP:$NS_PORT/"
err_has 'cannot connect.*TLS'
run 2 "$N" backup "nbd://$SRV_IP:$NS_PORT/" "$tmpdir/x509/repo2" --full
[ ! -e "$tmpdir/x509/repo2" ] || fail "a refused backup created its repository"
run 1 nbdcopy --no-extents "nbd://$SRV_IP:$NS_PORT/" "$tmpdir/x509/leak.img"
echo "   without a client certificate"
run 2 "$N" checkpoint list "nbds://$SRV_IP:$NS_PORT/?tls-certificates=$pki/noclient"
run 1 nbdcopy --no-extents "nbds://$SRV_IP:$NS_PORT/?tls-certificates=$pki/noclient" "$tmpdir/x509/leak.img"
echo "   with a certificate from another CA"
run 2 "$N" snapshot list "nbds://$SRV_IP:$NS_PORT/?tls-certificates=$pki/otherca"
run 1 nbdcopy --no-extents "nbds://$SRV_IP:$NS_PORT/?tls-certificates=$pki/otherca" "$tmpdir/x509/leak.img"
[ ! -s "$tmpdir/x509/leak.img" ] || fail "a client without credentials read data"
stop_server x509

echo "== PSK: --tls=require --tls-psk"
stack psk --tls=require --tls-psk="$psk"
UP="nbds://alice@$SRV_IP:$NS_PORT/?tls-psk-file=$psk"
the_story "$UP" psk
echo "   without TLS"
run 2 "$N" snapshot list "nbd://$SRV_IP:$NS_PORT/"
err_has 'cannot connect.*TLS'
run 1 nbdcopy --no-extents "nbd://$SRV_IP:$NS_PORT/" "$tmpdir/psk/leak.img"
echo "   with a wrong key"
run 2 "$N" snapshot list "nbds://alice@$SRV_IP:$NS_PORT/?tls-psk-file=$badpsk"
run 1 nbdcopy --no-extents "nbds://alice@$SRV_IP:$NS_PORT/?tls-psk-file=$badpsk" "$tmpdir/psk/leak.img"
[ ! -s "$tmpdir/psk/leak.img" ] || fail "a client without the key read data"
stop_server psk

echo "== --tls=on: plain TCP reads views, mutating commands refused"
stack opt --tls=on --tls-psk="$psk"
UT="nbds://alice@$SRV_IP:$NS_PORT/?tls-psk-file=$psk"
UN="nbd://$SRV_IP:$NS_PORT/"
netwrite "$UT" "$tmpdir/d1" 0
run 0 "$N" snapshot create "$UT" s1
run 0 "$N" checkpoint create "$UT" c1
run 0 "$N" backup "$UT" "$tmpdir/opt/repo" --full --name B1 --no-progress
# Plain TCP: lists and views work.
run 0 "$N" --json snapshot list "$UN"
json_check "$(cat "$tmpdir/out")" '[s["name"] for s in j["snapshots"]] == ["s1"]'
run 0 "$N" --json checkpoint list "$UN"
json_check "$(cat "$tmpdir/out")" '"c1" in [c["name"] for c in j["checkpoints"]]'
run 0 "$N" freeze list "$UN"
run 0 nbdcopy --no-extents "$UN@snapshot/s1" "$tmpdir/opt/s1.img"
cmp -n $((8 * K)) "$tmpdir/opt/s1.img" "$tmpdir/d1" || fail "view @snapshot/s1 over plain TCP is wrong"
run 0 nbdinfo --map "$UN@cbt/c1"
# ... every mutating command is refused, and changes nothing.
for cmd in "snapshot create $UN s2" "snapshot revert $UN s1" \
           "snapshot delete $UN s1" "checkpoint create $UN c2" \
           "checkpoint delete $UN c1" "freeze begin $UN f1"; do
    # shellcheck disable=SC2086
    run 1 "$N" $cmd
    err_has 'EPERM|not allowed|permission'
done
run 1 "$N" backup "$UN" "$tmpdir/opt/repo" --name B2 --no-progress
err_has 'EPERM|not allowed|permission'
run 0 "$N" --json list "$tmpdir/opt/repo"
json_check "$(cat "$tmpdir/out")" '[p["name"] for p in j["points"]] == ["B1"]'
run 0 "$N" --json snapshot list "$UT"
json_check "$(cat "$tmpdir/out")" '[s["name"] for s in j["snapshots"]] == ["s1"]'
run 0 "$N" --json checkpoint list "$UT"
json_check "$(cat "$tmpdir/out")" '"c1" in [c["name"] for c in j["checkpoints"]]' \
    '"c2" not in [c["name"] for c in j["checkpoints"]]'
run 0 "$N" --json freeze list "$UT"
json_check "$(cat "$tmpdir/out")" 'j["points"] == []'
# Over TLS the same commands work.
run 0 "$N" snapshot create "$UT" s2
run 0 "$N" backup "$UT" "$tmpdir/opt/repo" --name B2 --no-progress
stop_server opt

echo "$testname: OK"
