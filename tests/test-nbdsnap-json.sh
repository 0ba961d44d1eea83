#!/usr/bin/env bash
# nbdsnap reads the filters' command results with a real JSON parser
# (json-c), and its own --json output is valid JSON.
#   A fake server (nbdkit sh plugin) serves crafted "command results",
#   one file per export name:
#   - escapes are decoded: \u00e9 is printed as é, \" as ", in tables
#     and in refusals; --json prints the server's document as it is;
#   - a result that is not valid JSON (cut short, text after the object,
#     not UTF-8) or whose "ok" is not a boolean is refused as a whole:
#     exit 1 and a message saying so (with --json: {"ok":false,...});
#   - a string holding \u0000 is not cut there: it is not used as text;
#   - the cbt filter's refusal quoted by the freeze filter at backup
#     begin is decoded too;
#   - the export name in the user's URI is replaced (libnbd option mode),
#     its query kept; an export the server does not have is "refused"
#     (exit 1) if the server opens the URI's own export, else "cannot
#     connect" (exit 2);
#   - the tool's own JSON strings (an error naming a path with quotes, a
#     backslash, a newline and é) parse back to the same text.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built NBDSNAP
requires nbdkit sh --dump-plugin
N=$NBDSNAP
export LC_ALL=C.UTF-8

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
out_re () { grep -Eq -- "$1" "$tmpdir/out" || { cat "$tmpdir/out" >&2; fail "stdout lacks /$1/"; }; }
out_has () { grep -Fq -- "$1" "$tmpdir/out" || { cat "$tmpdir/out" >&2; fail "stdout lacks '$1'"; }; }
err_has () { grep -Eq -- "$1" "$tmpdir/err" || { cat "$tmpdir/err" >&2; fail "stderr lacks /$1/"; }; }
err_lacks () { ! grep -Eq -- "$1" "$tmpdir/err" || { cat "$tmpdir/err" >&2; fail "stderr has /$1/"; }; }
out_json () { json_check "$(cat "$tmpdir/out")" "$@"; }

# ------------------------------------------------------- the fake server
# Export NAME serves the file docs/NAME (every byte not [A-Za-z0-9]
# replaced by _; "" is docs/_live); an export without a file is refused.
mkdir "$tmpdir/docs"
cat > "$tmpdir/fake.sh" <<EOF
#!/usr/bin/env bash
docs=$tmpdir/docs
EOF
cat >> "$tmpdir/fake.sh" <<'EOF'
case "$1" in
    open)
        f=$(printf '%s' "$3" | LC_ALL=C tr -c 'A-Za-z0-9' '_')
        f=${f:-_live}
        [ -f "$docs/$f" ] || { echo "no such export: $3" >&2; exit 1; }
        echo "$f" ;;
    get_size) stat -c %s "$docs/$2" ;;
    pread) dd if="$docs/$2" skip="$4" count="$3" iflag=skip_bytes,count_bytes status=none ;;
    can_write) exit 3 ;;
    *) exit 2 ;;
esac
EOF
chmod +x "$tmpdir/fake.sh"

# doc EXPORT TEXT: export EXPORT serves TEXT (no newline added).
doc ()
{
    local f
    f=$(printf '%s' "$1" | LC_ALL=C tr -c 'A-Za-z0-9' '_')
    f=${f:-_live}
    printf '%s' "$2" > "$tmpdir/docs/$f"
}

start_server fake sh "$tmpdir/fake.sh"
U=$(uri fake)

# --------------------------------------------- escapes are decoded
echo "== valid results with escapes"
doc @snapshot:list '{"ok":true,"snapshots":[{"name":"caf\u00e9","parent":null,"created":"2024-01-02T03:04:05Z","bytes":65536,"merging":false},{"name":"q\"uote","parent":"caf\u00e9","created":"2024-01-02T03:04:06Z","bytes":0,"merging":true}],"live":{"parent":"q\"uote","bytes":4096}}
'
run 0 "$N" snapshot list "$U"
out_re '^café +- +2024-01-02T03:04:05Z +64K$'
out_re '^q"uote +café +2024-01-02T03:04:06Z +0  \(deleted, merging\)$'
out_re '^\(live disk\) +q"uote +4K$'
run 0 "$N" --json snapshot list "$U"
cmp "$tmpdir/out" "$tmpdir/docs/_snapshot_list" ||
    fail "--json does not print the server's document as it is"
out_json 'j["snapshots"][0]["name"] == "caf\u00e9"'

