#!/usr/bin/env bash
# The bash completion of nbdsnap (tools/nbdsnap.bash, installed by `make
# install`): sourced into bash, it completes subcommands, verbs, options,
# directories for a repository, point names read from a repository, and
# files after -o.  Each case sets COMP_WORDS/COMP_CWORD as bash would and
# compares COMPREPLY with the exact list expected.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"

# A repository with two points, for point-name completion.
cd "$tmpdir"
mkdir -p bin sub/dir1 sub/dir2
ln -s "$NBDSNAP" bin/nbdsnap
export PATH=$tmpdir/bin:$PATH
truncate -s 1M d.img
nbdkit -U - --filter="${FREEZE_FILTER:-$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}" \
       --filter="${CBT_FILTER:-$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}" \
       file d.img cbt-dir="$tmpdir/cbt" freeze-dir="$tmpdir" --run '
    nbdsnap backup "$uri" repo --full --name monday --no-progress >/dev/null &&
    nbdsnap backup "$uri" repo --incremental --name tuesday --no-progress >/dev/null
' || fail "could not make a repository"
touch out.img other.txt

. "$top_srcdir/tools/nbdsnap.bash"
complete -p nbdsnap | grep -q -- '-F _nbdsnap nbdsnap$' ||
    fail "the completion is not registered for nbdsnap"

bad=0
# check "WORDS (the last one is the word being completed)" "EXPECTED..."
check ()
{
    local want=$2 got
    read -r -a COMP_WORDS <<< "$1"
    [[ $1 == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    _nbdsnap
    got=$(printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ')
    got=${got% }
    if [ "$got" = "$want" ]; then
        echo "ok   '$1' -> $got"
    else
        echo "FAIL '$1': expected '$want', got '$got'"; bad=1
    fi
}

check "nbdsnap " "backup checkpoint delete freeze init list merge restore snapshot verify"
check "nbdsnap ba" "backup"
check "nbdsnap --js" "--json"
check "nbdsnap --json re" "restore"
check "nbdsnap snapshot " "create delete diff list revert"
check "nbdsnap snapshot cr" "create"
check "nbdsnap checkpoint " "create delete diff list"
check "nbdsnap freeze " "begin end list"
check "nbdsnap snapshot create nbd+u" "nbd+unix:///?socket="
check "nbdsnap backup --" "--block-size --compress --connections --full --incremental --json --name --no-progress --progress --since"
check "nbdsnap backup --inc" "--incremental"
check "nbdsnap backup nbd://h sub/" "sub/dir1 sub/dir2"
check "nbdsnap restore re" "repo"
check "nbdsnap restore repo " "monday tuesday"
check "nbdsnap restore repo t" "tuesday"
check "nbdsnap verify repo m" "monday"
check "nbdsnap backup nbd://h repo --incremental --since " "monday tuesday"
check "nbdsnap restore repo monday -o ou" "out.img"
check "nbdsnap restore repo monday --" "--connections --json --no-progress --output --progress"
check "nbdsnap list " "bin cbt repo sub"
[ "$bad" = 0 ] || fail "completions differ"
