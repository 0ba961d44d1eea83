#!/usr/bin/env bash
# cbt filter, concurrency of change maps and commands: while three
# connections read the change map @cbt/c0 (block status over the whole
# 1G disk at 4K granularity) and two others write, checkpoints are
# created (and every fourth one deleted) as fast as possible.  The server
# must stay up, no request may fail, and at the end the map since c0 is
# exactly the set of blocks written.  Repeated on fresh servers (the
# checkpoint list grows from empty each time) for about 20 seconds.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

cat > "$tmpdir/work.py" <<'EOF'
import os, random, sys, threading, time
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st
import importlib.util as iu
spec = iu.spec_from_file_location("mc", os.path.join(os.environ["testsdir"], "model-cbt.py"))
mc = iu.module_from_spec(spec); spec.loader.exec_module(mc)

sock, ncreates = sys.argv[1], int(sys.argv[2])
G = 4096
stop = threading.Event()
errs, written = [], set()
mc.command_ok(sock, "@cbt:create/c0")

def viewer():
    try:
        while not stop.is_set():
            h = st.connect(sock, "@cbt/c0")
            for _ in range(10):
                if stop.is_set():
                    break
                mc.changed_blocks(h, G)
            st.close(h)
    except Exception as e:
        errs.append("viewer: %r" % e); stop.set()

def writer(seed):
    r = random.Random(seed)
    try:
        h = st.connect(sock, "")
        while not stop.is_set():
            b = r.randrange((1 << 30) // G)
            h.pwrite(b"x", b * G + r.randrange(G))
            written.add(b)
        st.close(h)
    except Exception as e:
        errs.append("writer: %r" % e); stop.set()

ths = [threading.Thread(target=viewer) for _ in range(3)] + \
      [threading.Thread(target=writer, args=(i,)) for i in range(2)]
for t in ths:
    t.start()
i = 1
try:
    while i <= ncreates and not stop.is_set():
        mc.command_ok(sock, "@cbt:create/c%d" % i)
        if i % 4 == 0:
            mc.command_ok(sock, "@cbt:delete/c%d" % (i - 1))
        i += 1
except Exception as e:
    errs.append("commands: %r" % e)
stop.set()
for t in ths:
    t.join()
if errs:
    sys.exit("after %d creates: %s" % (i, "; ".join(errs)))
got = mc.view_blocks(sock, "@cbt/c0", G)
if got != written:
    sys.exit("@cbt/c0: missing %s extra %s" % (mc.fmt(written - got), mc.fmt(got - written)))
print("%d creates, %d blocks written: ok" % (i, len(written)))
EOF

t_end=$((SECONDS + ${CONCURRENT_SECONDS:-20}))
round=0
while [ $SECONDS -lt $t_end ]; do
    round=$((round + 1))
    rm -rf "$tmpdir/cbt"
    start_server srv --filter="$C" memory 1G cbt-dir="$tmpdir/cbt" cbt-granularity=4K
    timeout 120 $PYTHON "$tmpdir/work.py" "$(sock srv)" 40 ||
        fail "round $round: concurrent workload failed"
    server_alive srv || fail "round $round: nbdkit died"
    stop_server srv
done