# The export name of the user's URI is replaced, its query kept.
run 0 "$N" snapshot list "$(uri fake some-other-export)"
out_has 'café'

echo "== refusals with escapes"
doc @snapshot:create/s1 '{"ok":false,"error":"nom d\u00e9j\u00e0 pris: \"s1\"","errno":"EEXIST"}
'
run 1 "$N" snapshot create "$U" s1
err_has '@snapshot:create/s1: nom déjà pris: "s1" \(EEXIST\)'
run 1 "$N" --json snapshot create "$U" s1
out_json 'j["ok"] is False' 'j["errno"] == "EEXIST"'

echo "== a string holding \\u0000 is not cut short"
doc @cbt:create/c1 '{"ok":false,"error":"visible\u0000hidden","errno":"EINVAL"}
'
run 1 "$N" checkpoint create "$U" c1
err_has 'no error message'
err_lacks 'visible'

# ------------------------------------------ invalid results are refused
echo "== invalid results"
bad ()
{
    local what=$1 text=$2 re=$3
    echo "-- $what"
    doc @freeze:list "$text"
    run 1 "$N" freeze list "$U"
    err_has "result of '@freeze:list' is not valid: $re"
    [ ! -s "$tmpdir/out" ] || fail "$what: something was printed on stdout"
    run 1 "$N" --json freeze list "$U"
    out_json 'j["ok"] is False' 'j["exit"] == 1' \
        '"is not valid" in j["error"]'
}
bad "cut short" '{"ok":true,"points":[' 'not JSON'
bad "text after the object" '{"ok":true,"points":[]} {"ok":false}' 'not JSON'
bad "a trailing comma" '{"ok":true,"points":[],}' 'not JSON'
bad "not UTF-8" $'{"ok":true,"points":[{"name":"\xff"}]}\n' 'not JSON'
bad "a control byte after it" $'{"ok":true,"points":[]}\n\x01' 'not JSON'
bad "\"ok\" a string" '{"ok":"yes","points":[]}' 'its "ok" is not true or false'
bad "\"ok\" missing" '{"points":[]}' 'its "ok" is not true or false'
bad "\"ok\" null" '{"ok":null}' 'its "ok" is not true or false'

echo "-- a NUL byte after it"
printf '{"ok":true,"points":[]}\n\0' > "$tmpdir/docs/_freeze_list"
run 1 "$N" freeze list "$U"
err_has "is not valid: not JSON \\(a NUL byte at byte 24\\)"

# The export exists but its content is no command result: as before.
doc @cbt:list 'not json at all'
run 1 "$N" checkpoint list "$U"
err_has 'is not a command of an nbdsnap filter'
# No such export: refused if the server opens the URI's own export (it
# is there and serves us), else it cannot be reached (as for a server
# that requires TLS).
run 2 "$N" freeze begin "$U" nothere
err_has "cannot connect"
doc "" "a disk"
run 1 "$N" freeze begin "$U" nothere
err_has "refused '@freeze:begin/nothere'"

# ---------------------------- the freeze filter quoting the cbt filter
echo "== backup: the cbt filter's refusal quoted by the freeze filter"
doc @freeze:list '{"ok":true,"points":[]}
'
doc @freeze:begin/B1 '{"ok":false,"error":"the cbt filter refused the checkpoint: {\"ok\":false,\"error\":\"checkpoint \u00abB1\u00bb already exists\",\"errno\":\"EEXIST\"}","errno":"EIO"}
'
run 1 "$N" backup "$U" "$tmpdir/repo" --full --name B1 --no-progress
err_has "the server refused to begin backup 'B1': checkpoint «B1» already exists \(EEXIST\)"
[ ! -e "$tmpdir/repo" ] || fail "the refused backup created the repository"
doc @freeze:begin/B2 '{"ok":"maybe"}'
run 1 "$N" backup "$U" "$tmpdir/repo" --full --name B2 --no-progress
err_has "refused to begin backup 'B2': the result of '@freeze:begin/B2' is not valid"

# ------------------------------------------- the tool's own JSON strings
echo "== the tool's own JSON output"
weird="$tmpdir/a \"quoted\" back\\slash
newline é"
run 1 "$N" --json list "$weird"
NBDSNAP_WEIRD=$weird out_json 'j["ok"] is False' 'j["exit"] == 1' \
    '__import__("os").environ["NBDSNAP_WEIRD"] in j["error"]'
run 2 "$N" --json snapshot create "$U" 'bad"name'
out_json 'j["ok"] is False' 'j["exit"] == 2' '"bad\"name" in j["error"]'

echo "$testname: OK"
