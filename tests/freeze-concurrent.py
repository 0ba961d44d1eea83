#!/usr/bin/python3
# nbdsnap freeze tests: frozen views copied while writers hammer the disk.
#
#   freeze-concurrent.py SOCKET WORKDIR
#
# The server on SOCKET must be --filter=freeze --filter=cbt over a disk of
# at least 16M whose content does not matter.  Several writer threads, each
# with its own NBD connection to the live disk, write random data (and
# zero and trim) at random places of the first half of the disk.
#
#  1. The writers are paused (no request in flight), @freeze:begin/BASE,
#     the whole live disk is read: that is BASE's expected image.  The
#     writers go on.  While they write, nbdcopy copies @freeze/BASE (over
#     several connections) and a reader thread reads random ranges of it:
#     both must equal the expected image byte for byte.
#  2. The same for NAME (BASE still held, so two points save at once);
#     a "quiet" region the writers never touch is changed (data, zero)
#     just before NAME, while they are paused.  Then @freeze:diff/BASE/NAME
#     is applied onto BASE's image (freeze-apply.py): it must reproduce
#     NAME's image, mark the quiet region exactly, and report the untouched
#     second half of the disk as unchanged (hole).
#  3. @freeze:begin/LIVE while the writers run (not paused): each writer
#     owns the 4K blocks b with b % N == its number and logs each write's
#     start and end times; every block of @freeze/LIVE must hold the
#     content after k of that block's writes, where k is at least the
#     number of writes finished before the begin was sent and at most the
#     number started before its answer arrived.
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

import nbd

sock, workdir = sys.argv[1], sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
NW = 4
K = 4096
t_start = time.time()


def log(*a):
    print("[%5.1fs]" % (time.time() - t_start), *a, flush=True)


def uri(export):
    return "nbd+unix:///%s?socket=%s" % (export, sock)


def conn(export):
    h = nbd.NBD()
    h.connect_uri(uri(export))
    return h


def cmd(export):
    h = conn(export)
    j = json.loads(h.pread(h.get_size(), 0).decode())
    h.shutdown()
    assert j["filter"] == "freeze" and j["ok"] is True, j
    return j


def read_all(h, size):
    out = bytearray()
    for off in range(0, size, 1 << 22):
        out += h.pread(min(1 << 22, size - off), off)
    return bytes(out)


def nbdcopy(export, dest):
    if os.path.exists(dest):
        os.unlink(dest)
    subprocess.run(["nbdcopy", uri(export), dest], check=True, timeout=120)
    return open(dest, "rb").read()


def first_diff(a, b):
    for i in range(0, len(a), K):
        if a[i:i + K] != b[i:i + K]:
            return i
    return None


live = conn("")
SIZE = live.get_size()
assert SIZE >= 16 << 20 and SIZE % (1 << 20) == 0, SIZE
HOT = SIZE // 2                       # writers stay in [0, HOT)
QUIET = HOT                           # [QUIET, QUIET + 1M): changed by us
COLD = HOT + (1 << 20)                # [COLD, SIZE): never written after fill

