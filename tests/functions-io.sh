# nbdsnap test helpers, second part: in-band commands, data, directory
# state and file size limits.  Sourced by tests/functions.sh (which
# defines $tmpdir, $PYTHON, fail and the servers these use); a test
# sources functions.sh only.

# ---------------------------------------------------------------- commands
# snapcmd TARGET EXPORT
#   TARGET: a server NAME (see start_server), a Unix socket path, or an NBD
#   URI (e.g. $uri in captive mode; its export name is replaced).
#   Opens EXPORT once with nbdsh, prints the content (the command's JSON).
#   Fails if the open fails, or if the content is not exactly one JSON
#   object followed by "\n".
snapcmd ()
{
    local target=$1 export=$2
    case "$target" in
        *://*) ;;
        *) target=$(uri "$target") ;;
    esac
    NBDSNAP_URI=$(_make_uri "$target" "$export") \
    timeout 60 nbdsh -c '
import os, sys, json
h.set_uri_allow_local_file(True)
h.connect_uri(os.environ["NBDSNAP_URI"])
n = h.get_size()
data = h.pread(n, 0) if n else b""
h.shutdown()
text = data.decode("utf-8")
if not text.endswith("\n") or text.count("\n") != 1:
    sys.exit("snapcmd: command result is not one line ending in newline: %r" % text)
if not isinstance(json.loads(text), dict):
    sys.exit("snapcmd: command result is not a JSON object: %r" % text)
sys.stdout.write(text)'
}

# json_check JSON PYEXPR...: every PYEXPR (python, the document is `j`)
# must be true.  Also defines re (module) for regexps.
json_check ()
{
    local json=$1; shift
    printf '%s' "$json" | $PYTHON -c '
import sys, json, re
j = json.load(sys.stdin)
for e in sys.argv[1:]:
    try:
        r = eval(e)
    except Exception as ex:
        r = False; print("exception: %r" % ex, file=sys.stderr)
    if not r:
        sys.exit("json_check failed: %s\n  document: %s" % (e, json.dumps(j)))
' "$@" || fail "JSON assertion failed"
}

# json_get JSON PYEXPR: print the value (strings raw, others as JSON).
json_get ()
{
    printf '%s' "$1" | $PYTHON -c '
import sys, json
j = json.load(sys.stdin)
v = eval(sys.argv[1])
print(v if isinstance(v, str) else json.dumps(v))' "$2"
}

