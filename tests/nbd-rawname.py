#!/usr/bin/env python3
# nbd-rawname.py SOCKET NAME-AS-PYTHON-BYTES-LITERAL: open an export whose
# name is arbitrary bytes (a NUL, say), speaking the NBD handshake by hand
# (libnbd takes C strings), and print what happened: "refused ERRNUM",
# or "opened" and the export's first bytes (a command's JSON).
import ast, socket, struct, sys

sock, name = sys.argv[1], ast.literal_eval(sys.argv[2])
s = socket.socket(socket.AF_UNIX)
s.connect(sock)

def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("closed")
        b += c
    return b

assert recv(16) == b"NBDMAGICIHAVEOPT"
recv(2)                                         # handshake flags
s.sendall(struct.pack(">I", 3))                 # FIXED_NEWSTYLE|NO_ZEROES
data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(data)) + data)  # OPT_GO
size = None
while True:
    magic, opt, typ, ln = struct.unpack(">QIII", recv(20))
    payload = recv(ln)
    if typ & 0x80000000:
        print("refused", typ & 0x7fffffff, payload[4:].decode("utf-8", "replace") if ln > 4 else "")
        sys.exit(0)
    if typ == 3 and struct.unpack(">H", payload[:2])[0] == 0:   # INFO_EXPORT
        size = struct.unpack(">Q", payload[2:10])[0]
    if typ == 1:                                                # ACK
        break
n = min(size or 0, 4096)
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, n))
magic, err, handle = struct.unpack(">IIQ", recv(16))
print("opened", recv(n).decode("utf-8", "replace") if err == 0 else "read error %d" % err)
