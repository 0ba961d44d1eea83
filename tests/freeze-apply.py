#!/usr/bin/python3
# nbdsnap freeze tests: apply an incremental backup view onto a base image.
#
#   freeze-apply.py URI BASE OUT [--summary]
#
# URI is a change-map view (e.g. @freeze:diff/BASE/NAME).  OUT becomes a
# copy of the file BASE, then every extent of URI's base:allocation map is
# applied to it: "data" (type 0) extents are read from URI and written,
# "zero" (type 2) extents are zeroed, "hole" (type 1, unchanged) extents
# are left as they are in BASE.  Type 3 (hole,zero) must not occur in a
# change map: it is an error.  With --summary, prints one line
# "data=N zero=N hole=N" (bytes) on stdout.
import shutil
import sys

import nbd

CHUNK = 32 << 20


def extents(h, size):
    """[(offset, length, type)] covering [0, size), as the server sent."""
    out = []
    pos = 0
    while pos < size:
        got = []

        def cb(meta, off, entries, err):
            if meta != nbd.CONTEXT_BASE_ALLOCATION:
                return 0
            o = off
            for i in range(0, len(entries), 2):
                got.append((o, entries[i], entries[i + 1]))
                o += entries[i]
            return 0
        h.block_status(min(CHUNK, size - pos), pos, cb)
        if not got:
            sys.exit("freeze-apply: no extent returned at %d" % pos)
        for (o, n, t) in got:
            if o >= size:
                break
            n = min(n, size - o)
            if o != pos:
                sys.exit("freeze-apply: extents not contiguous at %d" % pos)
            out.append((o, n, t))
            pos = o + n
    return out


def main():
    uri, base, outf = sys.argv[1:4]
    summary = "--summary" in sys.argv[4:]
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    size = h.get_size()
    if not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
        sys.exit("freeze-apply: %s has no base:allocation" % uri)
    shutil.copyfile(base, outf)
    tot = {0: 0, 1: 0, 2: 0}
    with open(outf, "r+b") as f:
        f.seek(0, 2)
        if f.tell() != size:
            sys.exit("freeze-apply: base is %d bytes, the view %d" %
                     (f.tell(), size))
        for (o, n, t) in extents(h, size):
            if t == 3 or t not in tot:
                sys.exit("freeze-apply: extent type %d at %d+%d in a change "
                         "map" % (t, o, n))
            tot[t] += n
            if t == 1:
                continue
            p = o
            while p < o + n:
                k = min(CHUNK, o + n - p)
                f.seek(p)
                f.write(bytes(k) if t == 2 else h.pread(k, p))
                p += k
    h.shutdown()
    if summary:
        print("data=%d zero=%d hole=%d" % (tot[0], tot[2], tot[1]))


if __name__ == "__main__":
    main()
