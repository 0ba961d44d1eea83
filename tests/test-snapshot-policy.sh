#!/usr/bin/env bash
# Snapshot filter, command policy (snapshot-commands=): by default mutating
# commands (create/revert/delete) are allowed over a Unix socket or TLS and
# refused with EPERM over plain TCP; "any" allows TCP; "none" refuses even
# Unix; "unix" refuses TLS; "tls" refuses Unix.  list and views are always
# allowed, and a refused command changes nothing.  On a read-only server
# (nbdkit -r) mutating commands fail with EROFS whatever the policy.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires nbdcopy --version

size=$((1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 10
d=$tmpdir/snap
args=(--filter="$F" file "$base" snapshot-dir="$d")

# Prepare: snapshot a, then a write in the live layer.
start_server srv "${args[@]}"
snap_ok srv @snapshot:create/a >/dev/null
nbd_op srv "" "h.pwrite(b'live' * 1000, 5000)"
dump srv "" "$tmpdir/live"
dump srv @snapshot/a "$tmpdir/a"
stop_server srv

# refused TARGET ERRNO: every mutating command fails with ERRNO, list and
# the view work, and nothing changed.
refused ()
{
    local t=$1 e=$2
    snap_err "$t" @snapshot:create/b "$e" >/dev/null
    snap_err "$t" @snapshot:revert/a "$e" >/dev/null
    snap_err "$t" @snapshot:revert/a/force "$e" >/dev/null
    snap_err "$t" @snapshot:delete/a "$e" >/dev/null
    json_check "$(snap_list "$t")" '[s["name"] for s in j["snapshots"]] == ["a"]' \
        'j["live"]["parent"] == "a"'
    same_content "$t" @snapshot/a "$tmpdir/a"
    same_content "$t" "" "$tmpdir/live"
}

# allowed TARGET: create, revert, delete all work (and are undone).
allowed ()
{
    local t=$1
    snap_ok "$t" @snapshot:create/b >/dev/null
    snap_ok "$t" @snapshot:revert/b >/dev/null
    snap_ok "$t" @snapshot:delete/b >/dev/null
    wait_merged "$t"
    json_check "$(snap_list "$t")" '[s["name"] for s in j["snapshots"]] == ["a"]'
    same_content "$t" "" "$tmpdir/live"
}

# 1. Default policy over plain TCP on 127.0.0.1: EPERM; data path works.
start_server_tcp tcp "${args[@]}"
refused tcp EPERM
nbd_op tcp "" "h.pwrite(h.pread(100, 0), 0)"
stop_server tcp

# 2. snapshot-commands=any over TCP: allowed.
start_server_tcp tcp "${args[@]}" snapshot-commands=any
allowed tcp
stop_server tcp

# 3. snapshot-commands=unix / tls over TCP: EPERM.
for p in unix tls; do
    start_server_tcp tcp "${args[@]}" snapshot-commands=$p
    refused tcp EPERM
    stop_server tcp
done

# 4. Over a Unix socket: default, unix, unix,tls, tls,unix, any allowed;
#    none and tls refused.
for p in "" unix unix,tls tls,unix any; do
    start_server srv "${args[@]}" ${p:+snapshot-commands=$p}
    allowed srv
    stop_server srv
done
for p in none tls; do
    start_server srv "${args[@]}" snapshot-commands=$p
    refused srv EPERM
    stop_server srv
done

# 5. Read-only server: EROFS, whatever the policy.
for p in "" any; do
    start_server srv -r "${args[@]}" ${p:+snapshot-commands=$p}
    refused srv EROFS
    nbd_op srv "" 'assert h.is_read_only()'
    stop_server srv
done

# 6. TLS (PSK) over TCP: allowed by default and by "tls"; refused by "unix".
if nbdkit --dump-config | grep -q '^tls=yes'; then
    psk=$tmpdir/keys.psk
    echo "alice:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$psk"
    for p in "" tls unix; do
        start_server_tcp tls --tls=require --tls-psk="$psk" "${args[@]}" \
            ${p:+snapshot-commands=$p}
        t="nbds://alice@127.0.0.1:$(server_port tls)/?tls-psk-file=$psk"
        if [ "$p" = unix ]; then refused "$t" EPERM; else allowed "$t"; fi
        stop_server tls
    done
else
    echo "$testname: nbdkit without TLS: TLS part skipped"
fi
