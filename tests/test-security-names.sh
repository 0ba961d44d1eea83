#!/usr/bin/env bash
# Security, hostile names: over the full stack (freeze, cbt, snapshot),
# names that try to leave their directory or to confuse a parser
# (../x, /abs, a/../../b, ., .., a..b, 65 and 4000 bytes, unicode, a
# newline, a tab, a percent-encoded NUL, %2e%2e%2f) are refused with a
# clear error, by the filters (every verb that takes a name, sent as a raw
# export name, bypassing the tool) and by nbdsnap (snapshot, checkpoint,
# freeze, backup --name, restore, verify, delete, merge); afterwards no
# file exists outside the state directories and the repository, the
# state directories hold only their own files, and nothing was created.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

: "${CBT_FILTER:=$top_builddir/filters/cbt/.libs/nbdkit-cbt-filter.so}"
: "${FREEZE_FILTER:=$top_builddir/filters/freeze/.libs/nbdkit-freeze-filter.so}"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
N=$NBDSNAP

# Everything lives under $tmpdir/box/: the state directories one level
# down, so that ../x from one of them lands in box/ and ../../x in
# $tmpdir (both checked below).
box=$tmpdir/box
mkdir -p "$box/frz"
truncate -s 1M "$box/disk.img"
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter="$SNAPSHOT_FILTER" file "$box/disk.img" \
    snapshot-dir="$box/snap" cbt-dir="$box/cbt" freeze-dir="$box/frz"
U=$(uri srv)
"$N" init "$box/repo" >/dev/null
"$N" backup "$U" "$box/repo" --full --name good --no-progress >/dev/null
"$N" freeze end "$U" good >/dev/null 2>&1 || true
before=$(cd "$box" && find . ! -name '*.sock' | sort)

long=$(printf 'a%.0s' {1..65})
huge=$(printf 'b%.0s' {1..4000})
names=("../x" "../../x" "/abs" "/tmp/nbdsnap-hostile-$$" "a/../../b" "." ".."
       "a..b" "$long" "$huge" "é" "снимок" $'a\nb' $'a\tb' "a b" "a%00b"
       "%2e%2e%2fx" "" "a/b")

echo "== the tool"
for n in "${names[@]}"; do
    for cmd in "snapshot create $U" "snapshot revert $U" "snapshot delete $U" \
               "checkpoint create $U" "checkpoint delete $U" \
               "freeze begin $U" "freeze end $U" \
               "restore $box/repo" "verify $box/repo" \
               "delete $box/repo" "merge $box/repo"; do
        st=0
        # shellcheck disable=SC2086
        if [[ $cmd == restore* ]]; then
            $N $cmd "$n" -o "$tmpdir/out.img" > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
        else
            $N $cmd "$n" > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
        fi
        [ "$st" -ne 0 ] || fail "nbdsnap $cmd '$n' succeeded"
        # '-' alone is an option-like word: a usage error is fine.
        grep -Eiq "invalid|usage|name" "$tmpdir/err" ||
            { cat "$tmpdir/err" >&2; fail "nbdsnap $cmd '$n': no clear error"; }
    done
    st=0
    $N backup "$U" "$box/repo" --name "$n" --no-progress > "$tmpdir/out" 2> "$tmpdir/err" || st=$?
    [ "$st" -ne 0 ] || fail "nbdsnap backup --name '$n' succeeded"
    grep -Eiq "invalid|usage|name" "$tmpdir/err" ||
        { cat "$tmpdir/err" >&2; fail "backup --name '$n': no clear error"; }
done

echo "== raw export names (no tool in between)"
timeout 120 $PYTHON - "$(sock srv)" "$long" "$huge" <<'EOF'
import sys, json, nbd
sock, long, huge = sys.argv[1:4]
names = ["../x", "../../x", "/abs", "a/../../b", ".", "..", "a..b", long,
         huge[:4000 - 20], "é", "снимок", "a\nb", "a\tb", "a b", "a\\x00b",
         "%2e%2e%2fx", "a/b", "x/", "/x", "x//y"]
verbs = ["@snapshot:create/", "@snapshot:revert/", "@snapshot:delete/",
         "@snapshot/", "@snapshot:diff/", "@cbt:create/", "@cbt:delete/",
         "@cbt/", "@freeze:begin/", "@freeze:end/", "@freeze/",
         "@freeze:diff/good/"]
bad = []
for v in verbs:
    for n in names:
        e = v + n
        if len(e.encode()) > 4096:
            continue
        h = nbd.NBD()
        h.set_export_name(e)
        try:
            h.connect_unix(sock)
        except (nbd.Error, UnicodeDecodeError):
            continue            # refused at open: fine
        size = h.get_size()
        text = h.pread(size, 0).decode("utf-8", "replace") if size else ""
        h.shutdown()
        try:
            j = json.loads(text)
        except ValueError:
            bad.append((e, "served data, not a refusal"))
            continue
        if j.get("ok") is not False or j.get("errno") != "EINVAL" or not j.get("error"):
            bad.append((e, text.strip()))
# Percent-encoded in a URI: a slash, a newline.  (A %00 never reaches
# the server from libnbd: it takes C strings, so the name ends there;
# the raw NUL is tried below without libnbd.)
for enc in ["@snapshot:create/%2e%2e%2fx",
            "@cbt:create/a%0ab", "@freeze:begin/%2fabs"]:
    h = nbd.NBD()
    try:
        h.connect_uri("nbd+unix:///" + enc + "?socket=" + sock)
    except nbd.Error:
        continue
    size = h.get_size()
    text = h.pread(size, 0).decode("utf-8", "replace") if size else ""
    h.shutdown()
    j = json.loads(text)
    if j.get("ok") is not False:
        bad.append((enc, text.strip()))
if bad:
    for b in bad:
        print("accepted:", repr(b[0]), b[1][:200], file=sys.stderr)
    sys.exit(1)
EOF

echo "== a NUL inside an export name, on the wire"
for n in "b'@snapshot:create/a\\x00b'" "b'@cbt:create/a\\x00/../x'" \
         "b'@freeze:begin/\\x00'" "b'@snapshot/\\x00'" "b'\\x00@snapshot:create/x'"; do
    r=$(timeout 30 $PYTHON "$testsdir/nbd-rawname.py" "$(sock srv)" "$n")
    case "$r" in
        refused*|*'"ok":false'*) ;;
        *) fail "export name $n: $r" ;;
    esac
done

echo "== nothing was created anywhere"
after=$(cd "$box" && find . ! -name '*.sock' | sort)
if [ "$before" != "$after" ]; then
    diff <(echo "$before") <(echo "$after") >&2 || true
    fail "files appeared or vanished under the test's directories"
fi
for p in "$tmpdir/x" "$tmpdir/b" "$box/x" "$box/b" "/abs" "/x" \
         "/tmp/nbdsnap-hostile-$$" "$tmpdir/out.img"; do
    [ ! -e "$p" ] || fail "$p was created"
done
json_check "$("$N" --json snapshot list "$U")" 'j["snapshots"] == []'
json_check "$("$N" --json checkpoint list "$U")" '[c["name"] for c in j["checkpoints"]] == ["good"]'
json_check "$("$N" --json freeze list "$U")" 'j["points"] == []'
json_check "$("$N" --json list "$box/repo")" '[p["name"] for p in j["points"]] == ["good"]'
echo "$testname: OK"
