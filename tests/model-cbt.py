#!/usr/bin/python3
"""Helpers and randomized workloads for the cbt filter tests.

As a module (tests/cbt-functions.sh loads it by path): connect_uri, close,
command, changed_blocks.

As a program:

  model-cbt.py model --filter SO --workdir DIR [--granularity N]
               [--disk-size N] [--threads N] [--seconds N] [--seed N]
      (test-cbt-model.sh) Several threads, each with its own libnbd
      connection, write / zero / trim at random (aligned or not, one byte
      to several blocks), while checkpoints are created (sometimes in the
      middle of the writing) and deleted at random, with clean restarts
      that may switch cbt-sync.  The model records, at block granularity,
      which blocks every write touched and between which checkpoints it
      fell.  After every phase the change map since every checkpoint (and
      between random pairs) must equal the model: never a block missing,
      never an extra one.  A write that raced with a checkpoint creation
      may be on either side of it; only those blocks are allowed either
      way.  The seed is printed; --seed (or MODEL_SEED) reproduces a run.

  model-cbt.py storm --sock SOCK --out FILE --prefix P [--threads N]
               [--disk-size N] [--granularity N] [--seed N]
      (test-cbt-crash-strict.sh) Creates checkpoint P1, then writers on
      separate connections write random blocks while P2, P3, ... are
      created, until the server goes away (kill -9).  Every write's submit
      and acknowledgement time (CLOCK_MONOTONIC) and every checkpoint's
      create times are saved to FILE (JSON).

  model-cbt.py verify-storm --sock SOCK --granularity N FILE...
      After the restart: for each checkpoint created in the storms, the
      change map since it must contain every block of every acknowledged
      write submitted after its creation was acknowledged, and nothing
      that only writes acknowledged before its creation was asked touched.
"""

import argparse
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snaptest as st  # noqa: E402
import nbd  # noqa: E402

HOLE, ZERO = nbd.STATE_HOLE, nbd.STATE_ZERO


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


# ------------------------------------------------------------ helpers
def connect_uri(uri):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    return h


def close(h):
    st.close(h)


def command(sock, export):
    """Run a cbt command export once; return its JSON (a dict)."""
    h = st.connect(sock, export)
    try:
        n = h.get_size()
        text = h.pread(n, 0).decode("utf-8") if n else ""
    finally:
        close(h)
    check(text.endswith("\n") and text.count("\n") == 1,
          "command %s: not one line: %r" % (export, text))
    j = json.loads(text)
    verb = export[len("@cbt:"):].split("/")[0]
    check(j.get("filter") == "cbt" and j.get("command") == verb and
          isinstance(j.get("ok"), bool), "command %s: %r" % (export, j))
    return j


def command_ok(sock, export):
    j = command(sock, export)
    check(j["ok"] is True, "command %s failed: %r" % (export, j))
    return j


