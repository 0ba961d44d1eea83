# nbdsnap test helpers for the python (libnbd) parts of the test suite.
# Run with /usr/bin/python3 (the pyenv python3 has no nbd module).

import json
import os
import signal
import subprocess
import time
import urllib.parse

import nbd


def make_uri(target, export=""):
    """NBD URI of EXPORT on TARGET (a Unix socket path or an NBD URI)."""
    if "://" not in target:
        target = "nbd+unix://?socket=" + urllib.parse.quote(target, safe="/")
    u = urllib.parse.urlsplit(target)
    if isinstance(export, str):
        export = export.encode("utf-8")
    return (u.scheme + "://" + u.netloc + "/" +
            urllib.parse.quote(export, safe=b"") +
            ("?" + u.query if u.query else ""))


def connect(target, export=""):
    """An nbd.NBD handle connected to EXPORT on TARGET."""
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.set_uri_allow_local_file(True)
    h.connect_uri(make_uri(target, export))
    return h


def close(h):
    """Disconnect cleanly (ignoring a server that is already gone).  The
    handle itself is freed when the last reference to it goes."""
    try:
        h.shutdown()
    except nbd.Error:
        pass


def command(target, export):
    """Open a command export once; return its JSON document (a dict).
    Raises AssertionError if the result is not one JSON object + "\\n"."""
    h = connect(target, export)
    try:
        n = h.get_size()
        text = h.pread(n, 0).decode("utf-8") if n else ""
    finally:
        close(h)
    assert text.endswith("\n") and text.count("\n") == 1, \
        "command %s: result is not one line ending in newline: %r" % (export, text)
    j = json.loads(text)
    assert isinstance(j, dict), "command %s: not a JSON object: %r" % (export, text)
    assert j.get("filter") == "snapshot", "command %s: %r" % (export, j)
    verb = export[len("@snapshot:"):].split("/")[0]
    assert j.get("command") == verb, "command %s: %r" % (export, j)
    assert isinstance(j.get("ok"), bool), "command %s: %r" % (export, j)
    if not j["ok"]:
        assert isinstance(j.get("errno"), str) and j.get("error"), \
            "command %s: failure without errno/error: %r" % (export, j)
    return j


def read_all(h, chunk=4 << 20):
    """The whole export behind handle h."""
    size = h.get_size()
    out = bytearray()
    off = 0
    while off < size:
        n = min(chunk, size - off)
        out += h.pread(n, off)
        off += n
    return bytes(out)


def extents(h):
    """base:allocation extents of the whole export: [(offset, length, flags)].
    The handle must have been connected with base:allocation requested
    (connect() does)."""
    size = h.get_size()
    out = []
    off = 0
    while off < size:
        got = []

        def cb(metacontext, offset, entries, err):
            if metacontext != nbd.CONTEXT_BASE_ALLOCATION:
                return 0
            o = offset
            for i in range(0, len(entries), 2):
                got.append((o, entries[i], entries[i + 1]))
                o += entries[i]
            return 0
        h.block_status(min(size - off, 1 << 30), off, cb)
        assert got, "block_status returned no extents at %d" % off
        for (o, n, f) in got:
            if o >= size:
                break
            n = min(n, size - o)
            if out and out[-1][2] == f and out[-1][0] + out[-1][1] == o:
                out[-1] = (out[-1][0], out[-1][1] + n, f)
            else:
                out.append((o, n, f))
            off = o + n
    return out


class Server:
    """A background nbdkit -f on a Unix socket, for tests that restart it."""

    def __init__(self, workdir, name, args):
        self.sock = os.path.join(workdir, name + ".sock")
        self.pidfile = os.path.join(workdir, name + ".pid")
        self.logname = os.path.join(workdir, name + ".log")
        # The shell harness kills every $tmpdir/*.bgpid on exit / timeout.
        self.bgpid = os.path.join(workdir, name + ".bgpid")
        self.args = list(args)
        self.proc = None

    def start(self, timeout=30):
        for f in (self.sock, self.pidfile):
            if os.path.exists(f):
                os.unlink(f)
        with open(self.logname, "a") as log:
            log.write("=== %s nbdkit %s\n" % (time.strftime("%T"), " ".join(self.args)))
            log.flush()
            self.proc = subprocess.Popen(
                ["nbdkit", "-f", "-U", self.sock, "-P", self.pidfile] + self.args,
                stdout=log, stderr=subprocess.STDOUT)
        with open(self.bgpid, "w") as f:
            f.write("%d\n" % self.proc.pid)
        end = time.time() + timeout
        while time.time() < end:
            if os.path.exists(self.pidfile) and os.path.getsize(self.pidfile) > 0 \
               and os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                self._reaped()
                raise AssertionError("nbdkit exited at startup (status %d); log:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            time.sleep(0.05)
        raise AssertionError("nbdkit did not start within %ds" % timeout)

    def _reaped(self):
        if os.path.exists(self.bgpid):
            os.unlink(self.bgpid)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30):
        """Clean shutdown with SIGTERM; must exit 0 in time."""
        assert self.alive(), "nbdkit died unexpectedly; log:\n" + self.log_tail()
        self.proc.send_signal(signal.SIGTERM)
        try:
            st = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._reaped()
            raise AssertionError("nbdkit did not exit within %ds of SIGTERM" % timeout)
        self._reaped()
        assert st == 0, "nbdkit exited with status %d on SIGTERM; log:\n%s" % (
            st, self.log_tail())

    def kill9(self):
        assert self.alive(), "nbdkit died unexpectedly; log:\n" + self.log_tail()
        self.proc.kill()
        self.proc.wait()
        self._reaped()

    def cleanup(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self._reaped()

    def log_tail(self, n=40):
        try:
            with open(self.logname) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


# --- shared by crashloop.py and powerloss.py (4 KiB tagged blocks) ---

class Failure(Exception):
    """A broken promise found by a harness."""
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def pattern(tag, bs=4096):
    """A block that is TAG as a little-endian u64 repeated (0: zeroes)."""
    import struct
    return struct.pack("<Q", tag) * (bs // 8) if tag else bytes(bs)
