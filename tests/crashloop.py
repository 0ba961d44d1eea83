#!/usr/bin/python3
"""Crash loop of the whole stack (tests/test-stack-crashloop.sh).

  crashloop.py --workdir DIR --freeze SO --cbt SO --snapshot SO
               --nbdsnap TOOL [--kills N] [--seed N] [--size N]

Rounds of: start nbdkit (--filter=freeze --filter=cbt --filter=snapshot
file, cbt-sync strict or flush at random), a mixed workload, SIGKILL of
nbdkit at a random moment (and sometimes of a running nbdsnap before
it), restart, check.  The workload: three clients, each on its own
connection and its own third of the disk, writing (some FUA), zeroing,
trimming and flushing; checkpoint create/delete commands and nbdsnap
backup (full or incremental) while they run; between phases (clients
idle) snapshot create/revert/delete, nbdsnap merge/delete in the
repository.

The model keeps, per 4 KiB block, the history of what was written there
since the last restart (a unique 8-byte tag repeated over the block, or
0 for zeroes: zero and trim both read as zeroes), with submit and
acknowledgement times, and which entry is known durable (an
acknowledged write before a successful flush of its client, a FUA
write, a snapshot create or revert).  After each restart:

  * every block reads as its durable value or a later write's;
  * every snapshot the model knows reads exactly as made; every
    acknowledged create exists, every acknowledged delete is gone;
  * every checkpoint the server lists was created by the workload;
    acknowledged ones exist.  For each checkpoint listed consistent:
    its change map holds every block of every write made durable (in
    strict mode: acknowledged) that was submitted after its creation
    was acknowledged, every block an acknowledged revert changed, and
    every block whose content now is none of the values it could have
    had at the checkpoint's instant;
  * nbdsnap verify of the repository passes; every point in it is one
    the workload tried, and restores to content each of whose blocks
    is a value the block could have had while that backup ran;
  * no temporary files in the state directories or points/.

The seed of each run is printed; --seed (CRASH_SEED) replays the
choices (timing differs).  Exit 1 on the first failure.
"""

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snaptest as st  # noqa: E402
import nbd  # noqa: E402

BS = 4096
now = time.monotonic


Failure, check = st.Failure, st.check


def pattern(tag):
    return st.pattern(tag, BS)


def tag_of(data):
    t = struct.unpack_from("<Q", data)[0]
    return t if data == pattern(t) else -1


class Block:
    __slots__ = ("base", "hist", "durable")

    def __init__(self, tag):
        self.base = tag
        self.hist = []          # [tag, t_sub, t_ack or None]
        self.durable = -1       # index in hist; -1: base

    def current(self):
        return self.hist[-1][0] if self.hist else self.base

    def after_crash(self):
        """Values the block may read as after a crash."""
        s = {self.base if self.durable < 0 else self.hist[self.durable][0]}
        s.update(h[0] for h in self.hist[self.durable + 1:])
        return s

    def during(self, t0, t1):
        """Values the block may have had at some instant in [t0, t1]."""
        s = set()
        last = self.base
        for (tag, ts, ta) in self.hist:
            if ta is not None and ta < t0:
                last = tag
            elif ts <= t1:
                s.add(tag)
        s.add(last)
        return s


class Checkpoint:
    def __init__(self, name, t1, cand):
        self.name = name
        self.t1 = t1            # changes submitted after this are "since"
        self.cand = cand        # per block: values possible at its instant
        self.must = set()       # blocks its map must hold
        self.acked = False      # its creation was acknowledged
        self.seen = set()       # blocks its map held at the last check
        self.del_tried = False