# snap_ok TARGET EXPORT: run a command, require "ok":true, print the JSON.
# EBUSY is retried for up to 5 seconds: a client that just disconnected may
# not be closed yet on the server side (NBD_CMD_DISC has no reply).
snap_ok ()
{
    local out verb i
    for ((i = 0; i < 50; i++)); do
        out=$(snapcmd "$1" "$2") || fail "command $2: open failed"
        [[ "$out" == *'"EBUSY"'* ]] || break
        sleep 0.1
    done
    verb=${2#@snapshot:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "snapshot"' \
        "j.get('command') == '$verb'" 'j.get("ok") is True'
    printf '%s\n' "$out"
}

# snap_err TARGET EXPORT ERRNO: run a command, require "ok":false with
# errno ERRNO and a non-empty "error" message; print the JSON.
snap_err ()
{
    local out verb
    out=$(snapcmd "$1" "$2") || fail "command $2: open failed (expected ok:false $3)"
    verb=${2#@snapshot:}; verb=${verb%%/*}
    json_check "$out" 'j.get("filter") == "snapshot"' \
        "j.get('command') == '$verb'" 'j.get("ok") is False' \
        "j.get('errno') == '$3'" \
        'isinstance(j.get("error"), str) and len(j["error"]) > 0'
    printf '%s\n' "$out"
}

# open_fails TARGET EXPORT: the NBD open of EXPORT must fail.
open_fails ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    if NBDSNAP_URI=$u timeout 60 nbdsh -c '
import os
h.set_uri_allow_local_file(True)
h.connect_uri(os.environ["NBDSNAP_URI"])' >/dev/null 2>&1; then
        fail "opening export '$2' succeeded, expected it to fail"
    fi
}

# snap_list TARGET: the @snapshot:list JSON (checked ok).
snap_list () { snap_ok "$1" @snapshot:list; }

# snap_names TARGET: the snapshot names, one per line, in list order.
snap_names ()
{
    json_get "$(snap_list "$1")" '"\n".join(s["name"] for s in j["snapshots"])'
}

# wait_merged TARGET: wait (max 60s) until no snapshot is merging.
wait_merged ()
{
    local i out
    for ((i = 0; i < 600; i++)); do
        out=$(snap_list "$1")
        if [ "$(json_get "$out" 'any(s.get("merging") for s in j["snapshots"])')" = false ]; then
            return 0
        fi
        sleep 0.1
    done
    fail "merge did not finish within 60s: $out"
}

# ---------------------------------------------------------------- data
# mkdata FILE SIZE SEED: deterministic pseudo-random bytes.
mkdata ()
{
    $PYTHON -c '
import sys, random
sys.stdout.buffer.write(random.Random(int(sys.argv[2])).randbytes(int(sys.argv[1])))' \
        "$2" "$3" > "$1"
}

# file_pwrite FILE OFFSET DATAFILE: write DATAFILE into FILE at OFFSET.
file_pwrite ()
{
    dd if="$3" of="$1" bs=64K conv=notrunc oflag=seek_bytes seek="$2" status=none
}

# file_zero FILE OFFSET LENGTH: zero LENGTH bytes of FILE at OFFSET.
file_zero ()
{
    head -c "$3" /dev/zero | dd of="$1" bs=64K conv=notrunc oflag=seek_bytes seek="$2" iflag=fullblock status=none
}

# nbd_pwrite TARGET EXPORT OFFSET DATAFILE [fua]: write DATAFILE at OFFSET
# (one NBD write; with "fua", FUA flag); no flush.
nbd_pwrite ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    NBDSNAP_URI=$u A_OFF=$3 A_FILE=$4 A_FUA=${5:-nofua} timeout 60 nbdsh -c '
import os, nbd
e = os.environ
h.set_uri_allow_local_file(True)
h.connect_uri(e["NBDSNAP_URI"])
data = open(e["A_FILE"], "rb").read()
h.pwrite(data, int(e["A_OFF"]), nbd.CMD_FLAG_FUA if e["A_FUA"] == "fua" else 0)
h.shutdown()'
}

# nbd_op TARGET EXPORT PYTHON-CODE: connect (h), run the code, shut down.
nbd_op ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    NBDSNAP_URI=$u timeout 120 nbdsh -c '
import os, nbd
h.set_uri_allow_local_file(True)
h.connect_uri(os.environ["NBDSNAP_URI"])' -c "$3" -c 'h.shutdown()'
}

