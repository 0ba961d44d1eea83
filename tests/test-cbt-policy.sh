#!/usr/bin/env bash
# cbt filter, command policy and read-only servers: over plain TCP
# (127.0.0.1) create and delete fail with EPERM by default (and with
# cbt-commands=unix, tls, none) and change nothing, while list, views and
# the disk work; cbt-commands=any allows them; over a Unix socket they
# work by default and fail with cbt-commands=none.  With nbdkit -r they
# fail with EROFS whatever the policy.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

img=$tmpdir/disk.img
truncate -s 1M "$img"
d=$tmpdir/cbt
args=(--filter="$C" file "$img" cbt-dir="$d")

start_server srv "${args[@]}"
cbt_ok srv @cbt:create/a >/dev/null
nbd_op srv "" "h.pwrite(b'w', 70000)"
stop_server srv

# refused TARGET ERRNO
refused ()
{
    local before map
    before=$(cbt_list "$1")
    map=$(changed_blocks "$1" @cbt/a 65536)
    cbt_err "$1" @cbt:create/b "$2" >/dev/null
    cbt_err "$1" @cbt:delete/a "$2" >/dev/null
    [ "$(cbt_list "$1")" = "$before" ] || fail "a refused command changed the list"
    same_text "$map" "$(changed_blocks "$1" @cbt/a 65536)" "@cbt/a"
}
# allowed TARGET: create b, write, check, delete b.
allowed ()
{
    cbt_ok "$1" @cbt:create/b >/dev/null
    nbd_op "$1" "" "h.pwrite(b'w', 300000)"
    same_text "4" "$(changed_blocks "$1" @cbt/b 65536)" "@cbt/b"
    cbt_ok "$1" @cbt:delete/b >/dev/null
    changed_blocks "$1" @cbt/a 65536 | grep -qw 4 || fail "@cbt/a lacks block 4"
}

for p in "" unix tls none; do
    start_server_tcp tcp "${args[@]}" ${p:+cbt-commands=$p}
    refused tcp EPERM
    nbd_op tcp "" "h.pwrite(h.pread(10, 70000), 70000)"
    stop_server tcp
done
start_server_tcp tcp "${args[@]}" cbt-commands=any
allowed tcp
stop_server tcp

start_server srv "${args[@]}"
allowed srv
stop_server srv
start_server srv "${args[@]}" cbt-commands=none
refused srv EPERM
stop_server srv

for p in "" any; do
    start_server srv -r "${args[@]}" ${p:+cbt-commands=$p}
    refused srv EROFS
    nbd_op srv "" 'assert h.is_read_only()'
    stop_server srv
done
