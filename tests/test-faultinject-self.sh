#!/usr/bin/env bash
# The fault-injection shim (tests/faultinject.c) does what the fault and
# race tests rely on: it counts and fails exactly the calls it is told
# to, on the paths it is told to, and leaves everything else alone.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

require_built FAULTINJECT
fi_run () { env LD_PRELOAD="$FAULTINJECT" "$@"; }

d=$tmpdir/d; mkdir "$d"
# Counting only: nothing fails, every fsync on the path is logged.
fi_run FI_CALLS=fsync FI_PATH="$d/" FI_LOG="$tmpdir/log1" \
    dd if=/dev/zero of="$d/a" bs=4k count=2 conv=fsync status=none ||
    fail "counting mode made a call fail"
[ "$(wc -l < "$tmpdir/log1")" -eq 1 ] || fail "expected one fsync logged"
grep -q "^1 fsync $d/a\$" "$tmpdir/log1" || fail "log line: $(cat "$tmpdir/log1")"

# The first fsync fails with ENOSPC.
if fi_run FI_CALLS=fsync FI_PATH="$d/" FI_NTH=1 FI_ERRNO=ENOSPC \
        dd if=/dev/zero of="$d/b" bs=4k count=1 conv=fsync status=none \
        2> "$tmpdir/err2"; then
    fail "the injected fsync failure was not seen"
fi
grep -qi "no space" "$tmpdir/err2" || fail "wrong errno: $(cat "$tmpdir/err2")"

# Another path prefix: untouched.
fi_run FI_CALLS=fsync FI_PATH=/nonexistent/ FI_NTH=1 \
    dd if=/dev/zero of="$d/c" bs=4k count=1 conv=fsync status=none ||
    fail "a call outside FI_PATH failed"

# The 2nd write fails (dd writes 4 blocks one write each).
if fi_run FI_CALLS=write FI_PATH="$d/" FI_NTH=2 FI_LOG="$tmpdir/log4" \
        dd if=/dev/zero of="$d/e" bs=4k count=4 status=none 2>/dev/null; then
    fail "the 2nd write did not fail"
fi
[ "$(stat -c %s "$d/e")" -eq 4096 ] || fail "expected exactly one block written"
grep -q "^2 write .*FAILED\$" "$tmpdir/log4" || fail "log: $(cat "$tmpdir/log4")"

# rename is seen with its target path.
touch "$d/f"
if fi_run FI_CALLS=rename FI_PATH="$d/g" FI_NTH=1 mv "$d/f" "$d/g" 2>/dev/null
then
    fail "the injected rename failure was not seen"
fi
[ -e "$d/f" ] && [ ! -e "$d/g" ] || fail "rename happened anyway"

# Armed by a file only.
fi_run FI_CALLS=fsync FI_PATH="$d/" FI_NTH=1 FI_ARM="$tmpdir/armed" \
    dd if=/dev/zero of="$d/h" bs=4k count=1 conv=fsync status=none ||
    fail "the shim failed a call while not armed"
touch "$tmpdir/armed"
if fi_run FI_CALLS=fsync FI_PATH="$d/" FI_NTH=1 FI_ARM="$tmpdir/armed" \
        dd if=/dev/zero of="$d/h" bs=4k count=1 conv=fsync status=none \
        2>/dev/null; then
    fail "the shim did not fail a call while armed"
fi

# Allocations: only those made by the named object are considered.
mkdir "$tmpdir/cbt1" "$tmpdir/cbt2"
fi_run FI_CALLS=malloc FI_OBJ=no-such-object FI_LOG="$tmpdir/log7" \
    nbdkit -U - --filter="$CBT_FILTER" memory 1M cbt-dir="$tmpdir/cbt1" \
    --run 'nbdinfo --size "$uri" >/dev/null' || fail "nbdkit under the shim"
[ ! -s "$tmpdir/log7" ] || fail "allocations of another object were considered"
fi_run FI_CALLS=malloc FI_OBJ=nbdkit-cbt-filter FI_LOG="$tmpdir/log8" \
    nbdkit -U - --filter="$CBT_FILTER" memory 1M cbt-dir="$tmpdir/cbt2" \
    --run 'nbdinfo --size "$uri" >/dev/null' || fail "nbdkit under the shim"
grep -q "^1 malloc .*nbdkit-cbt-filter.so\$" "$tmpdir/log8" ||
    fail "the cbt filter's allocations were not seen: $(head -3 "$tmpdir/log8")"
