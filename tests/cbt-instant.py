#!/usr/bin/python3
"""cbt filter: a snapshot and a checkpoint at one instant, under racing writes.

  cbt-instant.py SOCKET ROUNDS

The server on SOCKET is --filter=cbt --filter=snapshot (a freeze filter
above may be there too) with 4K blocks in both filters, over a disk of at
least 8M.  NW writers, each on its own connection, write continuously:
writer w owns the blocks b with b % NW == w of the first 8M and writes
sequence-numbered blocks (block b after writer w's write number s holds
"w s b" repeated), one at a time, to random blocks of its own.  Meanwhile
the main thread runs @cbt:create/Si/snapshot for i = 1 .. ROUNDS, and once
a create that must fail (the snapshot name is taken): it must leave no
checkpoint behind.  After the writers stop (more writes after the last
instant), for every Si:

  * @snapshot/Si is a cut of every writer's stream: for each writer a
    number K (its writes 1..K are in the snapshot, none after), every block
    holding exactly its last write numbered <= K (or zeroes);
  * the change map @cbt:diff/S(i-1)/Si (S0 = a checkpoint made before the
    writers start) is exactly the blocks written by writes numbered in
    (K(i-1), K(i)] of any writer, and @cbt/S(last) exactly the blocks
    written after the last cut.

So every write is in both the snapshot and the checkpoint's interval, or
in neither.
"""
import json
import os
import random
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snaptest as st  # noqa: E402
import nbd  # noqa: E402

sock, rounds = sys.argv[1], int(sys.argv[2])
K = 4096
NB = 2048                       # blocks written: the first 8M
NW = 4
t0 = time.time()


def log(*a):
    print("[%5.2fs]" % (time.time() - t0), *a, flush=True)


def fail(msg):
    sys.exit("cbt-instant: FAIL: " + msg)


