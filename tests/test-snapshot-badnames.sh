#!/usr/bin/env bash
# Snapshot filter, bad names: snapshot names are [A-Za-z0-9._-]{1,64}, not
# "." and without "..".  A command with a bad name fails (the open fails,
# or the JSON says ok:false EINVAL) and creates nothing; 64 characters and
# the allowed punctuation work; names are case-sensitive.  Duplicate create
# is EEXIST (and freezes nothing), revert/delete of an unknown snapshot
# ENOENT, and unknown verbs, unknown filters and bad view names fail the
# open and never reach the plugin as a disk.  "" is the live disk; other
# names not starting with "@" are refused.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=$((1024 * 1024))
base=$tmpdir/base.img
mkdata "$base" $size 14
d=$tmpdir/snap
start_server srv --filter="$F" file "$base" snapshot-dir="$d"
snap_ok srv @snapshot:create/a >/dev/null
nbd_op srv "" "h.pwrite(b'live', 100)"
dump srv "" "$tmpdir/live"

# In one python process (hundreds of opens):
#   rejected: the open fails, or the result is ok:false EINVAL;
#   open_fails: the open fails.
timeout 120 $PYTHON - "$(sock srv)" <<'EOF'
import sys, os
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
sock = sys.argv[1]
failures = []

def rejected(e):
    try:
        h = st.connect(sock, e)
    except (nbd.Error, UnicodeDecodeError):
        # (libnbd's error message may quote a non-UTF-8 export name)
        return
    n = h.get_size()
    text = h.pread(n, 0).decode("utf-8", "replace") if n else ""
    st.close(h)
    import json
    try:
        j = json.loads(text)
    except ValueError:
        failures.append("%r: opened, content is not JSON: %r" % (e, text))
        return
    if j.get("ok") is not False or j.get("errno") != "EINVAL" or not j.get("error"):
        failures.append("%r: expected open failure or EINVAL, got %r" % (e, j))

def open_fails(e):
    try:
        h = st.connect(sock, e)
    except (nbd.Error, UnicodeDecodeError):
        # (libnbd's error message may quote a non-UTF-8 export name)
        return
    st.close(h)
    failures.append("%r: open succeeded, expected it to fail" % e)

bad_names = ["", "x" * 65, "a/b", ".", "..", "a..b", "..a", "a..", "a b", " a",
             "a ", "caf\u00e9".encode(), b"\xff", "a%20b", "a:b", "a@b", "a+b",
             "a~b", "*", "a,b", "a\tb", "a/", "/a", "a\nb"]
for n in bad_names:
    if isinstance(n, str):
        n = n.encode()
    for verb in (b"create", b"revert", b"delete"):
        rejected(b"@snapshot:" + verb + b"/" + n)
    rejected(b"@snapshot:revert/" + n + b"/force")
    open_fails(b"@snapshot/" + n)
    open_fails(b"@snapshot:diff/" + n)
    open_fails(b"@snapshot:diff/a/" + n)

# Empty segments, missing and extra arguments.
for e in ["@snapshot:create", "@snapshot:create/", "@snapshot:create//a",
          "@snapshot:revert", "@snapshot:revert/a/notforce",
          "@snapshot:revert/a/force/x", "@snapshot:revert/a/FORCE",
          "@snapshot:delete", "@snapshot:delete/a/b", "@snapshot:list/x",
          "@snapshot:list/", "@snapshot:create/a/b/c/d/e/f"]:
    rejected(e)

# Unknown verbs and filters, malformed names: the open fails.
for e in ["@snapshot:bogus", "@snapshot:bogus/a", "@snapshot:Create/z",
          "@snapshot:CREATE/z", "@Snapshot/a", "@SNAPSHOT:list", "@snapshot",
          "@snapshot:", "@snapshot/", "@snapshot/a/b", "@snapshot/nosuch",
          "@snapshot:diff", "@snapshot:diff/", "@snapshot:diff/nosuch",
          "@nosuch/x", "@nosuch:create/z", "@", "@/a", "@:", "@snapshot /a",
          "@snapshot:create /z", "@snapshot:list:x"]:
    open_fails(e)

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit("%d bad names were not rejected" % len(failures))
EOF

# Nothing was created, reverted or deleted.
json_check "$(snap_list srv)" '[s["name"] for s in j["snapshots"]] == ["a"]' \
    'j["live"]["parent"] == "a"'
same_content srv "" "$tmpdir/live"

# Duplicate create: EEXIST; the live layer is not frozen.
live_bytes=$(json_get "$(snap_list srv)" 'j["live"]["bytes"]')
out=$(snap_err srv @snapshot:create/a EEXIST)
json_check "$(snap_list srv)" '[s["name"] for s in j["snapshots"]] == ["a"]' \
    'j["live"]["parent"] == "a"' "j['live']['bytes'] == $live_bytes"

# Unknown snapshots: ENOENT (case matters).
snap_err srv @snapshot:revert/nosuch ENOENT >/dev/null
snap_err srv @snapshot:revert/nosuch/force ENOENT >/dev/null
snap_err srv @snapshot:delete/nosuch ENOENT >/dev/null
snap_err srv @snapshot:revert/A ENOENT >/dev/null
snap_err srv @snapshot:delete/A ENOENT >/dev/null
same_content srv "" "$tmpdir/live"

# Valid names: 64 characters, every allowed character, leading dot,
# "force" as a name, case-sensitivity.
x64=$(printf 'x%.0s' $(seq 64))
good=("$x64" "A-Z_a.z-09" ".a" "v1.0" "-" "_" "force" "Clean" "clean")
for n in "${good[@]}"; do
    out=$(snap_ok srv "@snapshot:create/$n")
    json_check "$out" "j['snapshot']['name'] == '$n'"
    same_content srv "@snapshot/$n" "$tmpdir/live"
done
json_check "$(snap_list srv)" "len(j['snapshots']) == 1 + ${#good[@]}"
# @snapshot:revert/force reverts to the snapshot called force.
out=$(snap_ok srv @snapshot:revert/force)
json_check "$out" 'j["snapshot"] == "force"'
out=$(snap_ok srv @snapshot:revert/force/force)
json_check "$out" 'j["snapshot"] == "force"'

# The live disk is the plugin's default export, "": other names not
# starting with "@" would be other disks of a plugin that serves several,
# and are refused (test-snapshot-exports.sh).
same_content srv "" "$tmpdir/live"
for e in foo "x@snapshot/a" " @snapshot/a"; do
    open_fails srv "$e"
done
grep -q 'export "foo" is refused' "$tmpdir/srv.log" ||
    fail "no message for the refused export foo"
stop_server srv
