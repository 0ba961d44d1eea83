# Fault-injection sweep of the snapshot filter (tests/test-snapshot-faults.sh).
#
# A short workload runs against nbdkit --filter=snapshot file BASE with
# tests/faultinject.c preloaded: first once counting the calls the shim
# considers (K), then once per fault point N, with the Nth call failing.
# After each fault:
#   - nbdkit did not crash: it refused to start (status 1), or it served
#     to the end of the workload and stopped (SIGTERM: status 0; every
#     other point but the last is stopped with kill -9 instead, a crash);
#   - the fault was not silent: an operation of the workload failed, a
#     merge reported merge_error, or (a fault at start or stop) nbdkit
#     logged an error;
#   - once a flush failed, every later flush failed (a failed fdatasync
#     is not retried into a success);
#   - reads go on: the live disk and every snapshot read as the model
#     says, after the fault, before the restart;
#   - after a restart without faults the state loads; every sector of the
#     live disk holds what the last durable point (flush, FUA, create,
#     revert) left there, or a value written after it; every snapshot
#     that exists reads as it was made; a snapshot whose create
#     succeeded exists unless its delete succeeded, which makes it go.
#
# The model keeps, for every 512-byte sector, the set of values it may
# hold now (cur) and after a crash or restart (dur).  A failed write may
# have happened or not; a failed revert or create may have happened or
# not; a write not covered by a durable point may or may not survive.
#
# Usage: sweep-snapshot.py --calls LIST [--obj OBJ] [--points all|N]
# (environment: F, FAULTINJECT, tmpdir).  Prints one line per point and
# a summary.
import argparse
import collections
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.environ["testsdir"])
import snaptest as st  # noqa: E402
import nbd  # noqa: E402

SECTOR = 512
SIZE = 1 << 20
NSECT = SIZE // SECTOR
BS = "4K"
F = os.environ["F"]
SHIM = os.environ["FAULTINJECT"]
TMP = os.environ["tmpdir"]
BASE = os.path.join(TMP, "sweep-base.img")


def sectors(data):
    return [bytes(data[i:i + SECTOR]) for i in range(0, len(data), SECTOR)]


class Model:
    def __init__(self, base):
        b = sectors(base)
        self.cur = [{x} for x in b]
        self.dur = [{x} for x in b]
        self.snaps = {}          # name -> dict(sets, created_ok, deleted_ok, delete_failed)

    def write(self, off, data, ok, fua=False):
        assert off % SECTOR == 0 and len(data) % SECTOR == 0
        for i, v in enumerate(sectors(data)):
            s = off // SECTOR + i
            if ok:
                self.cur[s] = {v}
                if fua:
                    self.dur[s] = {v}
                else:
                    self.dur[s] = self.dur[s] | {v}
            else:
                self.cur[s] = self.cur[s] | {v}
                self.dur[s] = self.dur[s] | {v}

    def flush(self, ok):
        if ok:
            self.dur = [set(x) for x in self.cur]

    def create(self, name, ok):
        self.snaps[name] = dict(sets=[set(x) for x in self.cur],
                                created_ok=ok, deleted_ok=False,
                                delete_failed=False)
        if ok:
            self.flush(True)

    def revert(self, name, ok):
        t = self.snaps[name]["sets"]
        if ok:
            self.cur = [set(x) for x in t]
            self.dur = [set(x) for x in t]
        else:
            self.cur = [a | b for a, b in zip(self.cur, t)]
            self.dur = [a | b for a, b in zip(self.dur, t)]

    def delete(self, name, ok):
        if ok:
            self.snaps[name]["deleted_ok"] = True
        else:
            self.snaps[name]["delete_failed"] = True


def check_sets(what, data, sets):
    bad = [i for i, v in enumerate(sectors(data)) if v not in sets[i]]
    if bad:
        i = bad[0]
        raise AssertionError(
            "%s: %d sectors hold values the model does not allow, the "
            "first at byte %d (%r...; allowed: %s)" %
            (what, len(bad), i * SECTOR, sectors(data)[i][:8],
             [x[:8] for x in sets[i]]))


