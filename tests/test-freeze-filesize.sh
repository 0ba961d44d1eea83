#!/usr/bin/env bash
# freeze filter on a file system whose largest file is smaller than the
# disk (simulated with RLIMIT_FSIZE on nbdkit; on ext4 a 16 TiB disk's
# last block does not fit in a file): a write anywhere on the disk,
# up to its last byte, keeps an open point good (its scratch goes into
# segments that fit), and the point's view is the disk as it was.  A
# limit below one block fails @freeze:begin with EFBIG and says why.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER
requires nbdcopy --version

frz ()
{
    snapcmd "$1" "$2" || fail "command $2: open failed"
}

fsize_limit_nbdkit
export NBDKIT_FSIZE_KB=1024

# 4 MiB + 4 KiB (the last block short), 64 KiB blocks, scratch files of
# at most 1 MiB: five segments.
size=$((4 * 1024 * 1024 + 4096))
mkdata "$tmpdir/initial" $size 7
mkdata "$tmpdir/new" $size 8
mkdir "$tmpdir/fd"
start_server srv --filter="$Z" memory $size freeze-dir="$tmpdir/fd"
nbd_pwrite srv "" 0 "$tmpdir/initial"
json_check "$(frz srv @freeze:begin/B1)" 'j["ok"] is True'
nbd_pwrite srv "" 0 "$tmpdir/new"
json_check "$(frz srv @freeze:list)" 'j["ok"] is True' \
    'j["points"][0]["aborted"] is False' \
    "j['points'][0]['scratch_bytes'] == $size"
same_content srv @freeze/B1 "$tmpdir/initial"
same_content srv "" "$tmpdir/new"
json_check "$(frz srv @freeze:end/B1)" 'j["ok"] is True'
stop_server srv

# A limit below one block: the point cannot be made, and says why.
export NBDKIT_FSIZE_KB=32
start_server small --filter="$Z" memory $size freeze-dir="$tmpdir/fd"
json_check "$(frz small @freeze:begin/B2)" 'j["ok"] is False' \
    'j["errno"] == "EFBIG"' '"ulimit -f" in j["error"]'
nbd_op small "" "h.pwrite(b'x' * 65536, $size - 65536)"
stop_server small
