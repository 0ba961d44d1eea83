#!/usr/bin/env bash
# cbt filter, bad parameters: nbdkit refuses to start, with a message
# naming the problem, and creates no cbt-dir: cbt-granularity not a power
# of two from 4K to 16M (3000, 1K, 1G, 32M, abc, 0), cbt-sync other than
# strict/flush, cbt-commands not a known policy, cbt-reset-on-shrink not a
# boolean, an unknown cbt-* key, no cbt-dir; the limits 4K and 16M work.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

d=$tmpdir/cbt
n=0
bad ()
{
    local re=$1; shift
    n=$((n + 1))
    expect_start_fails "$tmpdir/bad-$n.log" "$re" --filter="$C" memory 1M "$@"
    [ ! -e "$d" ] || fail "cbt-dir was created although nbdkit refused: $*"
}

for g in 3000 1K 2K 1G 32M abc 0 -4096 65537; do
    bad 'granularity|size|parse' cbt-dir="$d" cbt-granularity=$g
done
bad 'cbt-sync' cbt-dir="$d" cbt-sync=bogus
bad 'cbt-sync' cbt-dir="$d" cbt-sync=
bad 'cbt-sync' cbt-dir="$d" cbt-sync=STRICT
bad 'cbt-commands' cbt-dir="$d" cbt-commands=everyone
bad 'cbt-commands' cbt-dir="$d" cbt-commands=
bad 'boolean|cbt-reset-on-shrink|parse' cbt-dir="$d" cbt-reset-on-shrink=maybe
bad "unknown.*cbt-foo" cbt-dir="$d" cbt-foo=1
bad "unknown.*cbt-dirr" cbt-dirr="$d"
bad 'cbt-dir' cbt-granularity=64K
bad 'cbt-dir'

# The limits are accepted.
ok ()
{
    json_check "$(cbt_list "$uri")" "j['granularity'] == $CBT_G"
}
CBT_G=4096; export CBT_G
captive ok --filter="$C" memory 1M cbt-dir="$tmpdir/g4k" cbt-granularity=4K
CBT_G=16777216
captive ok --filter="$C" memory 64M cbt-dir="$tmpdir/g16m" cbt-granularity=16M
