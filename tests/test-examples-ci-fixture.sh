#!/usr/bin/env bash
# examples/ci-fixture runs as its README says: three jobs against a golden
# image behind the snapshot filter with snapshot-revert-on-close; job 2
# fails.  Expected: every job started from the golden bytes (reset timed),
# the golden image is byte-for-byte unchanged, failed-job-2 is kept and
# its copy is exactly the golden image plus job 2's writes (built here
# with dd, independently of the filter), no other job is kept, and the
# GitHub Actions and GitLab CI files parse as YAML and run the script.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
export NBDSNAP
requires nbdsh --version
requires nbdcopy --version
ex=$top_srcdir/examples/ci-fixture

# 1. The CI files: valid YAML, and they run the recipe's script.
$PYTHON - "$ex/github-actions.yml" "$ex/.gitlab-ci.yml" <<'PY' ||
import sys, yaml
gh = yaml.safe_load(open(sys.argv[1]))
on = gh.get("on", gh.get(True))          # YAML 1.1 reads a bare "on" as true
assert on and "push" in on, "github: no 'on: push'"
job = gh["jobs"]["fixture"]
assert job["runs-on"] and job["container"] == "debian:12", job
runs = [s.get("run", "") for s in job["steps"]]
assert any("examples/ci-fixture/run-jobs.sh" in r for r in runs), runs
assert any("make install" in r for r in runs), runs
up = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
assert up and up[0]["if"] == "always()" and "failed-job-" in up[0]["with"]["path"], up
gl = yaml.safe_load(open(sys.argv[2]))
assert gl["stages"] == ["build", "fixture"], gl["stages"]
fx = gl["fixture"]
assert fx["stage"] == "fixture" and fx["needs"] == ["build"], fx
assert any("examples/ci-fixture/run-jobs.sh" in l for l in fx["script"]), fx["script"]
assert fx["artifacts"]["when"] == "always", fx["artifacts"]
assert any(p.startswith("ci-work/failed-job-") for p in fx["artifacts"]["paths"])
print("CI files: valid YAML with the expected jobs")
PY
    fail "the CI files are not what the recipe says"

# 2. The script.
head -c 64M /dev/urandom > "$tmpdir/golden.img"
golden_sum=$(sha256sum < "$tmpdir/golden.img")
cp "$tmpdir/golden.img" "$tmpdir/expect.img"
# job.sh 2: 1 MiB of "job 2 " records at 2 MiB, then 64 KiB of zeroes.
$PYTHON -c '
import sys
rec = b"job 2 "
sys.stdout.buffer.write((rec * (1048576 // len(rec) + 1))[:1048576] + bytes(65536))
' > "$tmpdir/job2.bin"
dd if="$tmpdir/job2.bin" of="$tmpdir/expect.img" bs=1M seek=2 conv=notrunc \
   status=none

GOLDEN=$tmpdir/golden.img JOBS="1 2 3" FAIL_JOBS=2 \
    bash "$ex/run-jobs.sh" "$tmpdir/work" > "$tmpdir/run.out" 2>&1 || {
    cat "$tmpdir/run.out"; fail "run-jobs.sh failed"; }
cat "$tmpdir/run.out"

[ "$(grep -c '^job [123] passed; reset to golden in [0-9]* ms$' "$tmpdir/run.out")" = 2 ] ||
    fail "jobs 1 and 3 should pass, each with a timed reset"
grep -q '^job 2 failed; reset to golden in [0-9]* ms$' "$tmpdir/run.out" ||
    fail "job 2 should fail, with a timed reset"
grep -q '^-- inspected failed-job-2 while the next job ran' "$tmpdir/run.out" ||
    fail "failed-job-2 was not inspected"
[ "$(sha256sum < "$tmpdir/golden.img")" = "$golden_sum" ] ||
    fail "the golden image changed"
cmp "$tmpdir/expect.img" "$tmpdir/work/failed-job-2.img" ||
    fail "failed-job-2 is not the disk job 2 left"
grep -qx 'changed: 1114112 bytes (1.1M) of 67108864' "$tmpdir/work/failed-job-2.map" ||
    fail "failed-job-2's change map is not job 2's writes"
ls "$tmpdir/work" | grep -q 'failed-job-[13]' &&
    fail "a passed job's disk was kept"
names=$(sed -n '/^== snapshots kept/,/^== summary/p' "$tmpdir/run.out" |
        awk 'NR > 2 && !/^==/ { print $1 }' | tr '\n' ' ')
[ "$names" = "golden failed-job-2 (live " ] ||
    fail "snapshots kept: '$names', expected golden and failed-job-2"
echo "ok: golden unchanged, failed-job-2 byte-exact, resets timed"