class Harness:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.nblocks = a.size // BS
        self.blocks = [Block(0) for _ in range(self.nblocks)]
        self.lock = threading.Lock()
        self.nexttag = 1
        self.cps = {}           # name -> Checkpoint
        self.snaps = {}         # name -> [tags] (exact)
        self.snap_acked = set()
        self.snap_del = set()   # delete tried, not acknowledged
        self.points = {}        # backup name -> per-block candidate sets
        self.checked = set()    # points restored and checked since changed
        self.seq = 0
        self.killed = threading.Event()
        self.tool = None
        self.stats = dict(kills=0, tool_kills=0, rounds=0, writes=0, zeroes=0,
                          trims=0, flushes=0, fua=0, snap_create=0,
                          snap_revert=0, snap_delete=0, cp_create=0,
                          cp_delete=0, backups=0, backups_full=0,
                          backups_failed=0, backups_refused=0, merges=0, deletes=0, restores=0,
                          strict_rounds=0, map_checks=0, map_must_blocks=0, nbdkit_asserts=0, inconsistent_seen=0)
        d = a.workdir
        self.img = os.path.join(d, "disk.img")
        self.snapdir = os.path.join(d, "snap")
        self.cbtdir = os.path.join(d, "cbt")
        self.repo = os.path.join(d, "repo")
        with open(self.img, "wb") as f:
            f.truncate(a.size)
        self.srv = None
        self.strict = True
        self.need_full = True
        self.pending = []       # checkpoints of killed backups, instant unknown

    # ------------------------------------------------------------ server
    def start(self):
        self.strict = self.rng.random() < 0.6
        args = ["--filter=" + self.a.freeze, "--filter=" + self.a.cbt,
                "--filter=" + self.a.snapshot, "file", self.img,
                "snapshot-dir=" + self.snapdir, "cbt-dir=" + self.cbtdir,
                "freeze-dir=" + self.a.workdir, "cbt-granularity=%d" % BS,
                "cbt-sync=" + ("strict" if self.strict else "flush")]
        self.srv = st.Server(self.a.workdir, "srv", args)
        self.srv.start()
        self.sock = self.srv.sock
        self.uri = st.make_uri(self.sock)
        self.killed.clear()
        self.tool_killed = False
        if self.strict:
            self.stats["strict_rounds"] += 1

    def kill(self):
        self.killed.set()
        try:
            self.srv.proc.kill()
        except ProcessLookupError:
            pass

    def name(self, p):
        self.seq += 1
        return "%s%d" % (p, self.seq)

    def lost(self, what, e):
        """An operation failed: fine after the kill, a bug before."""
        if self.killed.is_set():
            return
        if self.tool_killed:
            try:
                self.srv.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        if self.srv.proc.poll() is not None and self.tool_killed and \
           "raw_send_socket: Assertion" in self.srv.log_tail(6):
            # nbdkit 1.32 aborts when a client with replies in flight is
            # killed (docs/nbdkit-1.32.md): one more crash to recover from.
            if not self.killed.is_set():
                self.killed.set()
                self.stats["nbdkit_asserts"] += 1
            return
        raise Failure("%s failed while the server was up: %s" % (what, e))

    # ------------------------------------------------------------ clients
    def client(self, idx, t_end, seed, errs):
        r = random.Random(seed)
        per = self.nblocks // 3
        lo, hi = idx * per, (idx + 1) * per
        try:
            h = st.connect(self.sock)
        except nbd.Error as e:
            errs.append(("connect", e))
            return
        try:
            while now() < t_end and not self.killed.is_set():
                k = r.random()
                if k < 0.08:
                    t0 = now()
                    h.flush()
                    with self.lock:
                        for b in range(lo, hi):
                            blk = self.blocks[b]
                            i = len(blk.hist) - 1
                            while i > blk.durable and blk.hist[i][2] is None:
                                i -= 1
                            if i > blk.durable and blk.hist[i][2] < t0:
                                self.make_durable(b, i)
                    self.stats["flushes"] += 1
                    continue
                n = r.choice([1, 1, 2, 3, 4, 8, 16])
                b0 = r.randrange(lo, hi - n + 1)
                kind = "write" if k < 0.75 else ("zero" if k < 0.87 else "trim")
                fua = kind == "write" and r.random() < 0.1
                with self.lock:
                    t = now()
                    ents = []
                    for b in range(b0, b0 + n):
                        tag = 0
                        if kind == "write":
                            tag = self.nexttag
                            self.nexttag += 1
                        e = [tag, t, None]
                        self.blocks[b].hist.append(e)
                        ents.append(e)
                if kind == "write":
                    buf = b"".join(pattern(e[0]) for e in ents)
                    h.pwrite(buf, b0 * BS, nbd.CMD_FLAG_FUA if fua else 0)
                    self.stats["writes"] += 1
                    self.stats["fua"] += fua
                elif kind == "zero":
                    h.zero(n * BS, b0 * BS)
                    self.stats["zeroes"] += 1
                else:
                    h.trim(n * BS, b0 * BS)
                    self.stats["trims"] += 1
                with self.lock:
                    ta = now()
                    for i, b in enumerate(range(b0, b0 + n)):
                        ents[i][2] = ta
                        if self.strict or fua:
                            self.add_must(b, ents[i][1])
                        if fua:
                            self.make_durable(b, self.blocks[b].hist.index(ents[i]))
        except nbd.Error as e:
            errs.append(("client %d" % idx, e))
        finally:
            st.close(h)

    def make_durable(self, b, i):
        blk = self.blocks[b]
        if i > blk.durable:
            for j in range(blk.durable + 1, i + 1):
                if blk.hist[j][2] is not None:
                    self.add_must(b, blk.hist[j][1])
            blk.durable = i

    def add_must(self, b, t_sub):
        for cp in self.cps.values():
            if cp.t1 < t_sub:
                cp.must.add(b)

    def all_durable(self):
        with self.lock:
            for b, blk in enumerate(self.blocks):
                i = len(blk.hist) - 1
                while i > blk.durable and blk.hist[i][2] is None:
                    i -= 1
                self.make_durable(b, i)

    def cand(self, t0, t1):
        with self.lock:
            return [blk.during(t0, t1) for blk in self.blocks]

    # ------------------------------------------------------------ commands
    def cbt(self, verb, name):
        """@cbt:VERB/NAME; True if acknowledged ok, None if refused."""
        ex = "@cbt:%s/%s" % (verb, name)
        h = st.connect(self.sock, ex)
        try:
            n = h.get_size()
            j = json.loads(h.pread(n, 0).decode())
        finally:
            st.close(h)
        return True if j["ok"] else j

    def cp_create(self):
        name = self.name("c")
        t0 = now()
        cp = Checkpoint(name, None, None)
        cp.t1 = float("inf")
        with self.lock:
            self.cps[name] = cp
        try:
            j = self.cbt("create", name)
            check(j is True, "checkpoint create %s: %r" % (name, j))
        except nbd.Error as e:
            cp.cand = self.cand(t0, now())
            cp.t1 = now()
            return self.lost("checkpoint create", e)
        t1 = now()
        cp.cand = self.cand(t0, t1)
        with self.lock:
            cp.t1 = t1
            cp.acked = True
        self.stats["cp_create"] += 1

    def cp_delete(self, name):
        cp = self.cps[name]
        cp.del_tried = True
        try:
            j = self.cbt("delete", name)
        except nbd.Error as e:
            return self.lost("checkpoint delete", e)
        check(j is True or j.get("errno") == "ENOENT" and not cp.acked,
              "checkpoint delete %s: %r" % (name, j))
        with self.lock:
            del self.cps[name]
        self.stats["cp_delete"] += 1

    def snap(self, verb, name):
        try:
            for _ in range(100):
                j = st.command(self.sock, "@snapshot:%s/%s" % (verb, name))
                # nbdkit may not have closed the clients' connections yet.
                if j["ok"] or j.get("errno") != "EBUSY" or verb != "revert":
                    break
                time.sleep(0.05)
        except nbd.Error as e:
            self.lost("snapshot " + verb, e)
            return None
        check(j["ok"], "snapshot %s %s: %r" % (verb, name, j))
        return j

    def snap_create(self):
        name = self.name("s")
        with self.lock:
            self.snaps[name] = [blk.current() for blk in self.blocks]
        if self.snap(name=name, verb="create") is None:
            return
        self.snap_acked.add(name)
        self.all_durable()
        self.stats["snap_create"] += 1

    def snap_revert(self, name):
        t0 = now()
        tags = self.snaps[name]
        with self.lock:
            ents = {}
            for b, blk in enumerate(self.blocks):
                if blk.current() != tags[b]:
                    e = [tags[b], t0, None]
                    blk.hist.append(e)
                    ents[b] = e
        if self.snap(name=name, verb="revert") is None:
            return
        with self.lock:
            t1 = now()
            for b, e in ents.items():
                e[2] = t1
                self.add_must(b, t0)
        self.all_durable()
        self.stats["snap_revert"] += 1

    def snap_delete(self, name):
        self.snap_del.add(name)
        if self.snap(name=name, verb="delete") is None:
            return
        self.snaps.pop(name)
        self.snap_acked.discard(name)
        self.snap_del.discard(name)
        self.stats["snap_delete"] += 1

    # ------------------------------------------------------------ the tool
    def run_tool(self, args, kill_at=None):
        """Run nbdsnap; returns (status, output); status None if killed."""
        p = subprocess.Popen([self.a.nbdsnap] + args, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        self.tool = p
        killed = False
        try:
            if kill_at is not None:
                try:
                    p.wait(kill_at)
                except subprocess.TimeoutExpired:
                    p.kill()
                    killed = True
                    self.tool_killed = True
                    self.stats["tool_kills"] += 1
            out = p.communicate(timeout=120)[0].decode(errors="replace")
        finally:
            self.tool = None
        return (None if killed else p.returncode), out

    def points_list(self):
        st_, out = self.run_tool(["--json", "list", self.repo])
        if st_ != 0 and "does not exist" in out:
            return []
        check(st_ == 0, "nbdsnap list: %s" % out)
        j = json.loads(out)
        return j["points"]

    def backup(self, kill_at):
        name = self.name("b")
        full = self.rng.random() < 0.2 or self.need_full
        t0 = now()
        cp = Checkpoint(name, float("inf"), None)
        with self.lock:
            self.cps[name] = cp
        args = ["backup", self.uri, self.repo, "--name", name,
                "--no-progress", "--connections", "2"]
        args.append("--full" if full else "--incremental")
        s, out = self.run_tool(args, kill_at)
        t1 = now()
        c = self.cand(t0, t1)
        self.points[name] = c
        if s is None:
            # Killed: the server may still be about to run the tool's
            # @freeze:begin (its open outlives the client), so the
            # checkpoint's instant is known only at the end of the round.
            self.pending.append((cp, t0))
        else:
            cp.cand = c
            cp.t1 = t1
        if s == 0:
            cp.acked = True
            self.stats["backups"] += 1
            self.stats["backups_full"] += full
            self.need_full = False
            return
        self.stats["backups_failed"] += 1
        if s is None:
            # A killed tool leaves its frozen point on the server.
            try:
                st.close(st.connect(self.sock, "@freeze:end/" + name))
            except nbd.Error:
                pass            # not begun yet, or the server is gone
            return
        if not full and "full backup is needed" in out:
            self.stats["backups_refused"] += 1
            self.need_full = True
            return
        if not self.killed.is_set():
            raise Failure("nbdsnap %s: exit %s: %s" % (" ".join(args), s, out))

    def repo_op(self):
        pts = self.points_list()
        if len(pts) < 3:
            return
        kill_at = self.rng.uniform(0, 0.3) if self.rng.random() < 0.3 else None
        children = {p.get("parent") for p in pts}
        if self.rng.random() < 0.6:
            inc = [p["name"] for p in pts if p.get("parent")]
            if not inc:
                return
            p = self.rng.choice(inc)
            s, out = self.run_tool(["merge", self.repo, p], kill_at)
            self.stats["merges"] += 1
        else:
            leaves = [q["name"] for q in pts if q["name"] not in children]
            p = self.rng.choice(leaves[:-1] or leaves)
            s, out = self.run_tool(["delete", self.repo, p], kill_at)
            self.stats["deletes"] += 1
        check(s in (0, None) or "in progress" in out,
              "nbdsnap merge/delete %s: %s" % (p, out))
        self.checked.discard(p)

    def trim_repo(self):
        """Keep the repository small (verify and restores each round)."""
        for _ in range(10):
            pts = self.points_list()
            if len(pts) <= 6:
                return
            parents = {p.get("parent") for p in pts}
            leaves = [p["name"] for p in pts[:-1] if p["name"] not in parents]
            if leaves:
                op = ["delete", self.repo, leaves[0]]
            else:
                op = ["merge", self.repo,
                      [p["name"] for p in pts if p.get("parent")][0]]
            s, out = self.run_tool(op)
            check(s == 0, "nbdsnap %s: %s" % (" ".join(op), out))
            self.stats[op[0] + "s"] += 1
            self.checked.discard(op[2])

    # ------------------------------------------------------------ one round
    def round(self):
        if self.srv is None:
            self.start()
        r = self.rng
        t_kill = now() + r.uniform(0.1, 1.5)
        kill_tool = r.random() < 0.25

        def killer():
            while now() < t_kill:
                time.sleep(0.01)
            self.kill()
        kt = threading.Thread(target=killer)
        kt.start()
        try:
            while not self.killed.is_set():
                self.phase(kill_tool)
                if self.killed.is_set():
                    break
                self.barrier()
        finally:
            kt.join()
        self.srv.proc.wait()
        self.srv._reaped()
        t = now()
        for (cp, t0) in self.pending:
            cp.cand = self.cand(t0, t)
            cp.t1 = t
        self.pending = []
        self.stats["kills"] += 1
        self.stats["rounds"] += 1
        self.restart_check()

    def phase(self, kill_tool):
        r = self.rng
        t_end = now() + r.uniform(0.1, 0.5)
        errs = []
        ths = [threading.Thread(target=self.client,
                                args=(i, t_end, r.randrange(1 << 30), errs))
               for i in range(3)]
        for t in ths:
            t.start()
        try:
            k = r.random()
            if k < 0.4:
                self.backup(r.uniform(0.02, 0.5) if kill_tool else None)
            elif k < 0.6:
                self.cp_create()
            elif k < 0.75 and self.cps:
                olds = [c for c in self.cps if c not in self.points]
                if len(olds) > 2:
                    self.cp_delete(r.choice(olds))
        finally:
            for t in ths:
                t.join()
        for (who, e) in errs:
            self.lost(who, e)

    def barrier(self):
        r = self.rng
        k = r.random()
        if k < 0.25 or not self.snap_acked:
            self.snap_create()
        elif k < 0.45:
            self.snap_revert(r.choice(sorted(self.snap_acked)))
        elif k < 0.6 or len(self.snap_acked) > 3:
            self.snap_delete(r.choice(sorted(self.snap_acked)))
        elif k < 0.75:
            self.repo_op()
        # Checkpoints of points no longer newest are no base any more.
        old = [c for c in self.cps if c in self.points]
        if len(old) > 3:
            self.cp_delete(old[0])

    # ------------------------------------------------------------ checks
    def restart_check(self):
        self.start()
        # The live disk.
        h = st.connect(self.sock)
        data = st.read_all(h)
        st.close(h)
        check(len(data) == self.a.size, "disk size changed")
        for b, blk in enumerate(self.blocks):
            t = tag_of(data[b * BS:(b + 1) * BS])
            ok = blk.after_crash()
            check(t in ok, "block %d reads tag %d after the kill; allowed %s "
                  "(durable %s)" % (b, t, sorted(ok)[:8],
                                    blk.hist[blk.durable][0] if blk.durable >= 0 else blk.base))
            self.blocks[b] = Block(t)
        # Snapshots.
        j = st.command(self.sock, "@snapshot:list")
        # A deleted snapshot whose merge the kill interrupted stays listed
        # with "merging" until the merge, resumed at the start, is done.
        gone = {s["name"] for s in j["snapshots"]
                if s.get("merging") and (s["name"] not in self.snap_acked or
                                         s["name"] in self.snap_del)}
        have = {s["name"] for s in j["snapshots"]} - gone
        for n in have:
            check(n in self.snaps, "snapshot %s: nobody made it (%s)" % (n, j))
        for n in list(self.snaps):
            if n not in have:
                check(n not in self.snap_acked or n in self.snap_del,
                      "snapshot %s was acknowledged but is gone" % n)
                self.snaps.pop(n)
                self.snap_acked.discard(n)
                self.snap_del.discard(n)
                continue
            self.snap_acked.add(n)
            self.snap_del.discard(n)
            h = st.connect(self.sock, "@snapshot/" + n)
            sd = st.read_all(h)
            st.close(h)
            bad = [b for b in range(self.nblocks)
                   if tag_of(sd[b * BS:(b + 1) * BS]) != self.snaps[n][b]]
            check(not bad, "snapshot %s differs at blocks %s" % (n, bad[:10]))
        # Checkpoints.
        h = st.connect(self.sock, "@cbt:list")
        j = json.loads(h.pread(h.get_size(), 0).decode())
        st.close(h)
        have = {c["name"]: c for c in j["checkpoints"]}
        for n in have:
            check(n in self.cps, "checkpoint %s: nobody made it" % n)
        for n in list(self.cps):
            cp = self.cps[n]
            if n not in have:
                check(not cp.acked or cp.del_tried,
                      "checkpoint %s was acknowledged but is gone" % n)
                del self.cps[n]
                continue
            cp.acked = True
            cp.del_tried = False
            if cp.t1 == float("inf"):
                cp.t1 = now()
            if not have[n]["consistent"]:
                self.stats["inconsistent_seen"] += 1
                continue
            h = st.connect(self.sock, "@cbt/" + n)
            got = changed_blocks(h)
            st.close(h)
            self.stats["map_checks"] += 1
            self.stats["map_must_blocks"] += len(cp.must | cp.seen)
            miss = (cp.must | cp.seen) - got
            check(not miss, "checkpoint %s (consistent) misses blocks %s "
                  "changed since it" % (n, sorted(miss)[:10]))
            moved = {b for b in range(self.nblocks)
                     if self.blocks[b].base not in cp.cand[b]} - got
            check(not moved, "checkpoint %s (consistent) misses blocks %s whose "
                  "content is none it had at the checkpoint" % (n, sorted(moved)[:10]))
            # From now on the blocks are compared with today's content.
            cp.must = set()
            cp.seen = got
            cp.cand = [{blk.base} | (cp.cand[b] if b in got else set())
                       for b, blk in enumerate(self.blocks)]
        # Temporary files in the state directories.
        for d in (self.snapdir, self.cbtdir):
            tmp = [f for f in os.listdir(d) if f.endswith(".tmp") or f.startswith(".tmp")]
            check(not tmp, "temporary files in %s after start: %s" % (d, tmp))
        # The repository.
        if os.path.exists(self.repo):
            s, out = self.run_tool(["verify", self.repo])
            check(s == 0, "nbdsnap verify: %s" % out)
            pd = os.path.join(self.repo, "points")
            if os.path.isdir(pd):
                tmp = [f for f in os.listdir(pd) if f.startswith(".")]
                check(not tmp, "temporary entries in points/ after verify: %s" % tmp)
            for p in self.points_list():
                n = p["name"]
                check(n in self.points, "point %s: nobody made it" % n)
                if n in self.checked and self.rng.random() < 0.8:
                    continue
                self.restore_check(n)
            self.trim_repo()
        # And few checkpoints (each one's map is checked every round).
        while len(self.cps) > 8:
            self.cp_delete(next(iter(self.cps)))

    def restore_check(self, n):
        out = os.path.join(self.a.workdir, "restored.img")
        if os.path.exists(out):
            os.unlink(out)
        s, o = self.run_tool(["restore", self.repo, n, "-o", out, "--no-progress"])
        check(s == 0, "nbdsnap restore %s: %s" % (n, o))
        with open(out, "rb") as f:
            data = f.read()
        os.unlink(out)
        check(len(data) == self.a.size, "restore %s: wrong size" % n)
        c = self.points[n]
        bad = [b for b in range(self.nblocks)
               if tag_of(data[b * BS:(b + 1) * BS]) not in c[b]]
        check(not bad, "point %s restores wrong content at blocks %s (block %d: "
              "tag %d, allowed %s)" % (n, bad[:10], bad[0],
                                       tag_of(data[bad[0] * BS:(bad[0] + 1) * BS]),
                                       sorted(c[bad[0]])[:8]) if bad else "")
        self.checked.add(n)
        self.stats["restores"] += 1

    def run(self):
        t0 = time.time()
        try:
            while self.stats["kills"] < self.a.kills:
                self.round()
                if self.stats["kills"] % 50 == 0:
                    self.report(t0, "so far")
            self.srv.stop()
        except BaseException:
            print("crashloop: FAILED in round %d (seed %d, CRASH_SEED=%d to "
                  "replay)" % (self.stats["rounds"] + 1, self.a.seed, self.a.seed),
                  file=sys.stderr)
            if self.srv:
                print(self.srv.log_tail(), file=sys.stderr)
                self.srv.cleanup()
            raise
        self.report(t0, "done")

    def report(self, t0, what):
        ops = sum(self.stats[k] for k in ("writes", "zeroes", "trims", "flushes",
                                          "snap_create", "snap_revert", "snap_delete",
                                          "cp_create", "cp_delete", "backups",
                                          "backups_failed", "merges", "deletes"))
        print("crashloop (%s): %d kills of nbdkit (+%d of nbdsnap), %d operations "
              "in %.0f s, 0 failures" % (what, self.stats["kills"],
                                         self.stats["tool_kills"], ops,
                                         time.time() - t0))
        print("crashloop: " + ", ".join("%s %d" % kv for kv in self.stats.items()),
              flush=True)


def changed_blocks(h):
    out = set()
    for (o, n, f) in st.extents(h):
        if not f & nbd.STATE_HOLE:
            out.update(range(o // BS, (o + n + BS - 1) // BS))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--freeze", required=True)
    p.add_argument("--cbt", required=True)
    p.add_argument("--snapshot", required=True)
    p.add_argument("--nbdsnap", required=True)
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--size", type=int, default=8 << 20)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 31)
    print("crashloop: seed %d (CRASH_SEED=%d replays), %d kills" %
          (a.seed, a.seed, a.kills), flush=True)
    try:
        Harness(a).run()
    except Failure as e:
        print("crashloop: FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
