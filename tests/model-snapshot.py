#!/usr/bin/python3
"""Randomized model test of the snapshot filter (run by test-snapshot-model.sh).

An in-memory model holds the live disk (a bytearray), every snapshot (bytes
and parent) and, per layer, the set of blocks written in it.  Thousands of
random operations run against nbdkit + the snapshot filter over the file
plugin: aligned and unaligned writes / zeroes / trims (some with FUA), reads,
flushes on one of two live connections, snapshot create / revert (plain
with no live connection, plain refused with EBUSY while one is open, /force)
/ delete, and server restarts (clean SIGTERM, or kill -9 right after a
flush).  Every read is compared with the model; at intervals the whole live
disk, every snapshot view, the @snapshot:list document and the change maps
(@snapshot:diff/BASE[/NAME]) are checked against the model.

Usage: model-snapshot.py --filter SO --workdir DIR --block-size N
                         [--disk-size N] [--seconds N] [--ops N] [--seed N]
The seed is printed; set it (or MODEL_SEED) to reproduce a failure.
"""

import argparse
import collections
import os
import random
import sys
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


class Model:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.bs = a.block_size
        self.size = a.disk_size
        self.workdir = a.workdir
        self.snapdir = os.path.join(a.workdir, "snap-%d" % a.block_size)
        self.basefile = os.path.join(a.workdir, "base-%d.img" % a.block_size)
        base = random.Random(a.seed ^ 0x5eed).randbytes(self.size)
        # A few zero blocks in the base, so zero-detection bugs show.
        base = bytearray(base)
        for _ in range(4):
            b = self.rng.randrange(self.size // self.bs)
            base[b * self.bs:(b + 1) * self.bs] = bytes(self.bs)
        with open(self.basefile, "wb") as f:
            f.write(base)
        self.live = bytearray(base)
        self.live_parent = None
        self.live_dirty = set()
        # name -> {"data": bytes, "parent": name|None, "dirty": set(blocks)}
        self.snaps = {}
        self.srv = st.Server(self.workdir, "model-%d" % self.bs,
                             ["--filter=" + a.filter, "file", self.basefile,
                              "snapshot-dir=" + self.snapdir,
                              "snapshot-block-size=%d" % self.bs])
        self.conns = []
        self.pending = {}        # deleted, maybe still merging: name -> parent
        self.history = collections.deque(maxlen=40)
        self.stats = collections.Counter()

    # ------------------------------------------------------------ helpers
    def log(self, s):
        self.history.append(s)

    def open_conns(self):
        while len(self.conns) < 2:
            self.conns.append(st.connect(self.srv.sock, ""))

    def close_conns(self):
        for h in self.conns:
            st.close(h)
        self.conns = []

    def conn(self):
        self.open_conns()
        return self.rng.choice(self.conns)

    def cmd(self, export):
        self.log("command " + export)
        j = st.command(self.srv.sock, export)
        self.log("  -> %s" % j)
        return j

    def blocks(self, off, n):
        return set(range(off // self.bs, (off + n - 1) // self.bs + 1))

    def rand_range(self):
        bs, size, r = self.bs, self.size, self.rng
        if r.random() < 0.5:
            nb = r.randint(1, 3)
            off = r.randrange(0, size // bs - nb + 1) * bs
            n = nb * bs
        else:
            n = r.randint(1, 3 * bs)
            off = r.randrange(0, size - n + 1)
        return off, n

    def chain(self, parent):
        """Names from parent up to the root."""
        out = []
        while parent is not None:
            out.append(parent)
            parent = self.snaps[parent]["parent"]
        return out

    def name(self):
        r = self.rng
        x = r.random()
        if x < 0.05:
            return "L" * 60 + "%04d" % r.randrange(10)   # 64 characters
        if x < 0.10:
            return "a.b-c_%d" % r.randrange(3)
        return "s%d" % r.randrange(7)

    # ------------------------------------------------------------ data ops
    def op_write(self):
        off, n = self.rand_range()
        data = self.rng.randbytes(n)
        fua = self.rng.random() < 0.2
        self.log("write off=%d n=%d fua=%s" % (off, n, fua))
        self.conn().pwrite(data, off, nbd.CMD_FLAG_FUA if fua else 0)
        self.live[off:off + n] = data
        self.live_dirty |= self.blocks(off, n)

    def op_zero(self):
        off, n = self.rand_range()
        flags = 0
        if self.rng.random() < 0.2:
            flags |= nbd.CMD_FLAG_FUA
        if self.rng.random() < 0.3:
            flags |= nbd.CMD_FLAG_NO_HOLE
        self.log("zero off=%d n=%d flags=%d" % (off, n, flags))
        self.conn().zero(n, off, flags)
        self.live[off:off + n] = bytes(n)
        self.live_dirty |= self.blocks(off, n)

    def op_trim(self):
        off, n = self.rand_range()
        fua = self.rng.random() < 0.2
        self.log("trim off=%d n=%d fua=%s" % (off, n, fua))
        self.conn().trim(n, off, nbd.CMD_FLAG_FUA if fua else 0)
        # Contract: trim makes the range read as zeroes.
        self.live[off:off + n] = bytes(n)
        self.live_dirty |= self.blocks(off, n)

    def op_read(self):
        off, n = self.rand_range()
        self.log("read off=%d n=%d" % (off, n))
        got = self.conn().pread(n, off)
        if got != bytes(self.live[off:off + n]):
            bad = next(i for i in range(n) if got[i] != self.live[off + i])
            raise Failure("read off=%d n=%d differs from the model at byte %d "
                          "(disk offset %d, block %d): got %r expected %r"
                          % (off, n, bad, off + bad, (off + bad) // self.bs,
                             got[bad:bad + 16], bytes(self.live[off + bad:off + bad + 16])))

    def op_flush(self):
        self.log("flush")
        self.conn().flush()

    # ------------------------------------------------------------ commands
    def op_create(self):
        if len(self.snaps) >= 8:
            return self.op_delete()
        name = self.name()
        j = self.cmd("@snapshot:create/" + name)
        if name in self.snaps:
            check(not j["ok"] and j["errno"] == "EEXIST",
                  "create of existing %s: expected EEXIST, got %r" % (name, j))
            return
        if not j["ok"] and j["errno"] in ("EEXIST", "EBUSY"):
            # Tolerated while a deleted snapshot of that name is still being
            # merged (listed with "merging": true until then): once merges
            # are done, the create must work.
            self.wait_merged()
            j = self.cmd("@snapshot:create/" + name)
            self.stats["create-while-merging"] += 1
        check(j["ok"], "create %s failed: %r" % (name, j))
        s = j.get("snapshot")
        check(isinstance(s, dict) and s.get("name") == name
              and self.resolve(s.get("parent")) == self.live_parent,
              "create %s: bad snapshot object %r (expected parent %r)"
              % (name, s, self.live_parent))
        self.pending.pop(name, None)
        self.snaps[name] = {"data": bytes(self.live), "parent": self.live_parent,
                            "dirty": self.live_dirty}
        self.live_parent = name
        self.live_dirty = set()
        self.stats["create"] += 1

    def op_revert(self):
        if not self.snaps or self.rng.random() < 0.05:
            name = "nosuch%d" % self.rng.randrange(3)
            j = self.cmd("@snapshot:revert/" + name)
            check(not j["ok"] and j["errno"] == "ENOENT",
                  "revert of unknown %s: expected ENOENT, got %r" % (name, j))
            return
        name = self.rng.choice(sorted(self.snaps))
        mode = self.rng.choice(["closed", "busy-force", "force-open"])
        if mode == "closed":
            self.close_conns()
            j = self.cmd("@snapshot:revert/" + name)
            if not j["ok"] and j["errno"] == "EBUSY":
                # The server may not have finished closing our connections
                # yet (NBD_CMD_DISC has no reply).  Retry briefly.
                for _ in range(50):
                    time.sleep(0.1)
                    j = self.cmd("@snapshot:revert/" + name)
                    if j["ok"] or j["errno"] != "EBUSY":
                        break
                self.stats["revert-retry"] += 1
            check(j["ok"], "revert %s with no live connection failed: %r" % (name, j))
        else:
            self.open_conns()
            if mode == "busy-force":
                j = self.cmd("@snapshot:revert/" + name)
                check(not j["ok"] and j["errno"] == "EBUSY",
                      "revert %s with live connections open: expected EBUSY, got %r"
                      % (name, j))
            j = self.cmd("@snapshot:revert/%s/force" % name)
            check(j["ok"], "revert %s/force failed: %r" % (name, j))
        check(j.get("snapshot") == name and isinstance(j.get("discarded_bytes"), int),
              "revert result: %r" % j)
        self.live = bytearray(self.snaps[name]["data"])
        self.live_parent = name
        self.live_dirty = set()
        self.stats["revert-" + mode] += 1

    def resolve(self, parent):
        """A parent as reported while merges may run: a deleted snapshot
        still merging stands for its own parent (it is listed, with
        "merging": true, until its merge is done)."""
        while parent in self.pending:
            parent = self.pending[parent]
        return parent

    def wait_merged(self):
        end = time.time() + 60
        while True:
            j = self.cmd("@snapshot:list")
            check(j["ok"], "list failed: %r" % j)
            if not any(s.get("merging") for s in j["snapshots"]):
                self.pending = {}
                return j
            check(time.time() < end, "merge still running after 60s: %r" % j)
            time.sleep(0.05)

    def op_delete(self):
        if not self.snaps or self.rng.random() < 0.05:
            name = "nosuch%d" % self.rng.randrange(3)
            j = self.cmd("@snapshot:delete/" + name)
            check(not j["ok"] and j["errno"] == "ENOENT",
                  "delete of unknown %s: expected ENOENT, got %r" % (name, j))
            return
        # A merge still running may legitimately make delete EBUSY.
        if self.rng.random() < 0.7:
            self.wait_merged()
        name = self.rng.choice(sorted(self.snaps))
        j = self.cmd("@snapshot:delete/" + name)
        if not j["ok"] and j["errno"] == "EBUSY":
            self.wait_merged()
            j = self.cmd("@snapshot:delete/" + name)
            self.stats["delete-busy-retry"] += 1
        check(j["ok"], "delete %s failed: %r" % (name, j))
        # merged_into: the child snapshots, and null for the active layer
        # if the live disk sits on NAME.
        children = set(c for c, s in self.snaps.items() if s["parent"] == name)
        if self.live_parent == name:
            children.add(None)
        mi = j.get("merged_into")
        check(j.get("snapshot") == name and isinstance(mi, list)
              and len(mi) == len(children) and set(mi) == children,
              "delete %s: result %r, expected merged_into %r" % (name, j, children))
        gone = self.snaps.pop(name)
        self.pending[name] = gone["parent"]
        for c, s in self.snaps.items():
            if s["parent"] == name:
                s["parent"] = gone["parent"]
                s["dirty"] = s["dirty"] | gone["dirty"]
        if self.live_parent == name:
            self.live_parent = gone["parent"]
            self.live_dirty = self.live_dirty | gone["dirty"]
        self.stats["delete"] += 1

    # ------------------------------------------------------------ checks
    def check_live(self):
        self.log("check live")
        h = self.conn()
        got = st.read_all(h)
        if got != bytes(self.live):
            bad = next(i for i in range(self.size) if got[i] != self.live[i])
            raise Failure("live disk differs from the model at offset %d (block %d)"
                          % (bad, bad // self.bs))

    def check_view(self, name):
        self.log("check view " + name)
        h = st.connect(self.srv.sock, "@snapshot/" + name)
        try:
            check(h.is_read_only(), "view %s is not read-only" % name)
            check(h.get_size() == self.size, "view %s has size %d" % (name, h.get_size()))
            got = st.read_all(h)
            want = self.snaps[name]["data"]
            if got != want:
                bad = next(i for i in range(self.size) if got[i] != want[i])
                raise Failure("view @snapshot/%s differs from the model at offset %d "
                              "(block %d)" % (name, bad, bad // self.bs))
        finally:
            st.close(h)

    def check_diff(self, base, name=None):
        """@snapshot:diff/BASE[/NAME]: hole = not written since BASE (and
        equal to BASE), data/zero = written since BASE; zero reads as 0."""
        if name is None:
            export, data, parent, dirty = ("@snapshot:diff/" + base, bytes(self.live),
                                           self.live_parent, self.live_dirty)
        else:
            s = self.snaps[name]
            export, data, parent, dirty = ("@snapshot:diff/%s/%s" % (base, name),
                                           s["data"], s["parent"], s["dirty"])
        changed = set(dirty)
        p = parent
        while p != base:
            changed |= self.snaps[p]["dirty"]
            p = self.snaps[p]["parent"]
        self.log("check " + export)
        h = st.connect(self.srv.sock, export)
        try:
            check(h.is_read_only(), "%s is not read-only" % export)
            ext = st.extents(h)
            got = st.read_all(h)
        finally:
            st.close(h)
        check(got == data, "%s content differs from the model" % export)
        basedata = self.snaps[base]["data"]
        bs = self.bs
        for (o, n, f) in ext:
            check(o % bs == 0 and (n % bs == 0 or o + n == self.size),
                  "%s: extent (%d,%d) not block-aligned" % (export, o, n))
            for b in range(o // bs, (o + n + bs - 1) // bs):
                blk = slice(b * bs, (b + 1) * bs)
                if f & HOLE:
                    check(b not in changed,
                          "%s: block %d reported unchanged (hole) but was written "
                          "since %s" % (export, b, base))
                    check(data[blk] == basedata[blk],
                          "%s: block %d reported unchanged but differs from %s"
                          % (export, b, base))
                else:
                    check(b in changed,
                          "%s: block %d reported changed (type %d) but was not "
                          "written since %s" % (export, b, f, base))
                    if f & ZERO:
                        check(data[blk] == bytes(bs),
                              "%s: block %d reported zero but is not" % (export, b))

    def check_list(self):
        j = self.wait_merged()
        check(j.get("block_size") == self.bs and j.get("disk_size") == self.size,
              "list: block_size/disk_size wrong: %r" % j)
        got = {s["name"]: s["parent"] for s in j["snapshots"]}
        want = {n: s["parent"] for n, s in self.snaps.items()}
        check(got == want, "list: snapshots/parents %r, model has %r" % (got, want))
        for s in j["snapshots"]:
            # whole blocks, the last one of the disk counting its length
            check(isinstance(s.get("bytes"), int)
                  and s["bytes"] % self.bs in (0, self.size % self.bs)
                  and 0 <= s["bytes"] <= self.size, "list: bad bytes in %r" % s)
        check(j.get("live", {}).get("parent") == self.live_parent,
              "list: live parent %r, model has %r" % (j.get("live"), self.live_parent))

    def check_all(self):
        self.check_list()
        self.check_live()
        for name in sorted(self.snaps):
            self.check_view(name)
        for base in self.chain(self.live_parent):
            self.check_diff(base)
        self.stats["full-check"] += 1

    def check_some(self):
        r = self.rng
        self.check_list()
        self.check_live()
        if self.snaps:
            self.check_view(r.choice(sorted(self.snaps)))
        ch = self.chain(self.live_parent)
        if ch:
            self.check_diff(r.choice(ch))
        named = [n for n in self.snaps if self.snaps[n]["parent"] is not None]
        if named:
            n = r.choice(sorted(named))
            self.check_diff(r.choice(self.chain(self.snaps[n]["parent"])), n)
        self.stats["check"] += 1

    # ------------------------------------------------------------ restarts
    def op_restart(self):
        self.log("restart (clean)")
        self.close_conns()
        self.srv.stop()
        self.srv.start()
        self.check_all()
        self.stats["restart"] += 1

    def op_crash(self):
        self.log("flush + kill -9 + restart")
        self.conn().flush()
        self.srv.kill9()
        self.conns = []
        self.srv.start()
        self.check_all()
        self.stats["kill9"] += 1

    # ------------------------------------------------------------ main loop
    def run(self):
        ops = [(self.op_write, 30), (self.op_zero, 8), (self.op_trim, 6),
               (self.op_read, 25), (self.op_flush, 4), (self.op_create, 4),
               (self.op_revert, 3), (self.op_delete, 3), (self.check_some, 1.2),
               (self.op_restart, 0.3), (self.op_crash, 0.3)]
        funcs = [f for f, _ in ops]
        weights = [w for _, w in ops]
        self.srv.start()
        try:
            self.check_all()
            end = time.time() + self.a.seconds
            i = 0
            while i < self.a.ops and time.time() < end:
                f = self.rng.choices(funcs, weights)[0]
                self.stats[f.__name__] += 1
                f()
                i += 1
            self.check_all()
            self.close_conns()
            self.srv.stop()
        finally:
            self.srv.cleanup()
        return i


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--filter", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--block-size", type=int, default=4096)
    p.add_argument("--disk-size", type=int, default=8 << 20)
    p.add_argument("--seconds", type=float, default=45)
    p.add_argument("--ops", type=int, default=100000)
    p.add_argument("--seed", type=int,
                   default=int(os.environ.get("MODEL_SEED") or random.randrange(1 << 31)))
    a = p.parse_args()
    print("model-snapshot: seed=%d block_size=%d disk_size=%d "
          "(reproduce with MODEL_SEED=%d)" % (a.seed, a.block_size, a.disk_size, a.seed),
          flush=True)
    m = Model(a)
    t0 = time.time()
    try:
        n = m.run()
    except (Failure, AssertionError, nbd.Error) as e:
        print("model-snapshot: FAILED (seed=%d block_size=%d): %s: %s"
              % (a.seed, a.block_size, type(e).__name__, e), file=sys.stderr)
        print("last operations:", file=sys.stderr)
        for s in m.history:
            print("    " + s, file=sys.stderr)
        print("server log tail:\n" + m.srv.log_tail(), file=sys.stderr)
        sys.exit(1)
    print("model-snapshot: OK: %d operations in %.1fs: %s"
          % (n, time.time() - t0, dict(sorted(m.stats.items()))), flush=True)


if __name__ == "__main__":
    main()
