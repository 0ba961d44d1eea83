#!/usr/bin/env bash
# Full stack (freeze + cbt + snapshot), running out of descriptors: with
# k = 1..10 spare descriptors, @cbt:create, @freeze:begin and
# @snapshot:create each either work or fail saying "Too many open files"
# and to raise ulimit -n (a connection may also not be served at all).
# With the limit back, nothing is lost: the live disk takes writes, all
# three commands work, and after a restart every checkpoint, snapshot and
# the bytes written are there.  None of the filters may enter its failed
# state for a file it could not even open.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires prlimit --version

mkdir -p "$tmpdir/f"
start_server srv --filter="$FREEZE_FILTER" --filter="$CBT_FILTER" \
    --filter="$F" memory 64M cbt-dir="$tmpdir/c" \
    snapshot-dir="$tmpdir/s" freeze-dir="$tmpdir/f"
for i in 1 2 3; do snapcmd srv @cbt:create/a$i >/dev/null; done
pid=$(server_pid srv)
nofile=$(prlimit --pid "$pid" --nofile --noheadings --output SOFT)

ran_out=0
for k in 1 2 3 4 5 6 7 8 9 10; do
    prlimit --pid "$pid" \
        --nofile=$(( $(ls /proc/"$pid"/fd | wc -l) + k )): ||
        fail "prlimit failed"
    outs=()
    for c in @cbt:create/k$k @freeze:begin/x$k @snapshot:create/k$k; do
        outs+=("$(snapcmd srv $c 2>/dev/null || echo '{"ok": null}')")
    done
    prlimit --pid "$pid" --nofile="$nofile": || fail "prlimit failed"
    for out in "${outs[@]}"; do
        case $(json_get "$out" 'j.get("ok")') in
        true) ;;
        null) ;;                # the connection itself was not served
        false)
            ran_out=$((ran_out + 1))
            json_check "$out" \
                're.search(r"Too many open files.*ulimit -n", j["error"])'
            ;;
        *) fail "k=$k: not a command result: $out" ;;
        esac
    done
    # The point, if made, goes again (it holds a checkpoint of the cbt
    # filter below; see nbdkit-freeze-filter(1)).
    snapcmd srv @freeze:end/x$k >/dev/null 2>&1 || true
    printf 'k%02d' $k > "$tmpdir/mark"
    nbd_pwrite srv "" $((k * 65536)) "$tmpdir/mark" ||
        fail "k=$k: the live disk refuses a write"
    nbd_op srv "" "h.flush()" || fail "k=$k: flush failed"
    for c in @cbt:create/after$k @snapshot:create/after$k \
             @freeze:begin/y$k @freeze:end/y$k; do
        out=$(snapcmd srv $c) || fail "k=$k: $c: open failed"
        json_check "$out" 'j.get("ok") is True'
    done
done
[ $ran_out -gt 0 ] || fail "no command ran out of descriptors"
echo "$ran_out commands ran out of descriptors, nothing lost"

restart_server srv
cl=$(snapcmd srv @cbt:list); sl=$(snap_list srv)
for k in 1 2 3 4 5 6 7 8 9 10; do
    json_check "$cl" "'after$k' in [c['name'] for c in j['checkpoints']]"
    json_check "$sl" "'after$k' in [s['name'] for s in j['snapshots']]"
    got=$(nbd_op srv "" "import sys; sys.stdout.buffer.write(h.pread(3, $k * 65536))")
    [ "$got" = "$(printf 'k%02d' $k)" ] || fail "k=$k: block $k reads '$got'"
done
stop_server srv
echo "test-stack-openfiles: OK"
