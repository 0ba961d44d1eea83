#!/usr/bin/env bash
# Snapshot filter, the failed state (issue 10, item 4).  Linux reports a
# writeback error once: after a failed fdatasync the next one returns 0
# over lost data, so a flush that fails must stay failed.  With the fault
# shim armed at the right moment:
#   A. one fdatasync of the live layer fails: that flush fails, and so do
#      every later flush, write, zero, trim and changing command (EIO),
#      until restart; list says why ("failed"); the live disk and a
#      snapshot still read right; nothing more is saved at SIGTERM; after
#      a restart the disk holds every write flushed before the failure
#      and the filter takes writes again;
#   B. the directory fsync after the state file of a create is renamed
#      into place fails: the create says ok:false (EIO, "was made"), the
#      snapshot exists (the state in place names it) and reads right, the
#      filter is failed; after a restart the snapshot is there;
#   C. a pwrite of the background merge of a delete fails: the merge
#      stops, list shows merge_error on the deleted snapshot, the live
#      disk goes on taking writes; a fdatasync of the merge fails: the
#      same, and the filter is failed; after a restart the merge is done
#      and every snapshot and the live disk read right.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FAULTINJECT
export FAULTINJECT F tmpdir

timeout 240 $PYTHON - <<'EOF' || fail "(above)"
import os, sys, time, errno, random
sys.path.insert(0, os.environ["testsdir"])
import snaptest as st, nbd

T, F, SHIM = os.environ["tmpdir"], os.environ["F"], os.environ["FAULTINJECT"]
B = 65536
SIZE = 32 * B
base = os.path.join(T, "base.img")
rnd = random.Random(3)
BASE = bytes(rnd.getrandbits(8) for _ in range(SIZE))
open(base, "wb").write(BASE)
arm = os.path.join(T, "arm")
n = 0

def server(d, calls=None, nth=None, log=None):
    global n
    n += 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("FI_")}
    env.pop("LD_PRELOAD", None)
    if calls:
        env.update(LD_PRELOAD=SHIM, FI_CALLS=calls, FI_PATH=d, FI_ARM=arm)
        if nth:
            env["FI_NTH"] = str(nth)
        if log:
            env["FI_LOG"] = log
    old = dict(os.environ)
    os.environ.clear(); os.environ.update(env)
    try:
        s = st.Server(T, "srv%d" % n, ["--filter=" + F, "file", base,
                                       "snapshot-dir=" + d])
        s.start()
    finally:
        os.environ.clear(); os.environ.update(old)
    return s

def armed(on):
    if on:
        open(arm, "w").close()
    elif os.path.exists(arm):
        os.unlink(arm)

def fails(what, fn, want=errno.EIO):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == want, "%s: failed with %s, not %s" % (what, e, want)
        return
    raise AssertionError("%s succeeded in the failed state" % what)

def cmd(s, e):
    return st.command(s.sock, e)

def read(s, export="", off=0, length=SIZE):
    h = st.connect(s.sock, export)
    try:
        return h.pread(length, off)
    finally:
        st.close(h)

# ------------------------------------------------------------------ A
d = os.path.join(T, "a")
s = server(d, "fdatasync", 1)
h = st.connect(s.sock)
A1, A2 = b"a" * B, b"b" * B
h.pwrite(A1, 0)
h.flush()
assert cmd(s, "@snapshot:create/s0")["ok"]
h.pwrite(A2, 4 * B)
armed(True)
fails("the flush whose fdatasync failed", h.flush)
armed(False)
fails("the next flush", h.flush)                    # fsyncgate
fails("a write", lambda: h.pwrite(b"c" * 512, 8 * B))
fails("a FUA write", lambda: h.pwrite(b"c" * 512, 8 * B, nbd.CMD_FLAG_FUA))
fails("a zero", lambda: h.zero(B, 8 * B))
fails("a trim", lambda: h.trim(B, 8 * B))
fails("a flush, later", h.flush)
for c in ("@snapshot:create/s1", "@snapshot:revert/s0/force",
          "@snapshot:delete/s0"):
    j = cmd(s, c)
    assert not j["ok"] and j["errno"] == "EIO" and "restart nbdkit" in j["error"], j
j = cmd(s, "@snapshot:list")
assert j["ok"] and "fdatasync" in j.get("failed", ""), j
assert h.pread(B, 0) == A1 and h.pread(B, 4 * B) == A2, "reads changed"
st.close(h)
assert read(s, "@snapshot/s0") == A1 + BASE[B:], "the snapshot reads wrong"
s.stop()
log = open(s.logname).read()
assert log.count("from now on writes") == 1, "the failure is not logged once"
s = server(d)
now = read(s)
assert now[:B] == A1, "a flushed write was lost"
assert now[4 * B:5 * B] in (A2, BASE[4 * B:5 * B])
print("A: after restart the unflushed write is %s" %
      ("there" if now[4 * B:5 * B] == A2 else "gone (never made durable)"))
