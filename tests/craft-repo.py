#!/usr/bin/env python3
# Write nbdsnap repositories byte by byte (docs/repository-format.md),
# valid or crafted, for tests/test-nbdsnap-crafted.sh:
#
#   craft-repo.py REPO CASE
#
# makes REPO (a new directory) with a repository file, a valid full point
# "F1" (4 blocks of 64K, 3 of them data) and, unless CASE is "good", a
# point "X" crafted as CASE says (see CASES below; every checksum is
# right, so only the checks of the numbers stand between the reader and
# the bytes).
import hashlib
import os
import struct
import sys

BS = 65536
U64 = 1 << 64


def sha(b):
    return hashlib.sha256(b).digest()


def kv(text):
    # A text file: its lines, then "sha256 HEX" of them.
    return text + "sha256 " + sha(text.encode()).hex() + "\n"


def write(path, data):
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def manifest(name, kind="full", parent="-", disk_size=4 * BS, blocks=0,
             data_size=4096, index_sha=b"\0" * 32, sequence=1,
             compression="none"):
    return kv("nbdsnap-point\nversion 2\n"
              f"name {name}\nkind {kind}\nparent {parent}\n"
              f"checkpoint {name}\nsince {'-' if parent == '-' else parent}\n"
              f"sequence {sequence}\ndisk-size {disk_size}\n"
              f"block-size {BS}\ncompression {compression}\n"
              "created 2025-01-01T00:00:00Z\n"
              f"blocks {blocks}\ndata-size {data_size}\n"
              f"index-sha256 {index_sha.hex()}\n")


def entry(block, kind, slen, off, digest):
    return struct.pack("<QBIQ", block, kind, slen, off) + digest


def index(entries, count=None, raw=None):
    # raw: the bytes before the trailer as they are (no header added).
    body = raw if raw is not None else (
        b"NBDSNAPI" + struct.pack("<IIQII", 1, 53,
                                  len(entries) if count is None else count,
                                  BS, 0) + b"".join(entries))
    digest = sha(body)
    return body + digest, digest


def data_header():
    return b"NBDSNAPD" + struct.pack("<II", 2, BS) + b"\0" * (4096 - 16)


def point(repo, name, entries_blocks, seq, kind="full", parent="-",
          disk_size=4 * BS, compression="none", mutate=None):
    """A point whose data blocks are entries_blocks: {block: bytes}."""
    d = os.path.join(repo, "points", name)
    os.mkdir(d)
    data = bytearray(data_header())
    ents = []
    for b in sorted(entries_blocks):
        blk = entries_blocks[b]
        if blk is None:
            ents.append(entry(b, 2, 0, 0, b"\0" * 32))
            continue
        ents.append(entry(b, 1, len(blk), len(data), sha(blk)))
        data += blk
    f = dict(entries=ents, data=bytes(data), disk_size=disk_size,
             kind=kind, parent=parent, count=None, raw=None,
             blocks=None, data_size=None, sequence=seq,
             compression=compression, index_bytes=None)
    if mutate:
        mutate(f)
    idx, digest = index(f["entries"], f["count"], f["raw"])
    if f["index_bytes"] is not None:
        idx, digest = f["index_bytes"], sha(f["index_bytes"][:-32])
    write(os.path.join(d, "index"), idx)
    write(os.path.join(d, "data"), f["data"])
    write(os.path.join(d, "manifest"), manifest(
        name, f["kind"], f["parent"], f["disk_size"],
        len(f["entries"]) if f["blocks"] is None else f["blocks"],
        len(f["data"]) if f["data_size"] is None else f["data_size"],
        digest, f["sequence"], f["compression"]))


def block(seed):
    return bytes((seed * 7 + i * 13) & 255 for i in range(BS))


def inv53():
    return pow(53, -1, U64)


