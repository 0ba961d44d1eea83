#!/usr/bin/python3
# nbdsnap tests: which sanitizer reports fail a test (tests/functions.sh,
# in a build configured with --enable-sanitizers or --enable-tsan).
#
#   sanitizer-reports.py TOP_SRCDIR FILE...
#
# FILEs are the reports the processes of one test wrote (log_path).
# Every report counts, except leaks and races that are not ours:
#
#  - a leak (LeakSanitizer) counts if it is direct and its allocation
#    stack has a frame of our code.  nbdkit leaks by design: at SIGTERM
#    it does not close the connections still open (their contexts, and
#    the handles our filters made for them, stay allocated), and it
#    leaks a few bytes per connection; python and the libraries have
#    their own.  An indirect leak is reachable from a direct one: it is
#    reported with that one if that one is ours, else it is not ours
#    either (our handles inside a context nbdkit did not close).  The
#    allocation must be made by our code, not by nbdkit or a plugin
#    called through us: a stack that meets nbdkit itself or one of its
#    plugins before our first frame (a plugin's handle opened through a
#    filter's next_open, left open by a connection nbdkit did not close
#    at exit) is not ours;
#  - a ThreadSanitizer warning counts if a frame of one of its stacks is
#    ours (nbdkit is not instrumented: what it does alone is not seen
#    reliably).
#  - "WARNING: AddressSanitizer failed to allocate": with
#    allocator_may_return_null=1 (tests/functions.sh) a request for
#    more memory than exists returns NULL, and our code must report
#    ENOMEM: that is the behaviour under test (test-nbdsnap-crafted's
#    disk_size_max), not a bug; the runtime warns anyway;
#  - anything else (AddressSanitizer errors, UBSan's "runtime error",
#    ThreadSanitizer's other reports) always counts.
#
# A frame is ours if its source file exists under TOP_SRCDIR/{common,
# filters,repo,plugins,tools,tests}, or it is in one of our modules.
# Prints what counts in full and one line about what does not; exits 1
# if anything counts.
import os
import re
import sys

top = sys.argv[1]
files = sys.argv[2:]

SRC = re.compile(r"\s(?:\S*/)?((?:common|filters|repo|plugins|tools|tests)/\S+?\.[ch]):\d+")
MOD = re.compile(r"[(/](nbdkit-(?:snapshot|cbt|freeze)-filter\.so|"
                 r"nbdkit-backup-plugin\.so|nbdsnap|unit-[a-z]+)\+0x")


def ours(lines):
    for line in lines:
        if not line.lstrip().startswith("#"):
            continue
        m = SRC.search(line)
        if m and os.path.exists(os.path.join(top, m.group(1))):
            return True
        if MOD.search(line):
            return True
    return False


NBDKIT = re.compile(r"[(/](?:usr/bin/nbdkit|nbdkit-[a-z]+-plugin\.so)\+0x")


def allocated_by_us(lines):
    """Does the allocation stack reach our code before nbdkit's?"""
    for line in lines:
        if not line.lstrip().startswith("#"):
            continue
        if NBDKIT.search(line) and not MOD.search(line):
            return False
        if ours([line]):
            return True
    return False


def split_reports(text):
    """Reports are separated by ==...== lines or start with a header."""
    reports, cur = [], []
    for line in text.splitlines():
        if re.match(r"^=+$", line) or re.match(r"^==\d+==ERROR:", line) \
           or line.startswith("WARNING: ThreadSanitizer"):
            if cur and any(x.strip() for x in cur):
                reports.append(cur)
            cur = [] if re.match(r"^=+$", line) else [line]
            continue
        cur.append(line)
    if cur and any(x.strip() for x in cur):
        reports.append(cur)
    return reports


def leak_blocks(report):
    """The Direct/Indirect leak blocks of a LeakSanitizer report."""
    blocks, cur = [], None
    for line in report:
        if re.match(r"^(Direct|Indirect) leak of ", line):
            cur = [line]
            blocks.append(cur)
        elif cur is not None:
            if line.strip() == "":
                cur = None
            else:
                cur.append(line)
    return blocks


counted, ignored = [], 0
for f in files:
    text = open(f, errors="replace").read()
    for rep in split_reports(text):
        head = "\n".join(rep)
        if "LeakSanitizer: detected memory leaks" in head:
            for b in leak_blocks(rep):
                if b[0].startswith("Direct") and allocated_by_us(b):
                    counted.append((f, ["LeakSanitizer: a leak of our code:"] + b))
                else:
                    ignored += 1
        elif "WARNING: ThreadSanitizer" in head and "data race" in head \
                or "WARNING: ThreadSanitizer: lock-order-inversion" in head:
            if ours(rep):
                counted.append((f, rep))
            else:
                ignored += 1
        elif re.search(r"^SUMMARY: (AddressSanitizer|ThreadSanitizer): "
                       r"\d+ byte\(s\) leaked", head, re.M) and \
                not re.search(r"ERROR|WARNING|runtime error", head):
            continue                    # the summary line of a leak report
        elif re.match(r"^==\d+==WARNING: AddressSanitizer failed to "
                      r"allocate 0x[0-9a-f]+ bytes$", head.strip()):
            ignored += 1
        elif head.strip().startswith("SUMMARY:") or \
                re.match(r"^ThreadSanitizer: reported \d+ warnings", head.strip()):
            continue
        else:
            counted.append((f, rep))

for f, rep in counted:
    print("----- %s" % os.path.basename(f))
    print("\n".join(rep))
if ignored:
    print("(%d reports ignored: leaks or races of code that is not ours, "
          "or failed huge allocations; "
          "see tests/sanitizer-reports.py)" % ignored)
sys.exit(1 if counted else 0)
