#!/usr/bin/env bash
# cbt filter, randomized model: parallel connections write, zero and trim
# at random while checkpoints are created (also in the middle of the
# writing), deleted, and the server restarts cleanly (sometimes switching
# cbt-sync); after every phase the change map since every checkpoint, and
# between random pairs, equals the model's set of written blocks exactly.
# Run once at 4K and once at 64K granularity; MODEL_SEED=N repeats a run.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

seed=${MODEL_SEED:-$($PYTHON -c 'import random; print(random.SystemRandom().getrandbits(31))')}
secs=${MODEL_SECONDS:-30}
echo "$testname: seed $seed (MODEL_SEED=$seed to repeat)"

timeout $((secs + 120)) $PYTHON "$testsdir/model-cbt.py" model --filter "$C" --workdir "$tmpdir" \
    --granularity 4096 --disk-size $((4 << 20)) --seconds "$secs" --seed "$seed" ||
    fail "model failed at 4K granularity (seed $seed)"
timeout $((secs + 120)) $PYTHON "$testsdir/model-cbt.py" model --filter "$C" --workdir "$tmpdir" \
    --granularity 65536 --disk-size $((16 << 20)) --seconds "$secs" --seed "$seed" ||
    fail "model failed at 64K granularity (seed $seed)"