h = st.connect(s.sock)
h.pwrite(b"d" * 512, 0)
h.flush()
st.close(h)
s.stop()
print("A: a failed fdatasync failed every later flush, write and change")

# ------------------------------------------------------------------ B
# Count: the fsync calls of a create; the last one on the directory
# itself comes after the state file is renamed into place.
def b_setup(s):
    h = st.connect(s.sock)
    h.pwrite(b"x" * B, 2 * B)
    st.close(h)

flog = os.path.join(T, "b-count.log")
d = os.path.join(T, "b0")
s = server(d, "fsync", None, flog)
b_setup(s)
armed(True)
assert cmd(s, "@snapshot:create/s1")["ok"]
armed(False)
s.stop()
lines = open(flog).read().splitlines()
k = max(int(l.split()[0]) for l in lines if l.split()[2] == d)
assert any(l.split()[2] == d + "/state.tmp" and int(l.split()[0]) < k
           for l in lines), lines
d = os.path.join(T, "b")
s = server(d, "fsync", k)
b_setup(s)
armed(True)
j = cmd(s, "@snapshot:create/s1")
armed(False)
assert not j["ok"] and j["errno"] == "EIO" and "was made" in j["error"], j
j = cmd(s, "@snapshot:list")
assert [x["name"] for x in j["snapshots"]] == ["s1"] and "failed" in j, j
want = BASE[:2 * B] + b"x" * B + BASE[3 * B:]
assert read(s, "@snapshot/s1") == want
h = st.connect(s.sock)
fails("a write after the failed directory sync", lambda: h.pwrite(b"y", 0))
st.close(h)
s.stop()
s = server(d)
assert [x["name"] for x in cmd(s, "@snapshot:list")["snapshots"]] == ["s1"]
assert read(s, "@snapshot/s1") == want and read(s) == want
s.stop()
print("B: a create whose state could not be made durable said so, and kept it")

# ------------------------------------------------------------------ C
def c_setup(s):
    h = st.connect(s.sock)
    h.pwrite(b"1" * B, 0)
    assert cmd(s, "@snapshot:create/p")["ok"]
    h.pwrite(b"2" * B, B)
    assert cmd(s, "@snapshot:create/c")["ok"]
    h.pwrite(b"3" * B, 2 * B)
    h.flush()
    st.close(h)

P = b"1" * B + BASE[B:]
C = b"1" * B + b"2" * B + BASE[2 * B:]
L = b"1" * B + b"2" * B + b"3" * B + BASE[3 * B:]

def wait_merge_error(s):
    for _ in range(300):
        j = cmd(s, "@snapshot:list")
        p = [x for x in j["snapshots"] if x["name"] == "p"]
        if p and "merge_error" in p[0]:
            return j, p[0]["merge_error"]
        assert p and p[0]["merging"], "the merge finished despite the fault: %r" % j
        time.sleep(0.1)
    raise AssertionError("no merge_error after the merge failed: %r" % j)

for calls, sticky in (("pwrite", False), ("fdatasync", True)):
    d = os.path.join(T, "c-" + calls)
    s = server(d, calls, 1)
    c_setup(s)
    armed(True)
    assert cmd(s, "@snapshot:delete/p")["ok"]
    j, why = wait_merge_error(s)
    armed(False)
    assert calls in why or "fdatasync" in why or "writing" in why, why
    assert ("failed" in j) == sticky, j
    h = st.connect(s.sock)
    if sticky:
        fails("a write after a failed merge sync", lambda: h.pwrite(b"4", 0))
    else:
        h.pwrite(b"4" * B, 3 * B)
        h.flush()
    assert read(s, "@snapshot/c") == C
    st.close(h)
    s.stop()
    s = server(d)
    for _ in range(300):
        j = cmd(s, "@snapshot:list")
        if [x["name"] for x in j["snapshots"]] == ["c"]:
            break
        time.sleep(0.1)
    assert [x["name"] for x in j["snapshots"]] == ["c"], j
    assert read(s, "@snapshot/c") == C
    live = read(s)
    assert live == (L if sticky else L[:3 * B] + b"4" * B + L[4 * B:])
    s.stop()
    print("C: a merge whose %s failed said so (%s); finished at restart" %
          (calls, "failed state" if sticky else "live disk goes on"))
EOF
