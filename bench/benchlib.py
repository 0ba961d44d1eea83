"""Helpers the scale benchmarks share (bench-scale.sh, bench-stack-scale.sh,
bench-cbt-scale.sh):
start nbdkit and time it to the first answered read, time an in-band
command's round trip, read a process's resident memory."""
import json
import subprocess
import sys
import time

import nbd


def start(argv, sock, log):
    """Start nbdkit -f -U sock ARGV...; (process, handle, seconds to the
    first answered read)."""
    t0 = time.monotonic()
    p = subprocess.Popen(["nbdkit", "-f", "-U", sock] + argv,
                         stderr=open(log, "a"))
    while True:
        try:
            h = nbd.NBD()
            h.connect_unix(sock)
            h.pread(512, 0)
            return p, h, time.monotonic() - t0
        except nbd.Error:
            if p.poll() is not None:
                sys.exit("nbdkit exited: " + open(log).read()[-2000:])
            time.sleep(0.002)


def cmd(sock, export):
    """Milliseconds of the round trip of command export (connect, read
    the JSON answer, disconnect); of the last try if it answered EBUSY
    (a closed connection not yet gone).  Exits if it failed."""
    for _ in range(100):
        t0 = time.monotonic()
        h = nbd.NBD()
        h.set_export_name(export)
        h.connect_unix(sock)
        r = json.loads(h.pread(h.get_size(), 0))
        h.shutdown()
        if r.get("errno") != "EBUSY":
            break
        time.sleep(0.05)
    if not r.get("ok"):
        sys.exit("%s: %s" % (export, r))
    return (time.monotonic() - t0) * 1000


def rss(p):
    """VmRSS of process p in MiB."""
    for line in open("/proc/%d/status" % p.pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
