#!/usr/bin/env bash
# freeze filter, everything that must be refused:
#  * parameters: missing freeze-dir, a freeze-dir that does not exist,
#    freeze-block-size not a power of two in 4K..16M, unknown freeze-foo,
#    bad freeze-max-size / freeze-commands: nbdkit refuses to start with a
#    message naming the parameter;
#  * command arguments: invalid names, wrong argument counts -> EINVAL;
#    duplicate begin -> EEXIST; end of an unknown point -> ENOENT; a begin
#    the cbt filter refuses (checkpoint exists) -> EIO; none of them
#    changes the list;
#  * policy: mutating commands over plain TCP -> EPERM (list and views
#    allowed; freeze-commands=any allows them, =none refuses Unix too);
#    nbdkit -r -> EROFS;
#  * opens that must fail: unknown verb, bad view names, missing points,
#    wrong diff arity, overlong segments.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
. "$testsdir/cbt-functions.sh"

require_built FREEZE_FILTER
Z=$FREEZE_FILTER
requires nbdcopy --version

frz_ok ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed"
    verb=${2#@freeze:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "freeze"' \
        "j.get('command') == '$verb'" 'j.get("ok") is True'
    printf '%s\n' "$out"
}
frz_err ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed (expected ok:false $3)"
    verb=${2#@freeze:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "freeze"' \
        "j.get('command') == '$verb'" 'j.get("ok") is False' \
        "j.get('errno') == '$3'" \
        'isinstance(j.get("error"), str) and len(j["error"]) > 0'
    printf '%s\n' "$out"
}
points () { json_get "$(frz_ok "$1" @freeze:list)" '" ".join(p["name"] for p in j["points"])'; }

# ---------------------------------------------------------------- params
L=$tmpdir/start.log
expect_start_fails "$L" "freeze-dir" --filter="$Z" memory 1M
expect_start_fails "$L" "freeze-dir|$tmpdir/nosuch" --filter="$Z" memory 1M \
    freeze-dir="$tmpdir/nosuch"
for bs in 3000 2K 32M 0; do
    expect_start_fails "$L" "freeze-block-size" --filter="$Z" memory 1M \
        freeze-dir="$tmpdir" freeze-block-size=$bs
done
# (nbdkit_parse_size's own message does not name the parameter.)
expect_start_fails "$L" "freeze-block-size|parse size" --filter="$Z" memory 1M \
    freeze-dir="$tmpdir" freeze-block-size=1M1
expect_start_fails "$L" "freeze-foo" --filter="$Z" memory 1M \
    freeze-dir="$tmpdir" freeze-foo=1
expect_start_fails "$L" "freeze-max-size|size" --filter="$Z" memory 1M \
    freeze-dir="$tmpdir" freeze-max-size=lots
expect_start_fails "$L" "freeze-commands" --filter="$Z" memory 1M \
    freeze-dir="$tmpdir" freeze-commands=everyone
# The good values are accepted.
timeout 60 nbdkit -U - --filter="$Z" memory 1M freeze-dir="$tmpdir" \
    freeze-block-size=4K freeze-max-size=1M freeze-commands=tls,unix \
    --run 'exit 0' || fail "good parameters refused"
# Nothing was left in freeze-dir.
[ -z "$(ls -A "$tmpdir" | grep -v '\.log$')" ] || fail "files left in $tmpdir: $(ls -A "$tmpdir")"

# ---------------------------------------------------------------- names
args=(--filter="$Z" --filter="$C" memory 1M freeze-dir="$tmpdir"
      cbt-dir="$tmpdir/cbt")
start_server srv "${args[@]}"
frz_ok srv @freeze:begin/B1 >/dev/null
long=$(printf 'x%.0s' $(seq 64))

for e in @freeze:begin/a..b @freeze:begin/. @freeze:begin/.. \
         "@freeze:begin/a b" "@freeze:begin/a%b" @freeze:begin/ \
         @freeze:begin @freeze:begin/a/b @freeze:end/a..b @freeze:end \
         @freeze:end/B1/x @freeze:list/x; do
    frz_err srv "$e" EINVAL >/dev/null
done
frz_ok srv "@freeze:begin/$long" >/dev/null          # 64 is the maximum
frz_ok srv "@freeze:end/$long" >/dev/null
frz_err srv @freeze:begin/B1 EEXIST >/dev/null
frz_err srv @freeze:end/nosuch ENOENT >/dev/null
frz_err srv @freeze:end/b1 ENOENT >/dev/null           # case-sensitive
# cbt refuses the checkpoint (it exists): EIO, nothing changes.
cbt_ok srv @cbt:create/C1 >/dev/null
out=$(frz_err srv @freeze:begin/C1 EIO)
json_check "$out" '"cbt" in j["error"]'
same_text "B1" "$(points srv)" "points after the refused commands"

for e in @freeze:bogus @freeze:bogus/B1 @freeze:Begin/x @freeze:LIST \
         @freeze @freeze: @freeze/ @freeze/a..b @freeze/missing @freeze/B1/x \
         "@freeze/x$long" "@freeze:begin/x$long" @freeze:diff \
         @freeze:diff/B1 @freeze:diff/B1/B1/B1 @freeze:diff/a..b/B1 \
         @freeze:diff/B1/a..b @freeze:diff/B1/missing @freeze:begin/a/b/c/d/e; do
    open_fails srv "$e"
done
same_text "B1" "$(points srv)" "points after the failed opens"
stop_server srv

# ---------------------------------------------------------------- policy
# Default policy over plain TCP: EPERM for begin and end; list works.
start_server_tcp tcp "${args[@]}"
frz_err tcp @freeze:begin/T EPERM >/dev/null
frz_err tcp @freeze:end/T EPERM >/dev/null
same_text "" "$(points tcp)" "points over TCP"
stop_server tcp
# freeze-commands=any (and cbt-commands=any: the checkpoint that begin
# makes is subject to the cbt filter's policy too): allowed over TCP, and
# the view reads over TCP.
start_server_tcp tcpany "${args[@]}" freeze-commands=any cbt-commands=any
nbd_op tcpany "" "h.pwrite(b'tcp' * 1000, 0)"
dump tcpany "" "$tmpdir/tcp.img"
frz_ok tcpany @freeze:begin/T >/dev/null
nbd_op tcpany "" "h.pwrite(b'new' * 1000, 0)"
same_content tcpany @freeze/T "$tmpdir/tcp.img"
frz_ok tcpany @freeze:end/T >/dev/null
stop_server tcpany
# freeze-commands=none: refused even over Unix.
start_server none "${args[@]}" freeze-commands=none
frz_err none @freeze:begin/N EPERM >/dev/null
same_text "" "$(points none)" "points with freeze-commands=none"
stop_server none
# nbdkit -r: EROFS whatever the policy.
start_server ro -r "${args[@]}" freeze-commands=any
frz_err ro @freeze:begin/R EROFS >/dev/null
frz_err ro @freeze:end/R EROFS >/dev/null
same_text "" "$(points ro)" "points with -r"
stop_server ro
