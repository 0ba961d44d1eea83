#!/usr/bin/env bash
# cbt filter, bad names and refused commands: checkpoint names are
# [A-Za-z0-9._-]{1,64}, not "." and without "..".  A create/delete with a
# bad name fails (the open fails, or ok:false EINVAL) and changes nothing;
# a view or diff with a bad name fails the open; unknown verbs fail the
# open.  Duplicate create is EEXIST, delete of an unknown checkpoint is
# ENOENT, a diff whose second checkpoint is older than the first fails
# the open.  64 characters and the allowed punctuation work.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

img=$tmpdir/disk.img
truncate -s 1M "$img"
start_server srv --filter="$C" file "$img" cbt-dir="$tmpdir/cbt"
cbt_ok srv @cbt:create/a >/dev/null
nbd_op srv "" "h.pwrite(b'w', 70000)"
cbt_ok srv @cbt:create/b >/dev/null
nbd_op srv "" "h.pwrite(b'w', 200000)"
before=$(cbt_list srv)

timeout 120 $PYTHON - "$(sock srv)" <<'EOF'
import sys, os, json
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd
sock = sys.argv[1]
failures = []

def rejected(e):
    try:
        h = st.connect(sock, e)
    except (nbd.Error, UnicodeDecodeError):
        return
    n = h.get_size()
    text = h.pread(n, 0).decode("utf-8", "replace") if n else ""
    st.close(h)
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
        return
    st.close(h)
    failures.append("%r: open succeeded, expected it to fail" % e)

bad_names = ["", "x" * 65, "a/b", ".", "..", "a..b", "..a", "a..", "a b",
             " a", "a ", "a%20b", "caf\u00e9".encode(), b"\xff", "\u00e9t\u00e9".encode(),
             "a:b", "a@b", "a+b", "*", "a,b", "a\tb", "a\nb", "a/", "/a"]
for n in bad_names:
    if isinstance(n, str):
        n = n.encode()
    rejected(b"@cbt:create/" + n)
    rejected(b"@cbt:delete/" + n)
    open_fails(b"@cbt/" + n)
    open_fails(b"@cbt:diff/a/" + n)
    open_fails(b"@cbt:diff/" + n + b"/b")

for e in ["@cbt:create", "@cbt:create/", "@cbt:create//a", "@cbt:create/a/b",
          "@cbt:delete", "@cbt:delete/a/b", "@cbt:list/x", "@cbt:list/"]:
    rejected(e)

for e in ["@cbt:bogus", "@cbt:bogus/a", "@cbt:Create/z", "@cbt:LIST", "@CBT/a",
          "@cbt", "@cbt:", "@cbt/", "@cbt/a/b", "@cbt/nosuch",
          "@cbt:diff", "@cbt:diff/", "@cbt:diff/a", "@cbt:diff/a/b/a",
          "@cbt:diff/nosuch/b", "@cbt:diff/a/nosuch", "@cbt:diff/b/a",
          "@cbt:diff//b", "@cbt:diff/a/", "@nosuch/x", "@", "@cbt /a"]:
    open_fails(e)

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit("%d bad names were not rejected" % len(failures))
EOF
[ "$(cbt_list srv)" = "$before" ] || fail "bad commands changed the list: $(cbt_list srv)"

# Duplicate create: EEXIST and the existing checkpoint is untouched.
cbt_err srv @cbt:create/a EEXIST >/dev/null
cbt_err srv @cbt:create/b EEXIST >/dev/null
# Unknown: ENOENT (names are case-sensitive).
cbt_err srv @cbt:delete/nosuch ENOENT >/dev/null
cbt_err srv @cbt:delete/A ENOENT >/dev/null
[ "$(cbt_list srv)" = "$before" ] || fail "EEXIST/ENOENT changed the list: $(cbt_list srv)"
same_text "1 3" "$(changed_blocks srv @cbt/a 65536)" "@cbt/a"
same_text "3" "$(changed_blocks srv @cbt/b 65536)" "@cbt/b"
# Diff in the right order works; reversed it fails the open.
same_text "1" "$(changed_blocks srv @cbt:diff/a/b 65536)" "@cbt:diff/a/b"
open_fails srv @cbt:diff/b/a

# Valid names.
x64=$(printf 'x%.0s' $(seq 64))
good=("$x64" "A-Z_a.z-09" ".a" "v1.0" "-" "_" "list" "create" "A")
for n in "${good[@]}"; do
    json_check "$(cbt_ok srv "@cbt:create/$n")" "j['checkpoint']['name'] == '$n'"
    same_text "" "$(changed_blocks srv "@cbt/$n" 65536)" "@cbt/$n"
done
json_check "$(cbt_list srv)" "[c['name'] for c in j['checkpoints']] == ['a', 'b'] + '''${good[*]}'''.split()"
for n in "${good[@]}"; do
    cbt_ok srv "@cbt:delete/$n" >/dev/null
done
[ "$(cbt_list srv)" = "$before" ] || fail "list after create+delete of valid names: $(cbt_list srv)"
stop_server srv