# Each case mutates the fields of point X (a copy of F1's layout).
def c_index_wrap(f):
    # 64 + 53 * blocks wraps around to 27, the size of this index: a
    # header that stops after the block size.  Without an overflow
    # check the size test passes and the SHA-256 of "size - 32" bytes
    # reads far past the mapping.
    n = ((27 - 64) * inv53()) % U64
    assert (64 + 53 * n) % U64 == 27
    body = b"NBDSNAPI" + struct.pack("<IIQ", 1, 53, n) + struct.pack("<I", BS)[:3]
    f["index_bytes"] = body           # 27 bytes, no trailer at all
    f["blocks"] = n


def c_blocks_huge(f):
    # A count larger than the disk's blocks (and the file).
    f["blocks"] = (1 << 63) + 5
    f["count"] = (1 << 63) + 5


def c_off_past_eof(f):
    e = bytearray(f["entries"][0])
    struct.pack_into("<Q", e, 13, len(f["data"]) + BS)
    f["entries"][0] = bytes(e)


def c_off_wrap(f):
    # off + len wraps around to a small number.
    e = bytearray(f["entries"][0])
    struct.pack_into("<Q", e, 13, U64 - 100)
    f["entries"][0] = bytes(e)


def c_len_huge(f):
    e = bytearray(f["entries"][0])
    struct.pack_into("<I", e, 9, 0xffffffff)
    f["entries"][0] = bytes(e)
    f["compression"] = "zstd"


def c_len_zero(f):
    e = bytearray(f["entries"][0])
    struct.pack_into("<I", e, 9, 0)
    f["entries"][0] = bytes(e)


def c_block_past_disk(f):
    e = bytearray(f["entries"][-1])
    struct.pack_into("<Q", e, 0, U64 - 1)
    f["entries"][-1] = bytes(e)


def c_unsorted(f):
    f["entries"][0], f["entries"][1] = f["entries"][1], f["entries"][0]


def c_data_size_small(f):
    f["data_size"] = len(f["data"]) - 1


def c_data_size_huge(f):
    f["data_size"] = U64 - 1


def c_disk_size_huge(f):
    f["disk_size"] = U64 - 1


def c_disk_size_max(f):
    # 2^63 - 1 bytes: valid by the format, far too large for this host
    # to hold a reader's block map of: refused with a message, not a
    # crash or an endless loop.
    f["disk_size"] = (1 << 63) - 1


def c_bad_zstd(f):
    # A "compressed" block whose frame claims a huge content size.
    frame = bytes.fromhex("28b52ffd") + b"\xe4" + struct.pack("<Q", U64 - 1) + b"\0" * 40
    e = bytearray(f["entries"][0])
    off = struct.unpack_from("<Q", e, 13)[0]
    data = bytearray(f["data"])
    data[off:off + len(frame)] = frame
    f["data"] = bytes(data)
    struct.pack_into("<I", e, 9, len(frame))
    f["entries"][0] = bytes(e)
    f["compression"] = "zstd"


def c_chain_loop(f):
    f["kind"] = "incremental"
    f["parent"] = "X"


def c_sequence_max(f):
    f["sequence"] = U64 - 1


def c_index_short(f):
    f["index_bytes"] = b"NBDSNAPI"


CASES = {k[2:]: v for k, v in globals().items() if k.startswith("c_")}


def main():
    repo, case = sys.argv[1], sys.argv[2]
    os.mkdir(repo)
    os.mkdir(os.path.join(repo, "points"))
    write(os.path.join(repo, "repository"), kv(
        "nbdsnap-repository\nversion 1\nblock-size 65536\n"
        "created 2025-01-01T00:00:00Z\n"))
    blocks = {0: block(1), 1: block(2), 3: block(3)}
    point(repo, "F1", blocks, 1)
    if case == "good":
        return
    if case not in CASES:
        sys.exit("unknown case %s (one of: %s)" % (case, " ".join(CASES)))
    point(repo, "X", blocks, 2, mutate=CASES[case])


if __name__ == "__main__":
    main()
