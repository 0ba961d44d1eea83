#!/usr/bin/env python3
"""wait-serving.py PID SOCKET|PORT: wait until nbdkit (PID) sends its NBD
greeting on SOCKET (a Unix socket path) or 127.0.0.1:PORT, then hang up.

nbdkit writes its pid file and has its socket listening before it runs
the filters' .after_fork (where ours check and clean their state
directories), and accepts connections only after it: the greeting
proves .after_fork has finished.  Hanging up after the greeting opens
nothing (no filter's .open runs).  Exits 0 when greeted, and also when
nbdkit is gone (the caller decides what a start that died means);
1 if neither happens within 60 s.  NBDSNAP_START_NO_WAIT=1 in the
environment: exit at once (a test that needs the window before
.after_fork ends)."""
import os
import socket
import sys
import time

pid, where = int(sys.argv[1]), sys.argv[2]
if os.environ.get("NBDSNAP_START_NO_WAIT"):
    sys.exit(0)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(0)
    try:
        if where.isdigit():
            s = socket.create_connection(("127.0.0.1", int(where)), timeout=5)
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(where)
        with s:
            # The whole newstyle greeting (magic, IHAVEOPT, flags): a
            # hang-up with bytes left unread resets the connection, which
            # nbdkit logs as an error; after all of them it is an EOF.
            got = b""
            while len(got) < 18:
                b = s.recv(18 - len(got))
                if not b:
                    break
                got += b
            if got[:8] == b"NBDMAGIC":
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.02)
sys.exit(1)
