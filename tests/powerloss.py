#!/usr/bin/python3
"""Power loss at every flush boundary (tests/test-stack-powerloss.sh).

  powerloss.py --workdir DIR --freeze SO --cbt SO --snapshot SO
               --writelog SO [--sync strict|flush] [--ops N]
               [--points N] [--seed N]

1. Runs nbdkit (--filter=freeze --filter=cbt --filter=snapshot file) with
   tests/writelog.c preloaded: every change the filters make to files in
   snapshot-dir and cbt-dir is logged in order.  One client, one request
   at a time, runs a random sequence of writes, FUA writes, zeroes,
   trims, flushes, snapshot create/revert/delete and checkpoint
   create/delete, noting the log's size before each request and after
   its reply.  Sequential, so the model knows the disk exactly after
   every request.
2. For every prefix of the log that ends with an fsync or fdatasync
   (--points N: N of them, half of them at random, half among the
   syncs of checkpoint creations, and the last), rebuilds both
   directories as a power cut right after that sync leaves them, taking
   the worst case: a file's content is what it was at its last
   fsync/fdatasync (empty if never synced), a directory's entries what
   they were at its last fsync (created, renamed and unlinked names
   without a directory fsync are undone).  Then starts nbdkit (no shim)
   on them and checks:
     * it starts, and leaves no temporary file in the state directories;
     * every block reads as its value at the last sync request (flush,
       FUA write of that block, snapshot create or revert) acknowledged
       before the cut, or as a later request submitted before it;
     * snapshots whose create was acknowledged exist (unless a delete
       was submitted), those whose delete was acknowledged are gone,
       and every snapshot there reads exactly as made;
     * checkpoints likewise; for each one listed consistent, its change
       map holds every block whose content differs from the content at
       the checkpoint, every block an acknowledged revert after it
       changed, and (strict) every block of a write acknowledged after
       it, (flush) every block of a write followed by an acknowledged
       flush.
"""

import argparse
import json
import os
import random
import shutil
import signal
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snaptest as st  # noqa: E402
import nbd  # noqa: E402

BS = 4096
CREATE, WRITE, TRUNC, ZERO, RENAME, UNLINK, RMDIR, MKDIR, SYNC = range(1, 10)
HDR = struct.Struct("<IIQQQIIQ")


Failure, check = st.Failure, st.check


def pattern(tag):
    return st.pattern(tag, BS)