def block(w, s, b):
    return struct.pack("<III", w + 1, s, b) * (K // 12) + bytes(K % 12)


def command(export):
    h = st.connect(sock, export)
    try:
        n = h.get_size()
        return json.loads(h.pread(n, 0).decode("utf-8"))
    finally:
        h.shutdown()


stop = threading.Event()
logs = [[] for _ in range(NW)]  # per writer: block of write s at [s - 1]
errors = []
slowest = [0.0] * NW            # per writer: its longest write (seconds)


def writer(w):
    try:
        h = st.connect(sock, "")
        rnd = random.Random(1000 + w)
        mine = [b for b in range(NB) if b % NW == w]
        s = 0
        while not stop.is_set():
            b = rnd.choice(mine)
            s += 1
            t = time.monotonic()
            h.pwrite(block(w, s, b), b * K)
            slowest[w] = max(slowest[w], time.monotonic() - t)
            logs[w].append(b)
        h.shutdown()
    except Exception as e:      # noqa: BLE001
        errors.append("writer %d: %r" % (w, e))


def cut_of(name):
    """The per-writer cut K of snapshot name, checking the content."""
    h = st.connect(sock, "@snapshot/" + name)
    data = h.pread(NB * K, 0)
    h.shutdown()
    seen = {}                   # block -> (w, s); absent: zeroes
    for b in range(NB):
        d = data[b * K:(b + 1) * K]
        if d == bytes(K):
            continue
        w1, s, bb = struct.unpack("<III", d[:12])
        if w1 < 1 or w1 > NW or bb != b or d != block(w1 - 1, s, b):
            fail("%s: block %d holds neither zeroes nor a whole write" %
                 (name, b))
        seen[b] = (w1 - 1, s)
    cut = []
    for w in range(NW):
        k = max([s for (ww, s) in seen.values() if ww == w], default=0)
        last = {}
        for i, b in enumerate(logs[w][:k]):
            last[b] = i + 1
        for b in range(w, NB, NW):
            want = (w, last[b]) if b in last else None
            if seen.get(b) != want:
                fail("%s: block %d holds write %r of writer %d, but the cut "
                     "at its write %d says %r: not one instant" %
                     (name, b, seen.get(b), w, k, want))
        cut.append(k)
    return cut


def written(lo, hi):
    """Blocks written by writes numbered in (lo[w], hi[w]] of writer w."""
    out = set()
    for w in range(NW):
        out.update(logs[w][lo[w]:hi[w]])
    return out


def changed(export):
    h = st.connect(sock, export)
    ex = st.extents(h)
    h.shutdown()
    out = set()
    for (o, n, f) in ex:
        if not (f & nbd.STATE_HOLE):
            out.update(range(o // K, (o + n + K - 1) // K))
    return {b for b in out if b < NB}


def main():
    j = command("@cbt:create/S0")
    if not j["ok"]:
        fail("@cbt:create/S0: %r" % j)
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(NW)]
    for t in threads:
        t.start()
    rnd = random.Random(7)
    names = ["S0"]
    for i in range(1, rounds + 1):
        # Short intervals: each writes some of the blocks, not all.
        time.sleep(0.02 + rnd.random() * 0.06)
        if i == 2:
            # All or nothing: a snapshot X exists, so X/snapshot fails
            # and must leave no checkpoint X (its interval goes on).
            if not command("@snapshot:create/X")["ok"]:
                fail("@snapshot:create/X failed")
            j = command("@cbt:create/X/snapshot")
            if j["ok"] or j.get("errno") != "EEXIST":
                fail("@cbt:create/X/snapshot: expected EEXIST: %r" % j)
            time.sleep(0.1)
        before = sum(len(x) for x in logs)
        t = time.time()
        if os.environ.get("INSTANT_TWO_COMMANDS"):
            # The checker's own test: two commands are two instants.
            command("@cbt:create/S%d" % i)
            j = command("@snapshot:create/S%d" % i)
            j = {"ok": j["ok"], "checkpoint": {"name": "S%d" % i},
                 "snapshot": j.get("snapshot")}
        else:
            j = command("@cbt:create/S%d/snapshot" % i)
        if not j["ok"] or j["checkpoint"]["name"] != "S%d" % i or \
           j["snapshot"]["name"] != "S%d" % i:
            fail("@cbt:create/S%d/snapshot: %r" % (i, j))
        log("S%d made in %.1f ms, %d writes so far" %
            (i, (time.time() - t) * 1000, before))
        names.append("S%d" % i)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        fail("; ".join(errors))
    total = [len(x) for x in logs]
    log("writers stopped after %r writes; the longest write took %.1f ms" %
        (total, max(slowest) * 1000))

    cps = [c["name"] for c in command("@cbt:list")["checkpoints"]]
    if cps != names:
        fail("checkpoints %r, expected %r (X must not be there)" % (cps, names))
    cuts = [[0] * NW] + [cut_of(n) for n in names[1:]]
    for i in range(1, len(names)):
        lo, hi = cuts[i - 1], cuts[i]
        if any(a > b for a, b in zip(lo, hi)):
            fail("cut of %s %r is before the cut of %s %r" %
                 (names[i], hi, names[i - 1], lo))
        if sum(hi) - sum(lo) == 0:
            fail("no write between %s and %s: the writers did not race" %
                 (names[i - 1], names[i]))
        got = changed("@cbt:diff/%s/%s" % (names[i - 1], names[i]))
        want = written(lo, hi)
        if got != want:
            fail("@cbt:diff/%s/%s: extra %r, missing %r" %
                 (names[i - 1], names[i], sorted(got - want)[:10],
                  sorted(want - got)[:10]))
        if len(want) == NB:
            fail("every block was written between %s and %s: the interval "
                 "check would prove nothing" % (names[i - 1], names[i]))
        log("%s: cut %r; %d of %d blocks in both the snapshot and its "
            "interval" % (names[i], hi, len(want), NB))
    got = changed("@cbt/" + names[-1])
    want = written(cuts[-1], total)
    if not want:
        fail("no write after the last instant")
    if got != want:
        fail("@cbt/%s: extra %r, missing %r" % (names[-1],
             sorted(got - want)[:10], sorted(want - got)[:10]))
    log("ok: %d instants, every write in both or in neither" % rounds)


main()