class Run:
    """One nbdkit with the shim, the workload, the restart, the checks."""

    def __init__(self, calls, obj, nth, kill9, count=None, err=None):
        self.calls, self.obj, self.nth, self.kill9 = calls, obj, nth, kill9
        self.count, self.err = count, err
        self.dir = os.path.join(TMP, "sweep-dir")
        self.sock = os.path.join(TMP, "sweep.sock")
        self.pidf = os.path.join(TMP, "sweep.pid")
        self.log = os.path.join(TMP, "sweep-srv.log")
        self.filog = os.path.join(TMP, "sweep-fi.log")
        self.ops = []            # (name, ok, detail)
        self.proc = None

    # ---------------------------------------------------------- server
    def start(self, faults):
        for f in (self.sock, self.pidf):
            if os.path.exists(f):
                os.unlink(f)
        env = dict(os.environ)
        if faults:
            env.update(LD_PRELOAD=SHIM, FI_CALLS=self.calls, FI_LOG=self.filog)
            if self.obj:
                # Allocations: by the object that makes them (FI_PATH
                # would compare its file name with the directory).
                env["FI_OBJ"] = self.obj
                env["FI_ERRNO"] = "ENOMEM"
            else:
                env["FI_PATH"] = self.dir + "/"
            if self.nth:
                env["FI_NTH"] = str(self.nth)
                if self.count is not None:
                    env["FI_COUNT"] = str(self.count)
                if self.err:
                    env["FI_ERRNO"] = self.err
        with open(self.log, "a") as log:
            log.write("=== %s faults=%s nth=%s\n" % (time.strftime("%T"), faults,
                                                     self.nth))
            log.flush()
            self.proc = subprocess.Popen(
                ["nbdkit", "-f", "-U", self.sock, "-P", self.pidf,
                 "--filter=" + F, "file", BASE, "snapshot-dir=" + self.dir,
                 "snapshot-block-size=" + BS],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        with open(os.path.join(TMP, "sweep.bgpid"), "w") as f:
            f.write("%d\n" % self.proc.pid)
        end = time.time() + 30
        while time.time() < end:
            if self.proc.poll() is not None:
                return False
            if os.path.exists(self.pidf) and os.path.getsize(self.pidf) > 0 \
               and os.path.exists(self.sock):
                # .after_fork may still refuse: the first connection tells.
                try:
                    h = st.connect(self.sock)
                    st.close(h)
                    return True
                except nbd.Error as e:
                    if self.proc.poll() is not None:
                        return False
                    # Serving, but this open failed (an allocation of
                    # the open itself): a failed operation.
                    self.ops.append(("connect", False, str(e), e.errnum))
            time.sleep(0.02)
        raise AssertionError("nbdkit did not start within 30 s")

    def stop(self):
        assert self.proc.poll() is None, "nbdkit died: " + self.tail()
        if self.kill9:
            self.proc.kill()
            self.proc.wait()
        else:
            self.proc.send_signal(signal.SIGTERM)
            stt = self.proc.wait(60)
            assert stt == 0, "nbdkit exited with status %d on SIGTERM: %s" % (
                stt, self.tail())

    def tail(self, n=30):
        with open(self.log) as f:
            return "".join(f.readlines()[-n:])

    def log_since(self, mark):
        with open(self.log) as f:
            f.seek(mark)
            return f.read()

    def fi_lines(self):
        try:
            with open(self.filog) as f:
                return f.read().splitlines()
        except OSError:
            return []

    # ---------------------------------------------------------- client
    def op(self, name, fn):
        """Run fn, recording (name, ok, detail, errno): ok is fn's result
        (a command's "ok"), or False if it raised."""
        err = None
        try:
            r = fn()
            ok = True if r is None else r
            detail = ""
        except (nbd.Error, AssertionError) as e:
            ok, detail = False, str(e)
            err = getattr(e, "errnum", None)
        self.ops.append((name, ok, detail, err))
        return ok

    def command(self, export):
        j = st.command(self.sock, export)
        return j["ok"]

    def snapshot_names(self):
        j = st.command(self.sock, "@snapshot:list")
        assert j["ok"], "list failed: %r" % j
        return j

    def diff_extents(self, export):
        """The change map of export: only blocks the workload wrote may
        be allocated (the writes between s1 and s2 are 8K..20K)."""
        h = st.connect(self.sock, export)
        try:
            for (o, n, f) in st.extents(h):
                if not (f & nbd.STATE_HOLE):
                    assert o >= 8192 and o + n <= 20480, \
                        "%s: changed extent %d+%d outside 8K..20K" % (export, o, n)
        finally:
            st.close(h)

    def connect_live(self):
        """Connect to the live disk; a failed open (the fault) is a failed
        operation, and the next try must work."""
        for _ in range(3):
            try:
                return st.connect(self.sock)
            except nbd.Error as e:
                self.ops.append(("connect", False, str(e), e.errnum))
        raise AssertionError("cannot connect to the live disk: %s" % self.tail())

    def read(self, export=""):
        h = st.connect(self.sock, export)
        try:
            return st.read_all(h)
        finally:
            st.close(h)

    def wait_merged(self, name, after_restart):
        if not after_restart:
            # A delete of a snapshot that does not exist waits for the
            # running merge, then fails (ENOENT): one command whatever
            # the timing, so that the calls of the run are always the
            # same and fault point N always hits the same one.
            try:
                j = st.command(self.sock, "@snapshot:delete/zz-no-such")
                if j.get("errno") not in ("ENOENT", "EIO"):
                    self.ops.append(("wait", False, j.get("error"), None))
            except (nbd.Error, AssertionError) as e:
                self.ops.append(("wait", False, str(e), None))
        end = time.time() + 30
        while time.time() < end:
            try:
                j = st.command(self.sock, "@snapshot:list")
            except (nbd.Error, AssertionError) as e:
                self.ops.append(("list", False, str(e), None))
                time.sleep(0.05)
                continue
            if not j["ok"]:
                self.ops.append(("list", False, j.get("error"), None))
                time.sleep(0.05)
                continue
            s = [x for x in j["snapshots"] if x["merging"]]
            errs = [x["merge_error"] for x in s if "merge_error" in x]
            if errs:
                assert not after_restart, "merge failed without faults: %s" % errs
                self.ops.append(("merge", False, errs[0], None))
                return
            if not s:
                return
            time.sleep(0.05)
        raise AssertionError("merge of %s did not finish in 30 s" % name)

    def workload(self, m):
        rnd = random.Random(42)

        def data(n):
            return bytes(rnd.getrandbits(8) for _ in range(n))

        h = self.connect_live()

        def w(off, n, fua=False):
            d = data(n)
            ok = self.op("write %d+%d%s" % (off, n, " fua" if fua else ""),
                         lambda: h.pwrite(d, off, nbd.CMD_FLAG_FUA if fua else 0))
            m.write(off, d, ok, fua)

        def z(off, n, trim=False, fua=False):
            f = nbd.CMD_FLAG_FUA if fua else 0
            ok = self.op("%s %d+%d" % ("trim" if trim else "zero", off, n),
                         (lambda: h.trim(n, off, f)) if trim else
                         (lambda: h.zero(n, off, f)))
            # A trimmed range reads as zeroes, as a zeroed one does.
            m.write(off, bytes(n), ok, fua)

        flushes = []

        def fl():
            ok = self.op("flush", lambda: h.flush())
            m.flush(ok)
            flushes.append(ok or self.ops[-1][3])

        def cmd(verb, name):
            return self.op("%s %s" % (verb, name),
                           lambda: self.command("@snapshot:%s/%s" % (verb, name)))

        w(0, 20480)
        w(50176, 3072)                 # partial blocks: read-modify-write
        w(102400, 8192, fua=True)
        z(204800, 16384)               # whole blocks: hole punched
        z(307200, 1024)                # partial block
        z(409600, 8192, trim=True)
        fl()
        ok = cmd("create", "s1"); m.create("s1", ok)
        w(8192, 12288)
        fl()
        ok = cmd("create", "s2"); m.create("s2", ok)
        self.op("extents of @snapshot:diff/s1/s2",
                lambda: self.diff_extents("@snapshot:diff/s1/s2"))
        w(614400, 4096)
        ok = self.op("revert s1", lambda: self.command("@snapshot:revert/s1/force"))
        m.revert("s1", ok)
        w(716800, 8192)
        fl()
        ok = cmd("delete", "s1"); m.delete("s1", ok)
        self.wait_merged("s1", False)
        w(819200, 4096, fua=True)
        w(4096, 4096)
        fl()
        st.close(h)
        # fsyncgate: once a flush failed on an I/O error (anything but
        # ENOMEM, after which nothing was written), no later flush may
        # succeed.
        bad = [i for i, x in enumerate(flushes)
               if x is not True and x != errno.ENOMEM]
        if bad:
            assert all(x is not True for x in flushes[bad[0]:]), \
                "a flush succeeded after a failed flush: %s" % flushes
        return flushes

    def check_reads(self, m, after_restart):
        """Read the live disk and every snapshot, and check them against
        the model.  Before the restart the fault may hit these reads (an
        allocation of a view): that is a failed operation, not a wrong
        result."""
        what = "after restart" if after_restart else "before restart"

        def read(export):
            if after_restart:
                return self.read(export)
            try:
                return self.read(export)
            except nbd.Error as e:
                self.ops.append(("read " + export, False, str(e), e.errnum))
                return None

        data = read("")
        if data is not None:
            check_sets("live disk " + what, data,
                       m.dur if after_restart else m.cur)
        try:
            j = self.snapshot_names()
        except (nbd.Error, AssertionError) as e:
            if after_restart:
                raise
            self.ops.append(("list", False, str(e), None))
            return
        names = [s["name"] for s in j["snapshots"]]
        for n in names:
            assert n in m.snaps, "unknown snapshot %s %s" % (n, what)
            data = read("@snapshot/" + n)
            if data is not None:
                check_sets("snapshot %s %s" % (n, what), data,
                           m.snaps[n]["sets"])
        if after_restart:
            for n, s in m.snaps.items():
                if s["deleted_ok"]:
                    assert n not in names, "deleted snapshot %s still exists" % n
                elif s["created_ok"] and not s["delete_failed"]:
                    assert n in names, "snapshot %s is lost" % n
        return names


def run_point(calls, obj, nth, kill9, count=None, err=None):
    """One run; returns (outcome, fi_lines, ops)."""
    r = Run(calls, obj, nth, kill9, count, err)
    if os.path.exists(r.dir):
        shutil.rmtree(r.dir)
    for f in (r.filog,):
        if os.path.exists(f):
            os.unlink(f)
    with open(BASE, "rb") as f:
        base = f.read()
    m = Model(base)
    mark = os.path.getsize(r.log) if os.path.exists(r.log) else 0
    try:
        started = r.start(True)
        if not started:
            stt = r.proc.wait()
            assert stt == 1, "nbdkit exited with status %d at start: %s" % (
                stt, r.tail())
            assert " error: " in r.log_since(mark), \
                "nbdkit refused to start without an error message"
            outcome = "start refused"
            during = True
        else:
            r.workload(m)
            r.check_reads(m, False)
            assert r.proc.poll() is None, "nbdkit died: " + r.tail()
            n_workload = len(r.fi_lines())
            r.stop()
            failed_at = [i for i, l in enumerate(r.fi_lines()) if l.endswith(" FAILED")]
            during = bool(failed_at) and failed_at[0] < n_workload
            bad_ops = [o for o in r.ops if not o[1]]
            if nth and failed_at:
                if during:
                    assert bad_ops, "fault %s during the workload, but every " \
                        "operation succeeded" % r.fi_lines()[failed_at[0]]
                else:
                    assert " error: " in r.log_since(mark), \
                        "fault %s at shutdown, and no error logged" % \
                        r.fi_lines()[failed_at[0]]
            if nth is None:
                assert not bad_ops, "operations failed without faults: %s" % bad_ops
            outcome = ("op failed: " + bad_ops[0][0].split(" ")[0]) if bad_ops \
                else ("at stop" if failed_at else "no fault")
        fi = r.fi_lines()
        # Restart without faults: the state loads, the data is right.
        r2 = Run(calls, obj, None, False)
        assert r2.start(False), "restart without faults failed: " + r2.tail()
        try:
            r2.wait_merged("-", True)
            r2.check_reads(m, True)
        finally:
            r2.stop()
        return outcome, fi, r.ops
    finally:
        if r.proc and r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", required=True)
    ap.add_argument("--obj")
    ap.add_argument("--points", default="all")
    ap.add_argument("--count", type=int,
                    help="FI_COUNT: calls failing from the Nth (0: all after)")
    ap.add_argument("--errno", help="FI_ERRNO (default EIO; ENOMEM with --obj)")
    a = ap.parse_args()
    what = a.calls + ("" if a.count is None else " count=%d" % a.count) + \
        ("" if not a.errno else " errno=" + a.errno)

    if not os.path.exists(BASE):
        rnd = random.Random(7)
        with open(BASE, "wb") as f:
            f.write(bytes(rnd.getrandbits(8) for _ in range(SIZE)))

    outcome, fi, ops = run_point(a.calls, a.obj, None, False)
    k = len(fi)
    assert k > 0, "the shim saw no calls (is it preloaded?)"
    kinds = collections.Counter(l.split(" ")[1] for l in fi)
    print("%s: %d calls counted (%s), %d operations" %
          (what, k, ", ".join("%s %d" % x for x in sorted(kinds.items())),
           len(ops)))
    if a.points == "all" or int(a.points) >= k:
        points = list(range(1, k + 1))
    else:
        n = int(a.points)
        points = [] if n <= 0 else [1] if n == 1 else \
            sorted({1 + (i * (k - 1)) // (n - 1) for i in range(n)})
    tally = collections.Counter()
    for i, nth in enumerate(points):
        # Every other point ends with kill -9, the others (and the last,
        # whose call is made at shutdown) with SIGTERM.
        kill9 = i % 2 == 1 and nth != k
        t0 = time.time()
        try:
            outcome, fi, ops = run_point(a.calls, a.obj, nth, kill9,
                                         a.count, a.errno)
        except AssertionError as e:
            print("point %d: FAIL: %s" % (nth, e))
            raise
        failed = [l for l in fi if l.endswith(" FAILED")]
        print("point %d/%d (%s): %s; %s [%.1fs]" %
              (nth, k, failed[0] if failed else "not reached", outcome,
               "kill -9" if kill9 else "SIGTERM", time.time() - t0))
        tally[outcome] += 1
    print("%s: %d of %d fault points tried: %s" %
          (what, len(points), k,
           ", ".join("%s %d" % x for x in sorted(tally.items()))))


if __name__ == "__main__":
    main()
