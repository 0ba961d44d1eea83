#!/usr/bin/python3
# nbdsnap stress tests: the guest of tests/test-stack-stress.sh.
#
#   stack-stress.py URI STOPFILE MODELFILE SEED
#
# Behaves like a VM disk under qemu (virtio-blk, cache=none,
# discard=unmap): ONE NBD connection with up to 16 requests in flight
# (qemu's NBD client limit), random writes (512 bytes to 1M, 512-aligned,
# some with FUA), trims, zeroes and flushes, until STOPFILE exists.  Then
# it drains, flushes, and writes MODELFILE: the disk as the requests
# made it, except trimmed sectors (their content is not defined after a
# trim), followed by one byte per 512-byte sector: 1 = known, 0 = not.
#
# Requests in flight never overlap, so the model does not depend on the
# order in which the server runs them.  Any request error fails at once
# (exit 1).  Prints one line of counts at the end.
import os
import random
import sys
import time

import nbd

uri, stopfile, modelfile, seed = sys.argv[1:5]
r = random.Random(int(seed))
DEPTH = 16
S = 512

h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(uri)
size = h.get_size()
nsect = size // S
model = bytearray(size)          # the disk starts as zeroes (see the test)
known = bytearray(b"\x01") * nsect
can_fua = h.can_fua()

inflight = {}                    # cookie -> (kind, first sector, sectors)
busy = bytearray(nsect)          # sectors under a request in flight
counts = {"write": 0, "fua": 0, "trim": 0, "zero": 0, "flush": 0}
errors = []


def done(kind, s0, n):
    def cb(err):
        # err is a ctypes int (libnbd's int *error).
        e = getattr(err, "value", err)
        for s in range(s0, s0 + n):
            busy[s] = 0
        if e != 0:
            errors.append("%s at sector %d (+%d): errno %d" % (kind, s0, n, e))
        return 1
    return cb


def free_range(n):
    """A run of n sectors with no request in flight, or None."""
    for _ in range(20):
        s0 = r.randrange(0, nsect - n + 1)
        if not any(busy[s0:s0 + n]):
            return s0
    return None


def submit():
    k = r.random()
    if k < 0.03:
        # A flush with writes in flight, as a guest's does.
        h.aio_flush(completion=done("flush", 0, 0))
        counts["flush"] += 1
        return
    n = r.choice([1, 8, 8, 8, 16, 32, 64, 128, 200, 256, 1024, 2048])
    s0 = free_range(n)
    if s0 is None:
        return
    for s in range(s0, s0 + n):
        busy[s] = 1
    off, length = s0 * S, n * S
    if k < 0.15:
        h.aio_trim(length, off, completion=done("trim", s0, n))
        for s in range(s0, s0 + n):
            known[s] = 0
        counts["trim"] += 1
    elif k < 0.20:
        h.aio_zero(length, off, completion=done("zero", s0, n))
        model[off:off + length] = bytes(length)
        known[s0:s0 + n] = b"\x01" * n
        counts["zero"] += 1
    else:
        data = r.randbytes(length)
        flags = 0
        if can_fua and r.random() < 0.05:
            flags = nbd.CMD_FLAG_FUA
            counts["fua"] += 1
        buf = nbd.Buffer.from_bytearray(bytearray(data))
        h.aio_pwrite(buf, off, completion=done("write", s0, n), flags=flags)
        model[off:off + length] = data
        known[s0:s0 + n] = b"\x01" * n
        counts["write"] += 1


t0 = time.time()
while not os.path.exists(stopfile):
    while h.aio_in_flight() >= DEPTH:
        h.poll(-1)
    submit()
    # Collect whatever is done without blocking.
    while h.aio_in_flight() > 0 and h.poll(0) > 0:
        pass
    if errors:
        sys.exit("stack-stress: request failed: " + errors[0])
while h.aio_in_flight() > 0:
    h.poll(-1)
if errors:
    sys.exit("stack-stress: request failed: " + errors[0])
h.flush()
h.shutdown()

with open(modelfile + ".tmp", "wb") as f:
    f.write(model)
    f.write(known)
os.rename(modelfile + ".tmp", modelfile)
total = sum(counts.values())
print("guest: %d requests in %.0fs (%s)" %
      (total, time.time() - t0,
       ", ".join("%s %d" % kv for kv in counts.items())), flush=True)
