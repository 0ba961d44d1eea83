#!/usr/bin/env bash
# cbt filter, crash safety in cbt-sync=strict: six connections write
# random blocks while checkpoints are created; nbdkit is killed (kill -9)
# at a random moment; after the restart every checkpoint whose creation
# was acknowledged exists, is consistent, and its change map holds every
# block of every acknowledged write submitted after that acknowledgement
# (and no block that no write after it touched).  Three rounds on the
# same disk and cbt-dir; acknowledgements are recorded client-side.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

size=$((64 << 20))
gran=4096
img=$tmpdir/disk.img
truncate -s $size "$img"
start_server srv --filter="$C" file "$img" cbt-dir="$tmpdir/cbt" \
    cbt-sync=strict cbt-granularity=$gran
seed=${CRASH_SEED:-$RANDOM}
echo "$testname: seed $seed (CRASH_SEED=$seed to repeat the workload)"

# start_again NAME: start a server that was killed with its former args.
start_again ()
{
    local name=$1
    eval "set -- ${_srv_args[$name]}"
    start_server "$name" "$@"
}

files=()
for round in 1 2 3; do
    out=$tmpdir/storm-$round.json
    $PYTHON "$testsdir/model-cbt.py" storm --sock "$(sock srv)" --out "$out" \
        --prefix "r$round-C" --disk-size $size --granularity $gran \
        --seed $((seed + round)) > "$tmpdir/storm-$round.log" 2>&1 &
    storm=$!
    bg_register $storm
    for ((i = 0; i < 200; i++)); do
        grep -qs started "$tmpdir/storm-$round.log" && break
        kill -0 $storm 2>/dev/null || { cat "$tmpdir/storm-$round.log" >&2; fail "storm died"; }
        sleep 0.05
    done
    # Random moment between 0.3 and 2.5 seconds into the writing.
    sleep "$($PYTHON -c "import random; print(random.Random($seed * 7 + $round).uniform(0.3, 2.5))")"
    kill9_server srv
    wait $storm || { cat "$tmpdir/storm-$round.log" >&2; fail "storm round $round failed"; }
    cat "$tmpdir/storm-$round.log"
    files+=("$out")
    start_again srv
    timeout 120 $PYTHON "$testsdir/model-cbt.py" verify-storm --sock "$(sock srv)" \
        --granularity $gran "${files[@]}" || fail "round $round: change maps wrong after kill -9"
done
stop_server srv
