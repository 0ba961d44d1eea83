# Helpers of the nbdsnap tool tests (sourced after functions.sh):
#
#   $N, $CBT_FILTER, $FREEZE_FILTER, $FAULTINJECT   (checked built)
#   status CMD...           run CMD (out/err in $tmpdir/out, $tmpdir/err),
#                           print its exit status
#   expect_exit CODE RE CMD...   CMD exits CODE, its stderr matches RE
#   no_tmp REPO             no temporary entry (name starting with '.')
#                           under REPO/points
#   nothing_held URI        the server holds no frozen point
#   checkpoints URI         the server's checkpoint names, space separated
#   points REPO             the repository's point names, space separated
#   wait_tmp REPO NAME PID  wait until points/.tmp-NAME-* exists (a
#                           backup is writing), fail if PID exits first
#   restore_all REPO        every listed point restores and equals
#                           $tmpdir/exp-NAME.img (cmp)

require_built CBT_FILTER FREEZE_FILTER NBDSNAP FAULTINJECT
N=$NBDSNAP

status ()
{
    local st=0
    "$@" > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
    echo "$st"
}

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

no_tmp ()
{
    if ls -A "$1/points" 2>/dev/null | grep -q '^\.'; then
        ls -la "$1/points" >&2
        fail "a temporary entry was left in $1/points"
    fi
}

nothing_held ()
{
    local out
    out=$("$N" --json freeze list "$1") || fail "freeze list failed"
    json_check "$out" 'j["ok"] is True' 'j["points"] == []'
}

checkpoints ()
{
    json_get "$("$N" --json checkpoint list "$1")" \
        '" ".join(c["name"] for c in j["checkpoints"])'
}

points ()
{
    json_get "$("$N" --json list "$1")" '" ".join(p["name"] for p in j["points"])'
}

wait_tmp ()
{
    local repo=$1 name=$2 pid=$3 i
    for ((i = 0; i < 600; i++)); do
        compgen -G "$repo/points/.tmp-$name-*" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || fail "backup $name ended before it wrote"
        sleep 0.02
    done
    fail "backup $name did not start writing within 12s"
}

restore_all ()
{
    local repo=$1 p
    for p in $(points "$repo"); do
        [ -f "$tmpdir/exp-$p.img" ] || fail "no expected image for point $p"
        "$N" restore "$repo" "$p" -o "$tmpdir/restored.img" --no-progress \
            > /dev/null || fail "restore of point $p failed"
        cmp "$tmpdir/restored.img" "$tmpdir/exp-$p.img" ||
            fail "point $p restores to the wrong bytes"
    done
    rm -f "$tmpdir/restored.img"
}
