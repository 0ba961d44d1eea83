#!/usr/bin/env bash
# Snapshot filter, bad parameters: nbdkit refuses to start (non-zero exit,
# before serving) with a message naming the problem, and changes nothing:
# an existing snapshot-dir stays byte-identical, a missing one is not
# created.  Cases: unknown snapshot-* key, bad snapshot-block-size (3000,
# 1K, 2K, 32M, 1G, 0, abc, empty), missing snapshot-dir, bad
# snapshot-commands, bad snapshot-revert-on-close name (a name that is
# valid but does not exist yet is accepted: see test-snapshot-revert-on-close).  The boundary
# block sizes 4K and 16M are accepted.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((32 * 1024 * 1024))
d=$tmpdir/snap
plugin=(memory $size)

# An existing directory with a snapshot in it.
start_server srv --filter="$F" "${plugin[@]}" snapshot-dir="$d"
nbd_op srv "" "h.pwrite(b'x' * 1000, 0)"
snap_ok srv @snapshot:create/a >/dev/null
stop_server srv
sum=$(dirsum "$d")

n=0
# bad REGEX PARAMS...: refused on the existing dir (unchanged) and on a new
# dir (not created), with a message matching REGEX.
bad ()
{
    local re=$1; shift
    n=$((n + 1))
    expect_start_fails "$tmpdir/bad$n.out" "$re" \
        --filter="$F" "${plugin[@]}" snapshot-dir="$d" "$@"
    same_dir "$sum" "$d"
    expect_start_fails "$tmpdir/bad$n-new.out" "$re" \
        --filter="$F" "${plugin[@]}" snapshot-dir="$tmpdir/new$n" "$@"
    [ ! -e "$tmpdir/new$n" ] || fail "snapshot-dir created although nbdkit refused to start: $*"
    echo "refused as expected: $* ($(grep -Ei -m1 -- "$re" "$tmpdir/bad$n.out"))"
}

bad 'snapshot-bogus' snapshot-bogus=1
bad 'snapshot-blocksize' snapshot-blocksize=4K
for bs in 3000 1K 2K 32M 1G 0 abc 64Kx -4096 ""; do
    bad 'block.?size' snapshot-block-size="$bs"
done
bad 'commands' snapshot-commands=bogus
bad 'commands' snapshot-commands=
bad 'commands' snapshot-commands=unix,bogus
bad 'commands' snapshot-commands=UNIX
bad 'revert-on-close|a\.\.b|name' snapshot-revert-on-close=a..b
bad 'revert-on-close|name' snapshot-revert-on-close=
bad 'revert-on-close|name' snapshot-revert-on-close=a/b

# Missing snapshot-dir.
expect_start_fails "$tmpdir/nodir.out" 'snapshot-dir' --filter="$F" "${plugin[@]}"
[ -z "$(ls -A "$tmpdir" | grep -v -e '\.log$' -e '\.out$' -e '^snap$' -e '\.pid$' -e '\.sock$' -e '\.bgpid$')" ] ||
    fail "files appeared in $tmpdir: $(ls -A "$tmpdir")"

# Exit status 1 exactly, as documented.
st=0
nbdkit -U - --filter="$F" "${plugin[@]}" snapshot-dir="$d" snapshot-block-size=3000 \
    --run 'exit 0' > /dev/null 2>&1 || st=$?
[ $st -eq 1 ] || fail "exit status $st for a bad parameter, expected 1"

# Boundaries that are valid: 4K and 16M (on new dirs), and commands values.
for bs in 4K 4096 16M; do
    nbdkit -U - --filter="$F" "${plugin[@]}" snapshot-dir="$tmpdir/ok-$bs" \
        snapshot-block-size=$bs --run 'true' ||
        fail "snapshot-block-size=$bs was refused"
done
for c in none unix tls unix,tls tls,unix any; do
    nbdkit -U - --filter="$F" "${plugin[@]}" snapshot-dir="$d" \
        snapshot-commands=$c --run 'true' ||
        fail "snapshot-commands=$c was refused"
done