# Initial content: random data, with the last 1/8 of the disk left zero.
rnd = random.Random(1)
for off in range(0, SIZE - SIZE // 8, 1 << 20):
    live.pwrite(rnd.randbytes(1 << 20), off)
live.zero(SIZE // 8, SIZE - SIZE // 8)
live.flush()


class Writers:
    """Random writers (phase 1-2) or block-owning logged writers (3)."""

    def __init__(self, mode):
        self.mode = mode
        self.cond = threading.Condition()
        self.paused = False
        self.stop = False
        self.inflight = 0
        self.ops = 0
        self.errors = []
        self.logs = [dict() for _ in range(NW)]   # block -> [(t0, t1, sha)]
        self.threads = [threading.Thread(target=self.run, args=(i,))
                        for i in range(NW)]
        for t in self.threads:
            t.start()

    def run(self, i):
        try:
            h = conn("")
            r = random.Random(100 + i + (1000 if self.mode == "owned" else 0))
            seq = 0
            while True:
                with self.cond:
                    while self.paused and not self.stop:
                        self.cond.wait()
                    if self.stop:
                        break
                    self.inflight += 1
                try:
                    if self.mode == "random":
                        self.random_op(h, r)
                    else:
                        self.owned_op(h, r, i, seq)
                        seq += 1
                finally:
                    with self.cond:
                        self.inflight -= 1
                        self.ops += 1
                        self.cond.notify_all()
            h.shutdown()
        except Exception as e:                   # reported by finish()
            self.errors.append("writer %d: %r" % (i, e))
            with self.cond:
                self.cond.notify_all()

    @staticmethod
    def random_op(h, r):
        x = r.random()
        if x < 0.15:
            n = r.randint(1, 1024)               # small, unaligned
        else:
            n = r.randint(1, 32) * K             # up to 128K, aligned size
        off = r.randrange(0, HOT - n)
        if x > 0.5:
            off -= off % K                       # half of them aligned
        if x < 0.85:
            h.pwrite(r.randbytes(n), off)
        elif x < 0.95:
            h.zero(n, off)
        else:
            h.trim(n, off)

    def owned_op(self, h, r, i, seq):
        nb = HOT // K
        b = r.randrange(i, nb, NW)               # a block this writer owns
        if r.random() < 0.1:
            data = bytes(K)
            t0 = time.monotonic()
            h.zero(K, b * K)
        else:
            data = (b"w%d.%d." % (i, seq)) * (K // 8)
            data = data[:K].ljust(K, b".")
            t0 = time.monotonic()
            h.pwrite(data, b * K)
        t1 = time.monotonic()
        self.logs[i].setdefault(b, []).append(
            (t0, t1, hashlib.sha1(data).digest()))

    def pause(self):
        with self.cond:
            self.paused = True
            while self.inflight and not self.errors:
                self.cond.wait()
        self.check()

    def resume(self):
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def finish(self):
        with self.cond:
            self.stop = True
            self.cond.notify_all()
        for t in self.threads:
            t.join(60)
        self.check()

    def check(self):
        if self.errors:
            sys.exit("writer failed: %s" % self.errors)


def reader(export, expected, stop, result):
    """Random reads of a view while the writers run, checked."""
    try:
        h = conn(export)
        r = random.Random(7)
        n = 0
        while not stop.is_set():
            ln = r.choice((512, K, 65536, 65536 * 3 + 17))
            off = r.randrange(0, SIZE - ln)
            if h.pread(ln, off) != expected[off:off + ln]:
                result.append("%s: read %d+%d differs" % (export, off, ln))
                return
            n += 1
        h.shutdown()
        result.append(n)
    except Exception as e:
        result.append("%s: %r" % (export, e))


def copy_under_load(w, export, expected, what):
    stop = threading.Event()
    res = []
    t = threading.Thread(target=reader, args=(export, expected, stop, res))
    t.start()
    ops0 = w.ops
    got = nbdcopy(export, os.path.join(workdir, what))
    time.sleep(0.2)
    stop.set()
    t.join(60)
    w.check()
    d = first_diff(got, expected)
    if len(got) != len(expected) or d is not None:
        sys.exit("nbdcopy of %s differs from %s at offset %s"
                 % (export, what, d))
    if not res or not isinstance(res[0], int):
        sys.exit("reader of %s: %s" % (export, res))
    log("%s: nbdcopy and %d random reads exact, %d writes meanwhile"
        % (export, res[0], w.ops - ops0))
    if w.ops - ops0 < 20:
        sys.exit("too few writes (%d) during the copy of %s"
                 % (w.ops - ops0, export))


# ---------------------------------------------------------------- 1
w = Writers("random")
time.sleep(0.5)
w.pause()
cmd("@freeze:begin/BASE")
base_img = read_all(live, SIZE)
w.resume()
log("BASE frozen after %d writes" % w.ops)
time.sleep(0.3)
copy_under_load(w, "@freeze/BASE", base_img, "base.copy")
open(os.path.join(workdir, "base.img"), "wb").write(base_img)

# ---------------------------------------------------------------- 2
time.sleep(0.3)
w.pause()
# The quiet region: 256K of new data, an aligned 256K zeroed, 512K left.
live.pwrite(random.Random(9).randbytes(256 << 10), QUIET)
live.zero(256 << 10, QUIET + (256 << 10))
cmd("@freeze:begin/NAME")
name_img = read_all(live, SIZE)
w.resume()
log("NAME frozen after %d writes" % w.ops)
time.sleep(0.3)
copy_under_load(w, "@freeze/NAME", name_img, "name.copy")
copy_under_load(w, "@freeze/BASE", base_img, "base.copy2")

incr = os.path.join(workdir, "incr.img")
p = subprocess.run([sys.executable, os.path.join(here, "freeze-apply.py"),
                    uri("@freeze:diff/BASE/NAME"),
                    os.path.join(workdir, "base.img"), incr, "--summary"],
                   check=True, timeout=120, capture_output=True, text=True)
got = open(incr, "rb").read()
d = first_diff(got, name_img)
if d is not None:
    sys.exit("BASE image + @freeze:diff/BASE/NAME differs from NAME's image "
             "at offset %d" % d)
log("BASE + diff/BASE/NAME == NAME (%s)" % p.stdout.strip())
tot = dict(x.split("=") for x in p.stdout.split())
if int(tot["hole"]) < SIZE - COLD or int(tot["data"]) == 0 \
        or int(tot["zero"]) < (256 << 10):
    sys.exit("implausible change map of @freeze:diff/BASE/NAME: %s" % tot)

# The exact map of the quiet and cold regions.
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri("@freeze:diff/BASE/NAME"))
ext = []


def cb(meta, off, entries, err):
    o = off
    for i in range(0, len(entries), 2):
        ext.append((o, entries[i], entries[i + 1]))
        o += entries[i]
    return 0


h.block_status(SIZE - QUIET, QUIET, cb)
h.shutdown()
want = [(QUIET, 256 << 10, 0), (QUIET + (256 << 10), 256 << 10, 2),
        (QUIET + (512 << 10), SIZE - QUIET - (512 << 10), 1)]
merged = []
for (o, n, t) in ext:
    if merged and merged[-1][2] == t and merged[-1][0] + merged[-1][1] == o:
        merged[-1] = (merged[-1][0], merged[-1][1] + n, t)
    else:
        merged.append((o, n, t))
merged = [(o, min(n, SIZE - o), t) for (o, n, t) in merged if o < SIZE]
if merged != want:
    sys.exit("map of @freeze:diff/BASE/NAME from %d: %s, expected %s"
             % (QUIET, merged, want))
log("map of the quiet and cold regions exact")

pts = cmd("@freeze:list")["points"]
assert [x["name"] for x in pts] == ["BASE", "NAME"], pts
assert all(x["scratch_bytes"] > 0 and not x["aborted"] for x in pts), pts
cmd("@freeze:end/BASE")
cmd("@freeze:end/NAME")
w.finish()
log("random writers: %d requests" % w.ops)

# ---------------------------------------------------------------- 3
pre = read_all(live, SIZE)
w = Writers("owned")
time.sleep(0.5)
w.check()
tb0 = time.monotonic()
cmd("@freeze:begin/LIVE")
tb1 = time.monotonic()
ops_at = w.ops
time.sleep(0.5)
frozen = read_all(conn("@freeze/LIVE"), SIZE)
w.finish()
log("LIVE frozen under load after %d writes (%d in total)" % (ops_at, w.ops))
assert frozen[HOT:] == pre[HOT:], "untouched half of @freeze/LIVE differs"
inflight_blocks = 0
for i in range(NW):
    for b, writes in w.logs[i].items():
        got = hashlib.sha1(frozen[b * K:(b + 1) * K]).digest()
        kmin = sum(1 for (t0, t1, s) in writes if t1 < tb0)
        kmax = sum(1 for (t0, t1, s) in writes if t0 <= tb1)
        states = [hashlib.sha1(pre[b * K:(b + 1) * K]).digest()] + \
            [s for (t0, t1, s) in writes]
        if got not in states[kmin:kmax + 1]:
            where = [k for k, s in enumerate(states) if s == got]
            sys.exit("block %d of @freeze/LIVE: content after %s of its "
                     "writes, expected between %d and %d"
                     % (b, where or "none", kmin, kmax))
        if kmax > kmin:
            inflight_blocks += 1
# Blocks no writer touched are as before.
touched = set()
for i in range(NW):
    touched.update(w.logs[i])
for b in range(HOT // K):
    if b not in touched and frozen[b * K:(b + 1) * K] != pre[b * K:(b + 1) * K]:
        sys.exit("untouched block %d of @freeze/LIVE differs" % b)
log("@freeze/LIVE consistent with the write log (%d blocks written, %d "
    "with a write in flight at the begin)" % (len(touched), inflight_blocks))
cmd("@freeze:end/LIVE")
assert cmd("@freeze:list")["points"] == []
live.shutdown()
