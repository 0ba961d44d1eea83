#!/usr/bin/env bash
# Every parser of untrusted or on-disk input survives its fuzzer: the
# libFuzzer harnesses under fuzz/ (ASan + UBSan) run over their checked-in
# corpora (seeds and every input that ever crashed one), then fuzz a few
# seconds each (FUZZ_SECONDS, default 3; with CHECK_LONG=1, 1800).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires clang --version
secs=${FUZZ_SECONDS:-3}
[ -n "$CHECK_LONG" ] && secs=${FUZZ_SECONDS:-1800}
st=0
"$top_srcdir/fuzz/build.sh" "$top_builddir" > "$tmpdir/build.log" 2>&1 || st=$?
[ "$st" -eq 77 ] && skip "no clang fuzzer runtime"
if [ "$st" -ne 0 ]; then
    cat "$tmpdir/build.log" >&2
    fail "building the fuzz harnesses failed"
fi
"$top_srcdir/fuzz/run.sh" "$secs" "$top_builddir" ||
    fail "a fuzz harness crashed (input above)"
