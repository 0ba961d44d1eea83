#!/usr/bin/env bash
# freeze filter, the seed thread's T1..T4 example at NBD level
# (libvirt-checkpoint-thread, "S2_3.bak"), on --filter=freeze --filter=cbt
# --filter=snapshot over an 8-block memory disk |--------| (4K blocks
# everywhere).  The guest writes A, B, D exactly as in the thread; every
# checkpoint is taken with @freeze:begin, and every backup is copied
# *after* the guest has written more, so the frozen points must keep the
# pictures of their instants:
#   T2  S1.bak  = @freeze/B2                  |AAAA----|
#   T3  S2.bak  = @freeze:diff/B2/B3 (map)    |---BBB--|   full3 |AAABBB--|
#   T4  full4   = @freeze/B4                  |DAABBDD-|
#       S2_3.bak= @freeze:diff/B2/B4          |D--BBDD-|
#       S3.bak  = @freeze:diff/B3/B4          |D----DD-|
# The chains S1<-S2<-S3 and S1<-S2_3 (data/zero extents applied onto the
# base image) must give full4 byte for byte, S1<-S2 gives full3, and the
# nbdinfo --map of each incremental is exactly its picture (- = hole).
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER
requires nbdcopy --version
requires nbdinfo --version

frz_ok ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed"
    verb=${2#@freeze:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "freeze"' \
        "j.get('command') == '$verb'" 'j.get("ok") is True'
    printf '%s\n' "$out"
}

K=4096
pic () { $PYTHON "$testsdir/freeze-pic.py" "$@"; }
# guest PICTURE: the guest writes the blocks drawn in PICTURE.
guest () { nbd_op srv "" "$(pic write "$1" $K)"; }
# image NAME PICTURE: $tmpdir/NAME.pic, the expected image of PICTURE.
image () { pic image "$tmpdir/$1.pic" "$2" $K; }
# same_file A B: cmp, with a readable failure.
same_file () { cmp "$1" "$2" || fail "$(basename "$1") differs from $(basename "$2")"; }
# incremental NAME EXPORT PICTURE: nbdinfo --map of EXPORT is PICTURE,
# and its changed blocks applied onto an empty disk are PICTURE's bytes.
incremental ()
{
    same_text "$(pic map "$3" $K)" "$(map srv "$2")" "map of $1 ($2)"
    image empty "--------"
    $PYTHON "$testsdir/freeze-apply.py" "$(uri srv "$2")" \
        "$tmpdir/empty.pic" "$tmpdir/$1.alone"
    image "$1" "$3"
    same_file "$tmpdir/$1.alone" "$tmpdir/$1.pic"
}
apply () # APPLY EXPORT BASEFILE OUTFILE
{
    $PYTHON "$testsdir/freeze-apply.py" "$(uri srv "$1")" "$2" "$3"
}

start_server srv --filter="$Z" --filter="$C" --filter="$F" memory 32K \
    freeze-dir="$tmpdir" cbt-dir="$tmpdir/cbt" snapshot-dir="$tmpdir/snap" \
    freeze-block-size=4K cbt-granularity=4K snapshot-block-size=4K

# T1: brand new disk, checkpoint B1.
out=$(frz_ok srv @freeze:begin/B1)
json_check "$out" 'j["point"]["name"] == "B1"' 'j["point"]["checkpoint"] is True'
image full1 "--------"
dump srv @freeze/B1 "$tmpdir/full1"
same_file "$tmpdir/full1" "$tmpdir/full1.pic"
frz_ok srv @freeze:end/B1 >/dev/null

# The guest writes A.  T2: checkpoint B2 frozen; the guest goes on and
# writes B (blocks 3-5) before S1.bak is copied.
guest "AAAA----"
frz_ok srv @freeze:begin/B2 >/dev/null
guest "---BBB--"
dump srv @freeze/B2 "$tmpdir/S1.bak"
image S1 "AAAA----"
same_file "$tmpdir/S1.bak" "$tmpdir/S1.pic"
incremental B1.bak @freeze:diff/B1/B2 "AAAA----"

# T3: guest sees |AAABBB--|; checkpoint B3 frozen, B2's point released;
# the guest writes D (blocks 0, 5, 6) before the backups are copied.
frz_ok srv @freeze:begin/B3 >/dev/null
frz_ok srv @freeze:end/B2 >/dev/null
guest "D----DD-"
dump srv @freeze/B3 "$tmpdir/full3"
image full3 "AAABBB--"
same_file "$tmpdir/full3" "$tmpdir/full3.pic"
incremental S2.bak @freeze:diff/B2/B3 "---BBB--"
apply @freeze:diff/B2/B3 "$tmpdir/S1.bak" "$tmpdir/S2.bak"

# T4: guest sees |DAABBDD-|; checkpoint B4 frozen, B3's point released;
# the guest writes E (blocks 0, 1, 3, 5) before the backups are copied.
frz_ok srv @freeze:begin/B4 >/dev/null
frz_ok srv @freeze:end/B3 >/dev/null
guest "EE-E-E--"
dump srv @freeze/B4 "$tmpdir/full4"
image full4 "DAABBDD-"
same_file "$tmpdir/full4" "$tmpdir/full4.pic"
incremental S2_3.bak @freeze:diff/B2/B4 "D--BBDD-"
incremental S3.bak @freeze:diff/B3/B4 "D----DD-"

# The chains.
same_file "$tmpdir/S2.bak" "$tmpdir/full3"                  # S1 <- S2
apply @freeze:diff/B3/B4 "$tmpdir/S2.bak" "$tmpdir/S3.chain"
same_file "$tmpdir/S3.chain" "$tmpdir/full4"                # S1 <- S2 <- S3
apply @freeze:diff/B2/B4 "$tmpdir/S1.bak" "$tmpdir/S2_3.chain"
same_file "$tmpdir/S2_3.chain" "$tmpdir/full4"              # S1 <- S2_3

# The full backup's map: data where the guest wrote, the unwritten block
# 7 reads as zero.
same_text "0 28672 0 data
28672 4096 3 hole,zero" "$(map srv @freeze/B4)" "map of full4 (@freeze/B4)"

# Releasing B4 leaves the live disk with everything the guest wrote.
frz_ok srv @freeze:end/B4 >/dev/null
json_check "$(frz_ok srv @freeze:list)" 'j["points"] == []'
image live "EEAEBED-"
same_content srv "" "$tmpdir/live.pic"
stop_server srv