def changed_blocks(h, gran):
    """Blocks a change map view (handle h) reports as changed.  Checks the
    encoding: no hole+zero, runs of changed blocks start and end on block
    boundaries (or at the end of the disk)."""
    size = h.get_size()
    ex = st.extents(h)
    blocks = set()
    prev_changed = None
    for (o, n, f) in ex:
        check(f in (0, HOLE, ZERO), "extent %d+%d has type %d" % (o, n, f))
        ch = not (f & HOLE)
        if prev_changed is not None and ch != prev_changed:
            check(o % gran == 0, "changed/unchanged boundary at %d is not "
                  "on a %d-byte block boundary" % (o, gran))
        prev_changed = ch
        if ch:
            blocks.update(range(o // gran, (o + n + gran - 1) // gran))
    check(sum(n for (_, n, _) in ex) == size, "extents do not cover the disk")
    return blocks


def view_blocks(sock, export, gran):
    h = st.connect(sock, export)
    try:
        return changed_blocks(h, gran)
    finally:
        close(h)


def blocks_of(off, n, gran):
    return range(off // gran, (off + n - 1) // gran + 1)


def fmt(s, limit=20):
    s = sorted(s)
    return "%d blocks %s%s" % (len(s), s[:limit], "..." if len(s) > limit else "")


# ------------------------------------------------------------ model
class Model:
    """Writes are recorded per (emin, emax): the write fell after checkpoint
    epoch emin was created and before epoch emax + 1 was (emin == emax
    unless it raced with a creation).  Checkpoint epochs count from 1;
    writes before the first checkpoint have epoch 0."""

    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.gran = a.granularity
        self.size = a.disk_size
        self.img = os.path.join(a.workdir, "disk-%d.img" % a.granularity)
        with open(self.img, "wb") as f:
            f.write(random.Random(a.seed + 1).randbytes(self.size))
        self.cbtdir = os.path.join(a.workdir, "cbt-%d" % a.granularity)
        self.sync = self.rng.choice(["strict", "flush"])
        # (st.Server leaves WORKDIR/NAME.bgpid for the shell's cleanup.)
        self.srv = st.Server(a.workdir, "model-%d" % a.granularity,
                             self.server_args())
        self.epoch = 0               # epochs created so far
        self.cps = []                # [(name, epoch)] oldest first
        self.writes = {}             # (emin, emax) -> set(blocks)
        self.nnames = 0
        self.stats = {"ops": 0, "checks": 0, "creates": 0, "raced": 0,
                      "deletes": 0, "restarts": 0, "phases": 0}

    def server_args(self):
        return ["--filter=" + self.a.filter, "file", self.img,
                "cbt-dir=" + self.cbtdir, "cbt-granularity=%d" % self.gran,
                "cbt-sync=" + self.sync]

    def add_writes(self, emin, emax, blocks):
        if blocks:
            self.writes.setdefault((emin, emax), set()).update(blocks)

    def bounds(self, lo, hi):
        """(sure, possible) blocks written in epochs [lo, hi)."""
        sure, poss = set(), set()
        for (emin, emax), b in self.writes.items():
            if emin >= lo and emax < hi:
                sure |= b
            if emax >= lo and emin < hi:
                poss |= b
        return sure, poss

    # ------------------------------------------------------- workload
    def random_op(self, rng):
        g = self.gran
        kind = rng.choices(["write", "zero", "trim"], [6, 2, 2])[0]
        if rng.random() < 0.5:          # block aligned, 1..4 blocks
            n = g * rng.randint(1, 4)
            off = g * rng.randrange(self.size // g - 4)
        else:                           # anything: 1 byte .. 3 blocks
            n = rng.randint(1, 3 * g)
            off = rng.randrange(self.size - n)
        if rng.random() < 0.7:          # a hot area keeps maps sparse
            off = off % (self.size // 4)
        return kind, off, n

    def writer(self, idx, nops, seed, out, t_stop):
        rng = random.Random(seed)
        h = st.connect(self.srv.sock, "")
        try:
            for _ in range(nops):
                if t_stop and time.monotonic() > t_stop:
                    break
                kind, off, n = self.random_op(rng)
                t0 = time.monotonic()
                if kind == "write":
                    h.pwrite(rng.randbytes(n), off)
                elif kind == "zero":
                    h.zero(n, off, nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.3 else 0)
                else:
                    h.trim(n, off)
                t1 = time.monotonic()
                out.append((t0, t1, kind, off, n))
                if rng.random() < 0.05:
                    h.flush()
        except Exception as e:          # reported by the main thread
            out.append(("error", repr(e)))
        finally:
            close(h)

    def phase(self):
        """Parallel writers; maybe a checkpoint created while they run."""
        rng = self.rng
        nthreads = rng.randint(1, self.a.threads)
        nops = rng.randint(1, 25)
        outs = [[] for _ in range(nthreads)]
        ths = [threading.Thread(target=self.writer,
                                args=(i, nops, rng.getrandbits(32), outs[i], None))
               for i in range(nthreads)]
        race = rng.random() < 0.3
        for t in ths:
            t.start()
        created = None
        if race:
            time.sleep(rng.random() * 0.02)
            name = self.new_name()
            c0 = time.monotonic()
            command_ok(self.srv.sock, "@cbt:create/" + name)
            c1 = time.monotonic()
            created = (c0, c1)
            self.stats["raced"] += 1
        for t in ths:
            t.join()
        e = self.epoch
        for o in outs:
            for rec in o:
                check(rec[0] != "error", "writer failed: %s" % (rec,))
                t0, t1, kind, off, n = rec
                b = blocks_of(off, n, self.gran)
                self.stats["ops"] += 1
                if created is None:
                    self.add_writes(e, e, b)
                elif t1 < created[0]:
                    self.add_writes(e, e, b)
                elif t0 > created[1]:
                    self.add_writes(e + 1, e + 1, b)
                else:
                    self.add_writes(e, e + 1, b)
        if created is not None:
            self.epoch += 1
            self.cps.append((name, self.epoch))
            self.stats["creates"] += 1
        self.stats["phases"] += 1

    def new_name(self):
        self.nnames += 1
        return self.rng.choice(["B", "ckpt.", "c-", "x_"]) + str(self.nnames)

    def create(self):
        name = self.new_name()
        j = command_ok(self.srv.sock, "@cbt:create/" + name)
        check(j["checkpoint"]["name"] == name and j["checkpoint"]["dirty_blocks"] == 0,
              "create result: %r" % j)
        self.epoch += 1
        self.cps.append((name, self.epoch))
        self.stats["creates"] += 1

    def delete(self):
        i = self.rng.randrange(len(self.cps))
        name = self.cps[i][0]
        j = command_ok(self.srv.sock, "@cbt:delete/" + name)
        want = self.cps[i - 1][0] if i > 0 else None
        check(j.get("merged_into") == want,
              "delete %s: merged_into %r, expected %r" % (name, j.get("merged_into"), want))
        del self.cps[i]
        self.stats["deletes"] += 1

    def restart(self):
        self.srv.stop()
        if self.rng.random() < 0.3:
            self.sync = "strict" if self.sync == "flush" else "flush"
            self.srv.args = self.server_args()
        self.srv.start()
        self.stats["restarts"] += 1

    # ------------------------------------------------------- checking
    def check_all(self):
        sock, g = self.srv.sock, self.gran
        lst = command_ok(sock, "@cbt:list")
        check([c["name"] for c in lst["checkpoints"]] == [n for n, _ in self.cps],
              "list %r != model %r" % ([c["name"] for c in lst["checkpoints"]],
                                        [n for n, _ in self.cps]))
        check(lst["granularity"] == g and lst["disk_size"] == self.size and
              lst["sync"] == self.sync, "list header: %r" % lst)
        top = self.epoch + 1
        for (name, ep), c in zip(self.cps, lst["checkpoints"]):
            sure, poss = self.bounds(ep, top)
            got = view_blocks(sock, "@cbt/" + name, g)
            self.compare("@cbt/" + name, got, sure, poss)
            check(c["consistent"] is True, "%s inconsistent: %r" % (name, c))
            check(c["dirty_blocks"] == len(got) and
                  c["dirty_bytes"] == min(len(got) * g, self.size),
                  "list %r vs map %d blocks" % (c, len(got)))
            self.stats["checks"] += 1
        if len(self.cps) >= 2:
            for _ in range(2):
                i, k = sorted(self.rng.sample(range(len(self.cps)), 2))
                (na, ea), (nb, eb) = self.cps[i], self.cps[k]
                sure, poss = self.bounds(ea, eb)
                got = view_blocks(sock, "@cbt:diff/%s/%s" % (na, nb), g)
                self.compare("@cbt:diff/%s/%s" % (na, nb), got, sure, poss)
                self.stats["checks"] += 1

    def compare(self, what, got, sure, poss):
        missing = sure - got
        extra = got - poss
        check(not missing and not extra,
              "%s: missing %s; extra %s (model: %s, raced %s)" %
              (what, fmt(missing), fmt(extra), fmt(sure), fmt(poss - sure)))

    def run(self):
        self.srv.start()
        try:
            t_end = time.monotonic() + self.a.seconds
            # Untracked writes before the first checkpoint.
            self.phase()
            while time.monotonic() < t_end:
                r = self.rng.random()
                pdel = 0.1 if len(self.cps) < 6 else 0.4
                if r < 0.2 or not self.cps:
                    self.create()
                elif r < 0.2 + pdel:
                    self.delete()
                elif r < 0.25 + pdel:
                    self.restart()
                self.phase()
                self.check_all()
            self.restart()
            self.check_all()
            self.srv.stop()
        finally:
            self.srv.cleanup()
        print("model-cbt: seed %d granularity %d: %s" %
              (self.a.seed, self.gran, self.stats))


# ------------------------------------------------------------ storm
def storm(a):
    rng = random.Random(a.seed)
    g = a.granularity
    nblocks = a.disk_size // g
    recs = {"writes": [], "creates": []}
    lock = threading.Lock()
    stop = threading.Event()

    def create(name):
        t0 = time.monotonic()
        try:
            j = command(a.sock, "@cbt:create/" + name)
            ok = j["ok"]
        except Exception:
            ok = None
        t1 = time.monotonic()
        with lock:
            recs["creates"].append({"name": name, "t0": t0,
                                    "t1": t1 if ok else None})
        return ok

    def writer(seed):
        r = random.Random(seed)
        try:
            h = st.connect(a.sock, "")
        except nbd.Error:
            return
        try:
            while not stop.is_set():
                n = r.randint(1, 4)
                b = r.randrange(nblocks - n)
                off = b * g + r.randrange(g)
                length = (n - 1) * g + r.randint(1, g)
                length = min(length, a.disk_size - off)
                t0 = time.monotonic()
                rec = {"t0": t0, "t1": None, "off": off, "n": length}
                with lock:
                    recs["writes"].append(rec)
                h.pwrite(r.randbytes(length), off)
                rec["t1"] = time.monotonic()
        except nbd.Error:
            pass
        finally:
            stop.set()

    if create(a.prefix + "1") is not True:
        sys.exit("storm: cannot create the first checkpoint")
    ths = [threading.Thread(target=writer, args=(rng.getrandbits(32),))
           for _ in range(a.threads)]
    for t in ths:
        t.start()
    print("storm: started", flush=True)
    k = 2
    while not stop.is_set():
        time.sleep(rng.uniform(0.05, 0.4))
        if stop.is_set():
            break
        create("%s%d" % (a.prefix, k))
        k += 1
    for t in ths:
        t.join()
    with open(a.out, "w") as f:
        json.dump(recs, f)
    print("storm: %d writes (%d acknowledged), %d checkpoints" %
          (len(recs["writes"]), sum(1 for w in recs["writes"] if w["t1"]),
           len(recs["creates"])), flush=True)


def verify_storm(a):
    g = a.granularity
    writes, creates = [], []
    for fn in a.files:
        with open(fn) as f:
            r = json.load(f)
        writes += r["writes"]
        creates += r["creates"]
    lst = command_ok(a.sock, "@cbt:list")
    have = {c["name"]: c for c in lst["checkpoints"]}
    nchecked = 0
    for c in creates:
        name = c["name"]
        if c["t1"] is not None:
            check(name in have, "checkpoint %s was acknowledged but is gone "
                  "after kill -9" % name)
        if name not in have:
            continue
        check(have[name]["consistent"] is True,
              "strict mode: %s inconsistent after kill -9" % name)
        got = view_blocks(a.sock, "@cbt/" + name, g)
        must, may = set(), set()
        for w in writes:
            b = blocks_of(w["off"], w["n"], g)
            if c["t1"] is not None and w["t1"] is not None and w["t0"] > c["t1"]:
                must.update(b)
            if w["t1"] is None or w["t1"] > c["t0"]:
                may.update(b)
        missing = must - got
        extra = got - may
        check(not missing, "%s: acknowledged writes missing from the change "
              "map after kill -9: %s" % (name, fmt(missing)))
        check(not extra, "%s: blocks changed that no write after it touched: %s"
              % (name, fmt(extra)))
        check(have[name]["dirty_blocks"] == len(got), "list %r vs map %d"
              % (have[name], len(got)))
        nchecked += 1
    check(nchecked > 0, "no checkpoint checked")
    print("verify-storm: %d checkpoints, %d writes (%d acknowledged): ok" %
          (nchecked, len(writes), sum(1 for w in writes if w["t1"])))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--filter", required=True)
    m.add_argument("--workdir", required=True)
    m.add_argument("--granularity", type=int, default=4096)
    m.add_argument("--disk-size", type=int, default=4 << 20)
    m.add_argument("--threads", type=int, default=4)
    m.add_argument("--seconds", type=float, default=60)
    m.add_argument("--seed", type=int,
                   default=int(os.environ.get("MODEL_SEED") or
                               random.SystemRandom().getrandbits(31)))
    s = sub.add_parser("storm")
    s.add_argument("--sock", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--prefix", required=True)
    s.add_argument("--threads", type=int, default=6)
    s.add_argument("--disk-size", type=int, default=64 << 20)
    s.add_argument("--granularity", type=int, default=4096)
    s.add_argument("--seed", type=int, default=1)
    v = sub.add_parser("verify-storm")
    v.add_argument("--sock", required=True)
    v.add_argument("--granularity", type=int, required=True)
    v.add_argument("files", nargs="+")
    a = p.parse_args()
    try:
        if a.cmd == "model":
            print("model-cbt: seed %d (set MODEL_SEED=%d to repeat)" % (a.seed, a.seed),
                  flush=True)
            Model(a).run()
        elif a.cmd == "storm":
            storm(a)
        else:
            verify_storm(a)
    except (Failure, AssertionError) as e:
        print("model-cbt %s: FAIL: %s" % (a.cmd, e), file=sys.stderr)
        if a.cmd == "model":
            print("model-cbt: seed was %d" % a.seed, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
