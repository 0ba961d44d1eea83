#!/usr/bin/python3
"""Fault injection sweep of the cbt filter (tests/test-cbt-faults.sh).

  cbt-faults.py --filter SO --shim SO --workdir DIR --mode strict|flush
                --kind io|malloc [--points all|spread] [--spread N]

A short workload runs against the cbt filter over the file plugin:
checkpoints created and deleted (oldest, newest, middle), writes, zeroes,
trims, flushes, a list and a change map read, each op on its own
connection.  First once with the fault shim only counting (FI_LOG) the
calls it considers: --kind io: pwrite, write, fsync, fdatasync, rename,
open, ftruncate on paths in cbt-dir (the directory itself included);
--kind malloc: every allocation made by nbdkit-cbt-filter.so.  The log
tells which calls belong to the start, to each op and to the stop.
Then, for each fault point N (all of them, or an even spread), the same
run with the Nth call failing (EIO or ENOMEM), and:

  * the fault is seen: a fault in the start makes nbdkit refuse to start
    (exit status 1, a message); a fault in an op makes that op fail (an
    NBD error, a failed open, or a command result "ok":false); a fault
    in the stop leaves a message in the log.  Nothing dies of a signal.
  * after a restart without faults (after a clean stop, or kill -9 for
    every other point in strict mode) the state loads, and:
      - every acknowledged create not deleted later exists; an
        acknowledged delete does not;
      - for every checkpoint that is reported consistent, the change map
        since it covers every block of every write, zero and trim that
        was acknowledged after the create of that checkpoint answered
        (the model).  A checkpoint that may miss changes must say
        "consistent": false.

Prints the number of calls counted, points tried and their outcomes.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import snaptest as st  # noqa: E402
import nbd  # noqa: E402

GRAN = 4096
SIZE = 1 << 20          # 256 blocks: one bitmap page


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


# ------------------------------------------------------------ the workload
# (kind, argument): create/delete NAME, list, map NAME,
# write/zero/trim (first block, nblocks), flush.
WORKLOAD = [
    ("create", "C1"),
    ("write", (0, 4)), ("write", (10, 1)), ("flush", None),
    ("create", "C2"),
    ("write", (20, 1)), ("zero", (21, 1)), ("trim", (22, 2)),
    ("write", (4, 1)), ("flush", None),
    ("list", None), ("map", "C1"),
    ("create", "C3"),
    ("write", (30, 1)),
    ("delete", "C1"),                   # oldest: dropped
    ("write", (31, 1)),
    ("delete", "C3"),                   # newest: merged into C2
    ("write", (40, 2)), ("flush", None),
    ("create", "C4"),
    ("write", (41, 1)),
    ("delete", "C2"),                   # oldest again
    ("write", (42, 1)), ("zero", (50, 3)), ("flush", None),
    ("create", "C5"),
    ("write", (60, 1)),
    ("delete", "C4"),                   # middle: merged into nothing (oldest)
    ("write", (61, 1)), ("flush", None),
]


def connect(sock, export=""):
    return st.connect(sock, export)


def run_op(sock, op, arg):
    """Run one op; True if acknowledged, False if it failed."""
    try:
        if op in ("create", "delete", "list"):
            export = "@cbt:%s" % op + ("/" + arg if arg else "")
            h = connect(sock, export)
            try:
                n = h.get_size()
                text = h.pread(n, 0).decode("utf-8")
            finally:
                st.close(h)
            j = json.loads(text)
            check(j.get("filter") == "cbt" and j.get("command") == op,
                  "odd result %r" % j)
            return j["ok"] is True
        if op == "map":
            h = connect(sock, "@cbt/" + arg)
            try:
                st.extents(h)
            finally:
                st.close(h)
            return True
        h = connect(sock)
        try:
            if op == "write":
                b, n = arg
                h.pwrite(b"w" * (n * GRAN), b * GRAN)
            elif op == "zero":
                b, n = arg
                h.zero(n * GRAN, b * GRAN)
            elif op == "trim":
                b, n = arg
                h.trim(n * GRAN, b * GRAN)
            elif op == "flush":
                h.flush()
        finally:
            st.close(h)
        return True
    except nbd.Error:
        return False


# ------------------------------------------------------------ one run
class Run:
    def __init__(self, a, nth, end):
        self.a, self.nth, self.end = a, nth, end
        self.wd = a.workdir
        self.cbt = os.path.join(self.wd, "cbt")
        self.img = os.path.join(self.wd, "disk.img")
        self.sock = os.path.join(self.wd, "f.sock")
        self.log = os.path.join(self.wd, "f.log")
        self.filog = os.path.join(self.wd, "fi.log")
        # The shell harness kills every $tmpdir/*.bgpid (the workdir's
        # parent) on exit.
        self.bgpid = self.wd.rstrip("/") + ".bgpid"

    def args(self):
        return ["--filter=" + self.a.filter, "file", self.img,
                "cbt-dir=" + self.cbt, "cbt-sync=" + self.a.mode,
                "cbt-granularity=%d" % GRAN]

    def env(self):
        e = dict(os.environ)
        e["LD_PRELOAD"] = self.a.shim
        e["FI_LOG"] = self.filog
        if self.a.kind == "io":
            e["FI_CALLS"] = "pwrite,write,fsync,fdatasync,rename,open,ftruncate"
            e["FI_PATH"] = self.cbt
            e["FI_ERRNO"] = "EIO"
        else:
            e["FI_CALLS"] = "malloc"
            e["FI_OBJ"] = "nbdkit-cbt-filter"
            e["FI_ERRNO"] = "ENOMEM"
        if self.nth:
            e["FI_NTH"] = str(self.nth)
        return e

    def calls(self):
        try:
            with open(self.filog) as f:
                return [ln.split() for ln in f if ln.strip()]
        except FileNotFoundError:
            return []

    def start(self, env):
        for f in (self.sock,):
            if os.path.exists(f):
                os.unlink(f)
        with open(self.log, "a") as log:
            log.write("=== nbdkit %s (FI_NTH=%s)\n"
                      % (" ".join(self.args()), env.get("FI_NTH", "-")))
            log.flush()
            p = subprocess.Popen(["nbdkit", "-f", "-U", self.sock] + self.args(),
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
        with open(self.bgpid, "w") as f:
            f.write("%d\n" % p.pid)
        # Serves (an NBD handshake succeeds) or exits.
        end = time.time() + 60
        while time.time() < end:
            if p.poll() is not None:
                return p, False
            if os.path.exists(self.sock):
                try:
                    h = nbd.NBD()
                    h.set_opt_mode(True)
                    h.connect_unix(self.sock)
                    h.opt_abort()
                    return p, True
                except nbd.Error:
                    # Not listening yet, or it exited meanwhile.
                    try:
                        p.wait(0.05)
                        return p, False
                    except subprocess.TimeoutExpired:
                        continue
            time.sleep(0.01)
        p.kill()
        raise Failure("nbdkit neither served nor exited")

    def stop(self, p, how):
        if how == "kill9":
            p.kill()
            p.wait()
        else:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                raise Failure("nbdkit did not stop on SIGTERM")
        os.unlink(self.bgpid)
        return p.returncode

    def log_text(self):
        with open(self.log) as f:
            return f.read()

    def go(self):
        """Returns (outcome, per-phase call ranges) of the run."""
        shutil.rmtree(self.cbt, ignore_errors=True)
        for f in (self.filog, self.log):
            if os.path.exists(f):
                os.unlink(f)
        with open(self.img, "wb") as f:
            f.truncate(SIZE)
        p, served = self.start(self.env())
        phases = []                     # (name, first call, last call)
        results = []                    # (op, arg, acked) in order
        n0 = len(self.calls())
        phases.append(("start", 1, n0))
        if not served:
            st_ = p.wait()
            os.unlink(self.bgpid)
            check(st_ == 1, "start: nbdkit exited with status %d" % st_)
            check("error:" in self.log_text(), "start refused without a message")
            return "refused", phases, results, n0
        for op, arg in WORKLOAD:
            before = len(self.calls())
            ok = run_op(self.sock, op, arg)
            after = len(self.calls())
            results.append((op, arg, ok))
            phases.append(("%s %s" % (op, arg if arg else ""), before + 1, after))
            check(p.poll() is None, "nbdkit died during %s %s (status %s)"
                  % (op, arg, p.returncode))
        before = len(self.calls())
        status = self.stop(p, self.end)
        after = len(self.calls())
        phases.append(("stop", before + 1, after))
        if self.end == "stop":
            check(status == 0, "nbdkit exited with status %d at stop" % status)
        return "served", phases, results, after

    def verify(self, results):
        """Restart without faults; check the state against the model."""
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        p, served = self.start(env)
        check(served, "the restart without faults was refused:\n" +
              self.log_text()[-2000:])
        try:
            h = connect(self.sock, "@cbt:list")
            try:
                j = json.loads(h.pread(h.get_size(), 0).decode("utf-8"))
            finally:
                st.close(h)
            check(j["ok"] is True, "list after restart: %r" % j)
            have = {c["name"]: c for c in j["checkpoints"]}
            # Existence.
            must, mustnot = set(), set()
            for op, arg, ok in results:
                if op == "create" and ok:
                    must.add(arg)
                    mustnot.discard(arg)
                if op == "delete":      # a failed one may be done
                    must.discard(arg)
                    if ok:
                        mustnot.add(arg)
            check(must <= set(have), "acknowledged checkpoints missing: %s "
                  "(have %s)" % (sorted(must - set(have)), sorted(have)))
            check(not (mustnot & set(have)), "deleted checkpoints back: %s"
                  % sorted(mustnot & set(have)))
            # Coverage of every consistent checkpoint.
            nchecked = 0
            for name, c in have.items():
                if not c["consistent"]:
                    continue
                since = None
                for i, (op, arg, ok) in enumerate(results):
                    if op == "create" and arg == name:
                        since = i       # the last create of that name
                check(since is not None, "unknown checkpoint %s" % name)
                need = set()
                for op, arg, ok in results[since + 1:]:
                    if ok and op in ("write", "zero", "trim"):
                        need.update(range(arg[0], arg[0] + arg[1]))
                h = connect(self.sock, "@cbt/" + name)
                try:
                    got = set()
                    for (o, n, f) in st.extents(h):
                        if not (f & nbd.STATE_HOLE):
                            got.update(range(o // GRAN, (o + n + GRAN - 1) // GRAN))
                finally:
                    st.close(h)
                check(need <= got, "checkpoint %s is consistent but its change "
                      "map misses blocks %s" % (name, sorted(need - got)))
                nchecked += 1
            return have, nchecked
        finally:
            self.stop(p, "stop")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filter", required=True)
    ap.add_argument("--shim", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--mode", choices=("strict", "flush"), required=True)
    ap.add_argument("--kind", choices=("io", "malloc"), required=True)
    ap.add_argument("--points", choices=("all", "spread"), default="all")
    ap.add_argument("--spread", type=int, default=40)
    ap.add_argument("--only", type=int, help="try only this fault point")
    a = ap.parse_args()
    tag = "%s/%s" % (a.mode, a.kind)

    # Counting run.
    r = Run(a, 0, "stop")
    outcome, phases, results, k = r.go()
    check(outcome == "served" and all(ok for _, _, ok in results),
          "%s: the workload fails without faults: %r" % (tag, results))
    r.verify(results)
    if a.points == "all" or k <= a.spread:
        points = list(range(1, k + 1))
    else:
        step = k / a.spread
        points = sorted({int(i * step) + 1 for i in range(a.spread)} | {k})
    counts = {"refused at start": 0, "op failed": 0, "error at stop": 0}
    inconsistent = 0
    if a.only:
        points = [a.only]
    stop_first = phases[-1][1]          # calls of the stop: no kill -9
    for n in points:
        end = "kill9" if a.mode == "strict" and n % 2 and n < stop_first \
            else "stop"
        r = Run(a, n, end)
        try:
            outcome, phases, results, _ = r.go()
            failed = [c for c in r.calls() if c[-1] == "FAILED"]
            check(len(failed) == 1 or outcome == "refused",
                  "expected one failed call, log has %d" % len(failed))
            if failed:
                fn = int(failed[0][0])
                at = [i for i, ph in enumerate(phases) if ph[1] <= fn <= ph[2]]
                check(at, "failed call %d is in no phase" % fn)
                at = at[0]
            else:
                at = 0
            phase = phases[at][0]
            if outcome == "refused":
                counts["refused at start"] += 1
            elif phase == "stop":
                check(end == "kill9" or "error:" in r.log_text(),
                      "fault at stop left no message")
                counts["error at stop"] += 1
            else:
                check(phase != "start", "a fault in the start was ignored: "
                      "nbdkit served (call %s)" % " ".join(failed[0]))
                op, arg, ok = results[at - 1]
                check(not ok, "the fault (call %s) hit '%s' and it answered "
                      "ok" % (" ".join(failed[0]), phase))
                counts["op failed"] += 1
            have, nchecked = r.verify(results)
            inconsistent += sum(1 for c in have.values() if not c["consistent"])
        except Failure as e:
            print("%s: FAIL at fault point %d of %d (end: %s): %s\n--- log:\n%s"
                  % (tag, n, k, end, e, r.log_text()[-3000:]), file=sys.stderr)
            return 1
    print("%s: %d calls counted, %d fault points tried (%s): %s; %d "
          "checkpoints reported inconsistent after restarts" %
          (tag, k, len(points), "all" if len(points) == k else "spread",
           ", ".join("%d %s" % (v, n) for n, v in counts.items()),
           inconsistent))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print("FAIL: %s" % e, file=sys.stderr)
        sys.exit(1)