# dump TARGET EXPORT FILE: copy the whole export to FILE (data only, no
# extents, so that this checks the data path alone).
dump ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    case "$3" in /dev/*|-) ;; *) rm -f "$3" ;; esac
    timeout 120 nbdcopy --no-extents "$u" "$3"
}

# same_content TARGET EXPORT FILE: the export must equal FILE byte for byte.
same_content ()
{
    local d=$tmpdir/same_content.$$.tmp
    dump "$1" "$2" "$d"
    if ! cmp "$d" "$3"; then
        rm -f "$d"
        fail "export '$2' differs from $(basename "$3")"
    fi
    rm -f "$d"
}

# dirsum DIR: content and names of every file in DIR (to prove "unchanged").
dirsum ()
{
    (cd "$1" && find . -print | sort && find . -type f -print0 | sort -z | xargs -0r sha256sum)
}

# same_dir BEFORE-SUM DIR: DIR must still have the checksum BEFORE-SUM.
same_dir ()
{
    local now
    now=$(dirsum "$2")
    if [ "$1" != "$now" ]; then
        diff <(printf '%s\n' "$1") <(printf '%s\n' "$now") >&2 || true
        fail "directory $2 was changed"
    fi
}

# expect_start_fails LOG REGEX NBDKIT-ARGS...: nbdkit with these args must
# refuse to start: exit with status 1 (not a crash, not a hang) without
# ever serving; its messages go to LOG and must match the (grep -E -i)
# REGEX.  A refusal can come late (from .after_fork, once nbdkit listens),
# so this does not stop at the first sign of life: it keeps trying to
# connect until nbdkit exits; a connection that succeeds means nbdkit
# started (failure), and so does still running after 60 seconds.
_esf_n=0
expect_start_fails ()
{
    local log=$1 re=$2 st=0 sock pid i; shift 2
    _esf_n=$((_esf_n + 1))
    sock=$tmpdir/esf-$_esf_n.sock
    rm -f "$sock"
    nbdkit -f -U "$sock" "$@" > "$log" 2>&1 &
    pid=$!
    echo "$pid" > "$tmpdir/esf.bgpid"
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        if [ -S "$sock" ] &&
           timeout 30 nbdinfo --size "nbd+unix://?socket=$sock" >/dev/null 2>&1; then
            kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
            rm -f "$tmpdir/esf.bgpid"
            cat "$log" >&2
            fail "nbdkit started although it should have refused: nbdkit $*"
        fi
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
        rm -f "$tmpdir/esf.bgpid"
        cat "$log" >&2
        fail "nbdkit neither served nor exited within 60s: nbdkit $*"
    fi
    wait "$pid" || st=$?
    rm -f "$tmpdir/esf.bgpid"
    if [ "$st" -ne 1 ]; then
        cat "$log" >&2
        fail "nbdkit exited with status $st (expected 1, a refusal): nbdkit $*"
    fi
    if ! grep -Eiq -- "$re" "$log"; then
        cat "$log" >&2
        fail "nbdkit refused to start (good) but its message does not match /$re/: nbdkit $*"
    fi
}

# map TARGET EXPORT: "nbdinfo --map" normalized: adjacent lines of the same
# type merged, columns "OFFSET LENGTH TYPE DESCRIPTION" separated by a space.
map ()
{
    local u
    case "$1" in *://*) u=$(_make_uri "$1" "$2") ;; *) u=$(uri "$1" "$2") ;; esac
    timeout 60 nbdinfo --map "$u" | awk '
        { if (n && $3 == t && $1 == o + l) { l += $2; next }
          if (n) print o, l, t, d
          o = $1; l = $2; t = $3; d = $4; n = 1 }
        END { if (n) print o, l, t, d }'
}

# same_text EXPECTED ACTUAL WHAT: compare two multi-line strings.
same_text ()
{
    if [ "$1" != "$2" ]; then
        echo "--- expected $3" >&2; printf '%s\n' "$1" >&2
        echo "--- actual $3" >&2; printf '%s\n' "$2" >&2
        fail "$3 differs from the expected result"
    fi
}

# fsize_limit_nbdkit: from now on, every nbdkit this test starts runs
# under a file size limit (RLIMIT_FSIZE) of $NBDKIT_FSIZE_KB KiB whenever
# that variable is set.  SIGXFSZ keeps its default action (it kills):
# the snapshot and freeze filters ignore it in .load, so that a write
# past the limit fails with EFBIG.  Simulates a file system whose
# largest file is smaller than the disk (ext4: 16 TiB - 4 KiB).
fsize_limit_nbdkit ()
{
    local real
    real=$(command -v nbdkit)
    mkdir -p "$tmpdir/fsize-bin"
    cat > "$tmpdir/fsize-bin/nbdkit" <<EOS
#!/bin/bash
if [ -n "\$NBDKIT_FSIZE_KB" ]; then
    trap - XFSZ
    ulimit -f "\$NBDKIT_FSIZE_KB" || exit 99
fi
exec $real "\$@"
EOS
    chmod +x "$tmpdir/fsize-bin/nbdkit"
    PATH=$tmpdir/fsize-bin:$PATH
}
