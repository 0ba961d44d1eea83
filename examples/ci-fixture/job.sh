#!/bin/bash
# job.sh URI NUMBER: one example CI job against the fixture disk at URI.
#
# A real job would attach the disk to a VM or a container (qemu -drive
# file=nbd:..., nbd-client, ...), install, run tests.  This one writes
# like a test run would:
# 1 MiB of "job N" records at N MiB, and zeroes the 64 KiB after them.
# It fails (exit 1) when N is in $FAIL_JOBS (space-separated).
set -euo pipefail
uri=$1 n=$2
export PATH=/usr/bin:$PATH        # nbdsh needs Debian's python3

nbdsh -u "$uri" -c "
n = $n
rec = ('job %d ' % n).encode()
data = (rec * (1048576 // len(rec) + 1))[:1048576]
h.pwrite(data, n * 1048576)
h.zero(65536, n * 1048576 + 1048576)
h.flush()
"
case " ${FAIL_JOBS:-} " in
    *" $n "*) echo "job $n: tests failed"; exit 1 ;;
esac
echo "job $n: tests passed"