def tags_of(data):
    out = []
    for b in range(len(data) // BS):
        blk = data[b * BS:(b + 1) * BS]
        t = struct.unpack_from("<Q", blk)[0]
        out.append(t if blk == pattern(t) else -1)
    return out


def logsize(path):
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------ the run
class Op:
    def __init__(self, kind, **kw):
        self.kind = kind
        self.sub = self.ack = None
        self.blocks = {}        # block -> new tag (data changes)
        self.durable = ()       # blocks made durable (FUA)
        self.name = None
        self.__dict__.update(kw)


def run(a, dirs, log):
    r = random.Random(a.seed)
    n = a.size // BS
    live = [1000000 + b for b in range(n)]
    ops = []
    snaps = {}                  # name -> tags (exact)
    cps = {}                    # name -> tags at creation
    args = server_args(a, dirs)
    env = dict(os.environ, LD_PRELOAD=a.writelog, WL_LOG=log,
               WL_PATH=":".join(dirs))
    srv = st.Server(a.workdir, "logged", args)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        srv.start()
    finally:
        os.environ.clear()
        os.environ.update(old)
    sock = srv.sock
    h = st.connect(sock)
    tag = 1
    seq = 0
    for i in range(a.ops):
        k = r.random()
        seq += 1
        if k < 0.62:
            nb = r.choice([1, 1, 2, 3, 8, 16])
            b0 = r.randrange(0, n - nb + 1)
            kind = r.choices(["write", "fua", "zero", "trim"], [50, 6, 6, 6])[0]
            op = Op(kind)
            for b in range(b0, b0 + nb):
                op.blocks[b] = tag if kind in ("write", "fua") else 0
                tag += 1
            if kind == "fua":
                op.durable = tuple(op.blocks)
            op.sub = logsize(log)
            if kind in ("write", "fua"):
                h.pwrite(b"".join(pattern(op.blocks[b]) for b in range(b0, b0 + nb)),
                         b0 * BS, nbd.CMD_FLAG_FUA if kind == "fua" else 0)
            elif kind == "zero":
                h.zero(nb * BS, b0 * BS)
            else:
                h.trim(nb * BS, b0 * BS)
            op.ack = logsize(log)
            for b, t in op.blocks.items():
                live[b] = t
        elif k < 0.77:
            op = Op("flush", sub=logsize(log))
            h.flush()
            op.ack = logsize(log)
        elif k < 0.83:
            op = Op("snap_create", name="s%d" % seq, tags=list(live))
            snaps[op.name] = list(live)
            command(sock, "@snapshot:create/" + op.name, op, log)
        elif k < 0.87 and snaps:
            name = r.choice(sorted(snaps))
            op = Op("snap_revert", name=name)
            op.blocks = {b: t for b, t in enumerate(snaps[name]) if live[b] != t}
            st.close(h)
            command(sock, "@snapshot:revert/" + name, op, log)
            h = st.connect(sock)
            for b, t in op.blocks.items():
                live[b] = t
        elif k < 0.90 and snaps:
            name = r.choice(sorted(snaps))
            op = Op("snap_delete", name=name)
            command(sock, "@snapshot:delete/" + name, op, log)
            del snaps[name]
        elif k < 0.96:
            op = Op("cp_create", name="c%d" % seq, tags=list(live))
            cps[op.name] = list(live)
            command(sock, "@cbt:create/" + op.name, op, log)
        elif cps:
            name = r.choice(sorted(cps))
            op = Op("cp_delete", name=name)
            command(sock, "@cbt:delete/" + name, op, log)
            del cps[name]
        else:
            continue
        ops.append(op)
    st.close(h)
    srv.stop()
    return ops


def command(sock, export, op, log):
    op.sub = logsize(log)
    for _ in range(100):
        h = st.connect(sock, export)
        try:
            j = json.loads(h.pread(h.get_size(), 0).decode())
        finally:
            st.close(h)
        # A revert right after our disconnect: nbdkit may not have closed
        # that connection yet (EBUSY changes nothing; try again).
        if j["ok"] or j.get("errno") != "EBUSY" or "revert" not in export:
            break
        time.sleep(0.05)
    op.ack = logsize(log)
    check(j["ok"], "%s: %r" % (export, j))


def server_args(a, dirs):
    return ["--filter=" + a.freeze, "--filter=" + a.cbt,
            "--filter=" + a.snapshot, "file", os.path.join(a.workdir, "disk.img"),
            "snapshot-dir=" + dirs[0], "cbt-dir=" + dirs[1],
            "freeze-dir=" + a.workdir, "cbt-granularity=%d" % BS,
            "cbt-sync=" + a.sync]


# ------------------------------------------------------------ the log
def read_log(path):
    recs = []
    with open(path, "rb") as f:
        data = f.read()
    off = 0
    while off < len(data):
        magic, op, ino, o, ln, pl, p2l, dl = HDR.unpack_from(data, off)
        check(magic == 0x574c4f47, "write log damaged at %d" % off)
        p = off + HDR.size
        path = data[p:p + pl].decode()
        path2 = data[p + pl:p + pl + p2l].decode()
        d = data[p + pl + p2l:p + pl + p2l + dl]
        off = p + pl + p2l + dl
        recs.append((op, ino, o, ln, path, path2, d, off))
    return recs


class FS:
    """Files by (inode, generation); names per directory, current and
    durable (as of the directory's last fsync)."""

    def __init__(self, dirs):
        self.dirs = dirs
        self.cur_ns = {d: {} for d in dirs}
        self.dur_ns = {d: {} for d in dirs}
        self.cur = {}           # key -> bytearray
        self.dur = {}           # key -> bytes
        self.key = {}           # ino -> current key
        self.gen = 0

    def split(self, path):
        d, name = os.path.split(path)
        return (d, name) if d in self.cur_ns else (None, None)

    def apply(self, rec):
        op, ino, off, ln, path, path2, data, _ = rec
        if op == CREATE:
            d, name = self.split(path)
            if d is None:
                return
            k = self.cur_ns[d].get(name)
            if k is None or k[0] != ino:
                self.gen += 1
                k = (ino, self.gen)
                self.cur[k] = bytearray()
                self.cur_ns[d][name] = k
            self.key[ino] = k
        elif op in (WRITE, TRUNC, ZERO):
            k = self.key.get(ino)
            if k is None:
                return
            f = self.cur[k]
            if op == WRITE:
                if len(f) < off:
                    f.extend(bytes(off - len(f)))
                f[off:off + len(data)] = data
            elif op == TRUNC:
                if ln < len(f):
                    del f[ln:]
                else:
                    f.extend(bytes(ln - len(f)))
            else:
                end = min(off + ln, len(f))
                if end > off:
                    f[off:end] = bytes(end - off)
        elif op == RENAME:
            d1, n1 = self.split(path)
            d2, n2 = self.split(path2)
            check(d1 is not None and d2 is not None,
                  "rename across watched and unwatched directories: %s %s" % (path, path2))
            k = self.cur_ns[d1].pop(n1)
            self.cur_ns[d2][n2] = k
        elif op == UNLINK:
            d, name = self.split(path)
            if d is not None:
                self.cur_ns[d].pop(name, None)
        elif op == SYNC:
            if path in self.cur_ns:
                self.dur_ns[path] = dict(self.cur_ns[path])
            else:
                k = self.key.get(ino)
                if k is not None:
                    self.dur[k] = bytes(self.cur[k])
        elif op in (MKDIR, RMDIR):
            raise Failure("directory %s of %s not modelled" % (
                "creation" if op == MKDIR else "removal", path))

    def materialize(self):
        for d in self.dirs:
            shutil.rmtree(d)
            os.mkdir(d)
            for name, k in self.dur_ns[d].items():
                with open(os.path.join(d, name), "wb") as f:
                    f.write(self.dur.get(k, b""))


# ------------------------------------------------------------ checks
def changed_blocks(h):
    out = set()
    for (o, n, f) in st.extents(h):
        if not f & nbd.STATE_HOLE:
            out.update(range(o // BS, (o + n + BS - 1) // BS))
    return out


def check_point(a, dirs, ops, P, nblocks):
    """The state rebuilt at log offset P against the model."""
    srv = st.Server(a.workdir, "replay", server_args(a, dirs))
    try:
        srv.start()
    except AssertionError as e:
        raise Failure("nbdkit does not start on the state at log offset %d: %s" % (P, e))
    try:
        h = st.connect(srv.sock)
        got = tags_of(st.read_all(h))
        st.close(h)
        # Durable value and later candidates per block.
        live = [1000000 + b for b in range(nblocks)]
        allowed = [{t} for t in live]
        snaps, cps = {}, {}     # name -> [must exist, tags, op index]
        deleted = set()         # snapshots whose delete was submitted
        for i, op in enumerate(ops):
            if op.sub > P:
                break
            done = op.ack <= P
            glob = done and op.kind in ("flush", "snap_create", "snap_revert")
            for b, t in op.blocks.items():
                live[b] = t
                allowed[b].add(t)
            if glob:
                allowed = [{t} for t in live]
            elif done:
                for b in op.durable:
                    allowed[b] = {live[b]}
            if op.kind == "snap_create":
                snaps[op.name] = [done, op.tags]
            elif op.kind == "snap_delete":
                deleted.add(op.name)
                if done:
                    snaps.pop(op.name)
                else:
                    snaps[op.name][0] = False
            elif op.kind == "cp_create":
                cps[op.name] = [done, op.tags, i]
            elif op.kind == "cp_delete":
                if done:
                    cps.pop(op.name)
                else:
                    cps[op.name][0] = False
        bad = [b for b in range(nblocks) if got[b] not in allowed[b]]
        check(not bad, "block %s reads %d, allowed %s" % (
            bad[:5], got[bad[0]], sorted(allowed[bad[0]])) if bad else "")
        j = st.command(srv.sock, "@snapshot:list")
        # A deleted snapshot whose merge a crash interrupted is listed
        # with "merging" until the next start finishes it (documented).
        have = {s["name"] for s in j["snapshots"]
                if not (s.get("merging") and s["name"] in deleted)}
        for name, (must, tags, *_) in snaps.items():
            check(name in have or not must, "snapshot %s acknowledged but missing" % name)
        for name in have:
            check(name in snaps, "snapshot %s: deleted or never made, but listed "
                  "(requests on it, log offsets: %s)" % (name, [
                      (op.kind, op.sub, op.ack) for op in ops if op.name == name]))
            h = st.connect(srv.sock, "@snapshot/" + name)
            t = tags_of(st.read_all(h))
            st.close(h)
            check(t == snaps[name][1], "snapshot %s does not read as made" % name)
        h = st.connect(srv.sock, "@cbt:list")
        j = json.loads(h.pread(h.get_size(), 0).decode())
        st.close(h)
        have = {c["name"]: c for c in j["checkpoints"]}
        stats = [0, 0]
        for name, (must, tags, idx) in cps.items():
            check(name in have or not must, "checkpoint %s acknowledged but missing" % name)
        for name, c in have.items():
            check(name in cps, "checkpoint %s: deleted or never made, but listed" % name)
            if not c["consistent"]:
                stats[1] += 1
                continue
            stats[0] += 1
            idx = cps[name][2]
            need = {b for b in range(nblocks) if got[b] != cps[name][1][b]}
            why = {b: "content %d, at the checkpoint %d" % (got[b], cps[name][1][b])
                   for b in need}
            last_flush = max([i for i, op in enumerate(ops)
                              if op.ack <= P and op.kind in
                              ("flush", "snap_create", "snap_revert")] + [-1])
            for i, op in enumerate(ops[idx + 1:], idx + 1):
                if op.ack > P or (ops[idx].ack > P):
                    break
                if op.kind == "snap_revert" or a.sync == "strict" or \
                   i < last_flush or op.durable:
                    need.update(op.blocks)
                    for b in op.blocks:
                        why.setdefault(b, "request %d (%s, log %d..%d)" % (
                            i, op.kind, op.sub, op.ack))
            h = st.connect(srv.sock, "@cbt/" + name)
            m = changed_blocks(h)
            st.close(h)
            miss = need - m
            check(not miss, "checkpoint %s (consistent, created by request %d, "
                  "log %d..%d) misses blocks %s" % (
                      name, idx, ops[idx].sub, ops[idx].ack,
                      ["%d: %s" % (b, why[b]) for b in sorted(miss)[:5]]))
        for d in dirs:
            tmp = [f for f in os.listdir(d) if f.endswith(".tmp")]
            check(not tmp, "temporary files in %s after start (and reads): %s" % (d, tmp))
        srv.stop()
        return stats
    finally:
        srv.cleanup()


def main():
    p = argparse.ArgumentParser()
    for o in ("workdir", "freeze", "cbt", "snapshot", "writelog"):
        p.add_argument("--" + o, required=True)
    p.add_argument("--sync", default="strict")
    p.add_argument("--ops", type=int, default=150)
    p.add_argument("--points", type=int, default=0)
    p.add_argument("--size", type=int, default=4 << 20)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--only", type=int, default=None,
                   help="replay only the cut after this log record")
    a = p.parse_args()
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 31)
    print("powerloss: cbt-sync=%s, seed %d (POWER_SEED=%d replays)" %
          (a.sync, a.seed, a.seed), flush=True)
    n = a.size // BS
    with open(os.path.join(a.workdir, "disk.img"), "wb") as f:
        for b in range(n):
            f.write(pattern(1000000 + b))
    dirs = [os.path.join(a.workdir, "snap"), os.path.join(a.workdir, "cbt")]
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        os.mkdir(d)
    log = os.path.join(a.workdir, "write.log")
    if os.path.exists(log):
        os.unlink(log)
    try:
        ops = run(a, dirs, log)
        recs = read_log(log)
        syncs = [i for i, rec in enumerate(recs) if rec[0] == SYNC]
        check(syncs, "the write log holds no sync (is the shim preloaded?)")
        chosen = syncs
        if a.points and len(syncs) > a.points:
            # A random sample, the last sync, and the syncs of checkpoint
            # creations (where a crash must not go back behind it).
            rr = random.Random(a.seed)
            cpw = [i for i in syncs for op in ops if op.kind == "cp_create"
                   and op.sub < recs[i][7] <= op.ack]
            cpw = rr.sample(cpw, min(len(cpw), a.points // 2))
            rest = [i for i in syncs[:-1] if i not in cpw]
            chosen = sorted(set(rr.sample(rest, min(len(rest), a.points - len(cpw) - 1)))
                            | set(cpw) | {syncs[-1]})
        if a.only is not None:
            chosen = [a.only]
        fs = FS(dirs)
        j = 0
        totals = [0, 0]
        counts = {}
        for rec in recs:
            counts[rec[0]] = counts.get(rec[0], 0) + 1
        for i, rec in enumerate(recs):
            fs.apply(rec)
            if j < len(chosen) and chosen[j] == i:
                j += 1
                fs.materialize()
                try:
                    s = check_point(a, dirs, ops, rec[7], n)
                except Failure as e:
                    raise Failure("cut after log record %d (offset %d, %s of %s): %s"
                                  % (i, rec[7], "sync", rec[4], e))
                totals[0] += s[0]
                totals[1] += s[1]
    except Failure as e:
        print("powerloss: FAIL (seed %d): %s" % (a.seed, e), file=sys.stderr)
        sys.exit(1)
    names = {CREATE: "create", WRITE: "write", TRUNC: "truncate", ZERO: "punch",
             RENAME: "rename", UNLINK: "unlink", SYNC: "sync"}
    print("powerloss: %d requests, write log of %d records (%s); %d of %d sync "
          "points replayed, 0 failures; change maps checked %d times, "
          "inconsistent checkpoints seen %d times" %
          (len(ops), len(recs), ", ".join("%s %d" % (names.get(k, k), v)
                                          for k, v in sorted(counts.items())),
           len(chosen), len(syncs), totals[0], totals[1]))


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
