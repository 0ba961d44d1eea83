#!/usr/bin/python3
# nbdsnap freeze tests: the block pictures of the seed thread.
#
#   freeze-pic.py image FILE PICTURE BS
#       write the image of PICTURE: block i of BS bytes is zero for "-",
#       else the letter and the block number repeated ("A0A0A0...").
#   freeze-pic.py map PICTURE BS
#       the change map of an incremental backup drawn as PICTURE, as the
#       "map" helper of functions.sh prints it: "-" = unchanged = "1 hole",
#       anything else = changed data = "0 data"; adjacent blocks merged.
#   freeze-pic.py write PICTURE BS
#       python for nbd_op: write every non-"-" block of PICTURE.
import sys


def block(c, i, bs):
    if c == "-":
        return bytes(bs)
    pat = ("%s%d" % (c, i)).encode()
    return (pat * (bs // len(pat) + 1))[:bs]


def main():
    what = sys.argv[1]
    if what == "image":
        f, pic, bs = sys.argv[2], sys.argv[3], int(sys.argv[4])
        with open(f, "wb") as o:
            for i, c in enumerate(pic):
                o.write(block(c, i, bs))
    elif what == "map":
        pic, bs = sys.argv[2], int(sys.argv[3])
        runs = []
        for i, c in enumerate(pic):
            t = (1, "hole") if c == "-" else (0, "data")
            if runs and runs[-1][2] == t:
                runs[-1][1] += bs
            else:
                runs.append([i * bs, bs, t])
        for (o, n, t) in runs:
            print(o, n, t[0], t[1])
    elif what == "write":
        pic, bs = sys.argv[2], int(sys.argv[3])
        for i, c in enumerate(pic):
            if c != "-":
                print("h.pwrite(%r, %d)" % (block(c, i, bs), i * bs))
    else:
        sys.exit("freeze-pic.py: unknown action %s" % what)


if __name__ == "__main__":
    main()
