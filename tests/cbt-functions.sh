# nbdsnap cbt test helpers.  Sourced by tests/test-cbt-*.sh after
# tests/functions.sh:
#
#   #!/usr/bin/env bash
#   [ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
#   . "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
#   . "$testsdir/cbt-functions.sh"
#
# Adds: $CBT_FILTER (also $C), cbt_ok / cbt_err / cbt_list / cbt_names,
# changed_blocks, and the python helper module tests/model-cbt.py.

export CBT_FILTER
C=$CBT_FILTER
if [ ! -f "$CBT_FILTER" ]; then
    echo "$testname: ERROR: cbt filter not built: $CBT_FILTER" >&2
    exit 99
fi

# cbt_ok TARGET EXPORT: run a cbt command, require "ok":true, print JSON.
cbt_ok ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed"
    verb=${2#@cbt:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "cbt"' \
        "j.get('command') == '$verb'" 'j.get("ok") is True'
    printf '%s\n' "$out"
}

# cbt_err TARGET EXPORT ERRNO: the command must fail with errno ERRNO and a
# non-empty "error" message; prints the JSON.
cbt_err ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed (expected ok:false $3)"
    verb=${2#@cbt:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "cbt"' \
        "j.get('command') == '$verb'" 'j.get("ok") is False' \
        "j.get('errno') == '$3'" \
        'isinstance(j.get("error"), str) and len(j["error"]) > 0'
    printf '%s\n' "$out"
}

# cbt_list TARGET: the @cbt:list JSON (checked ok).
cbt_list () { cbt_ok "$1" @cbt:list; }

# cbt_names TARGET: checkpoint names, one per line, oldest first.
cbt_names ()
{
    json_get "$(cbt_list "$1")" '"\n".join(c["name"] for c in j["checkpoints"])'
}

# changed_blocks TARGET EXPORT GRAN: the blocks (index = offset / GRAN)
# that a change map view reports as changed (data or zero), one line,
# space separated, ascending.  Fails if an extent that is not the last one
# does not end on a GRAN boundary between a changed and unchanged run.
changed_blocks ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    NBDSNAP_URI=$u GRAN=$3 timeout 120 $PYTHON -c '
import os, sys
sys.path.insert(0, os.environ["testsdir"])
import importlib.util as iu
spec = iu.spec_from_file_location("mc", os.path.join(os.environ["testsdir"], "model-cbt.py"))
mc = iu.module_from_spec(spec); spec.loader.exec_module(mc)
h = mc.connect_uri(os.environ["NBDSNAP_URI"])
b = mc.changed_blocks(h, int(os.environ["GRAN"]))
mc.close(h)
print(" ".join(str(x) for x in sorted(b)))'
}
