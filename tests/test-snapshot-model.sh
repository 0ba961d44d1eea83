#!/usr/bin/env bash
# Snapshot filter, randomized model test (tests/model-snapshot.py): random
# aligned and unaligned writes / zeroes / trims / reads / flushes on two
# live connections, mixed with snapshot create / revert (plain, EBUSY,
# /force) / delete and restarts (clean, and kill -9 right after a flush),
# all checked against an in-memory model of the live disk and of every
# snapshot; views, change maps and the list are compared at intervals.
# Three runs: 4K and 64K blocks on an 8M disk, 64K blocks on a disk of
# 2M + 12388 bytes.  The seed is printed;
# MODEL_SEED=N reproduces a run, MODEL_SECONDS=N sets the time per run.
TEST_TIMEOUT=${TEST_TIMEOUT:-400}
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

seed=${MODEL_SEED:-$(( (RANDOM << 15) | RANDOM ))}
for bs in 4096 65536; do
    timeout 300 $PYTHON "$testsdir/model-snapshot.py" --filter="$F" \
        --workdir="$tmpdir" --block-size=$bs --seed=$seed \
        --seconds="${MODEL_SECONDS:-45}" ||
        fail "model test failed (block size $bs, seed $seed): reproduce with MODEL_SEED=$seed"
done
# A disk whose last block is short, and shorter than a sector in it
# (partial blocks at the end of the disk; list bytes never above the
# disk size).
mkdir -p "$tmpdir/odd"
timeout 200 $PYTHON "$testsdir/model-snapshot.py" --filter="$F" \
    --workdir="$tmpdir/odd" --block-size=65536 --disk-size=$(( (2 << 20) + 12388 )) \
    --seed=$seed --seconds="${MODEL_ODD_SECONDS:-15}" ||
    fail "model test failed (odd disk size, seed $seed): reproduce with MODEL_SEED=$seed"
