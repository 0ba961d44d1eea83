#!/usr/bin/env bash
# Snapshot filter over a plugin that serves several disks by export name
# (issue 10, item 12).  The filter keeps the history of one disk: the one
# it probes at start, the plugin's default export.  With a plugin (sh)
# whose bytes depend on the export name ("" and "default": A..., "b":
# B..., others: C...):
#   - the live disk "" reads A plus what was written; views and change
#     maps read the same disk;
#   - opening the live disk as "b" (or "c") is refused with a message
#     naming both exports, before and after a restart, and writes through
#     it never land in the layers (the live disk and the snapshot still
#     read A plus the writes to "");
#   - a plugin that serves its default export ("default") differently
#     from "" (what the probe outside any connection sees) is refused at
#     the first connection instead of mixing two disks.
# (nbdkit 1.32's file plugin with dir= cannot be used: its open asks
# nbdkit for the client's export name, which a context opened outside a
# connection does not have.)
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

size=65536
plugin=$tmpdir/disks.sh
cat > "$plugin" <<'EOF'
#!/usr/bin/env bash
# open READONLY EXPORTNAME TLS: the handle is the export name.
case "$1" in
    open) echo "$3" ;;
    get_size) echo 65536 ;;
    pread)
        case "$2" in ""|default) c=A ;; b) c=B ;; *) c=C ;; esac
        head -c "$3" /dev/zero | tr '\0' "$c" ;;
    default_export) [ -n "$NBDSNAP_DEFAULT" ] || exit 2; echo "$NBDSNAP_DEFAULT" ;;
    thread_model) echo parallel ;;
    *) exit 2 ;;
esac
EOF
chmod +x "$plugin"

# The expected live disk: A..., then what the test writes at 1000.
$PYTHON -c 'import sys; sys.stdout.buffer.write(b"A" * 65536)' > "$tmpdir/A"
cp "$tmpdir/A" "$tmpdir/model"
printf 'written through ""' > "$tmpdir/w1"
file_pwrite "$tmpdir/model" 1000 "$tmpdir/w1"

d=$tmpdir/snap
start_server srv --filter="$F" sh "$plugin" snapshot-dir="$d"
same_content srv "" "$tmpdir/A"
nbd_pwrite srv "" 1000 "$tmpdir/w1"
same_content srv "" "$tmpdir/model"

# Another export of the plugin: refused, with both names in the message.
for e in b c; do
    open_fails srv "$e"
    grep -q "export \"$e\" is refused.*export \"\"" "$tmpdir/srv.log" ||
        fail "no message saying why export \"$e\" was refused"
done

snap_ok srv @snapshot:create/s >/dev/null
same_content srv @snapshot/s "$tmpdir/model"
same_content srv @snapshot:diff/s "$tmpdir/model"
same_content srv "" "$tmpdir/model"
restart_server srv
open_fails srv b
same_content srv "" "$tmpdir/model"
same_content srv @snapshot/s "$tmpdir/model"
stop_server srv

# A plugin whose default export ("default", here the same bytes) is
# another name than "": served, since the bytes are those of "".
NBDSNAP_DEFAULT=default start_server def --filter="$F" sh "$plugin" \
    snapshot-dir="$tmpdir/snap2"
same_content def "" "$tmpdir/A"
stop_server def
# ... and one whose default export is another disk ("b"): the probe saw
# "" (A), the clients would get B: refused, not mixed.
NBDSNAP_DEFAULT=b start_server mix --filter="$F" sh "$plugin" \
    snapshot-dir="$tmpdir/snap3"
open_fails mix ""
grep -q "not the disk it showed at start" "$tmpdir/mix.log" ||
    fail "no message for a default export that differs from the probe's"
stop_server mix
