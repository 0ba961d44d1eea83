#!/usr/bin/env bash
# examples/sidecar: the files are valid, and the topology runs.
#  - compose.yaml and k8s/*.yaml parse (python3-yaml) and say what the
#    README says: two containers sharing the socket's volume, the PSK
#    from a secret, the scripts as commands;
#  - the systemd units pass `systemd-analyze verify` (if present), as
#    instances (disk0), with their paths pointed into this tree;
#  - serve.sh and backup.sh as the containers run them, with network
#    namespaces standing in for the containers: the server namespace
#    serves a disk with TLS-PSK required on TCP, the backup namespace runs
#    backup.sh: a full backup, writes, an incremental one, then the loop
#    (two rounds a second apart, keep 2: retention merges); each point
#    restores to the disk as it was (cmp), the repository verifies, and a
#    client without the key gets nothing.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

: "${NBDSNAP:=$top_builddir/tools/nbdsnap}"
ex=$top_srcdir/examples/sidecar
N=$NBDSNAP
K=65536

echo "== yaml"
if $PYTHON -c 'import yaml' 2>/dev/null; then
    $PYTHON - "$ex" <<'EOF'
import sys, yaml, os
ex = sys.argv[1]
def load(p):
    with open(os.path.join(ex, p)) as f:
        return list(yaml.safe_load_all(f))
c = load("compose.yaml")[0]
s = c["services"]
assert s["disk"]["command"] == ["serve.sh"], s["disk"]
assert s["backup"]["command"] == ["backup.sh"], s["backup"]
sock = [v for v in s["disk"]["volumes"] if v.endswith(":/run/nbdsnap")]
assert sock and sock[0] in s["backup"]["volumes"], "socket volume not shared"
assert "nbds+unix://" in s["backup"]["environment"]["NBDSNAP_URI"]
assert "tls-psk-file=" in s["backup"]["environment"]["NBDSNAP_URI"]
assert set(c["volumes"]) >= {"sock", "repo", "state", "data"}
assert "nbdsnap.psk" in c["secrets"]
pod = load("k8s/pod.yaml")[0]
assert pod["kind"] == "Pod"
names = [x["name"] for x in pod["spec"]["containers"]]
assert names == ["disk", "backup"], names
vols = {v["name"]: v for v in pod["spec"]["volumes"]}
assert "emptyDir" in vols["sock"] and "secret" in vols["psk"]
for ctr in pod["spec"]["containers"]:
    mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
    assert mounts["sock"] == "/run/nbdsnap" and "psk" in mounts, ctr["name"]
cron = load("k8s/cronjob.yaml")
assert [d["kind"] for d in cron] == ["CronJob", "Service"]
assert cron[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"] == ["backup.sh"]
sec = load("k8s/secret.yaml")[0]
assert sec["kind"] == "Secret" and "nbdsnap.psk" in sec["stringData"]
EOF
else
    echo "   (no python3-yaml: skipped)"
fi
sh -n "$ex/serve.sh"
sh -n "$ex/backup.sh"

echo "== systemd units"
if command -v systemd-analyze >/dev/null; then
    u=$tmpdir/units
    mkdir -p "$u/etc" "$u/bin"
    printf '#!/bin/sh\n' > "$u/bin/serve.sh"
    cp "$u/bin/serve.sh" "$u/bin/backup.sh"
    chmod +x "$u/bin/"*
    : > "$u/etc/disk0.conf"
    : > "$u/etc/disk0-backup.conf"
    for f in "$ex"/systemd/nbdsnap-*; do
        b=$(basename "$f")
        sed "s#/usr/libexec/nbdsnap/#$u/bin/#; s#/etc/nbdsnap/#$u/etc/#" "$f" > "$u/$b"
        cp "$u/$b" "$u/${b/@/@disk0}"
    done
    systemd-analyze verify --man=no "$u/nbdsnap-serve@disk0.service" \
        "$u/nbdsnap-backup@disk0.service" "$u/nbdsnap-backup@disk0.timer" \
        > "$tmpdir/verify.log" 2>&1 || { cat "$tmpdir/verify.log" >&2; fail "systemd-analyze verify"; }
    if grep -q 'nbdsnap-' "$tmpdir/verify.log"; then
        cat "$tmpdir/verify.log" >&2
        fail "systemd-analyze warns about the units"
    fi
else
    echo "   (no systemd-analyze: skipped)"
fi

echo "== the topology, network namespaces for containers"
. "$testsdir/netns-functions.sh"
nbdkit --dump-config | grep -qx 'tls=yes' || skip "nbdkit has no TLS"
requires psktool --version
netns_setup
psk=$tmpdir/nbdsnap.psk
psktool -u backup -p "$psk" >/dev/null
srv=$tmpdir/server
mkdir -p "$srv"
mkdata "$srv/disk.img" $((64 * K)) 5

ip netns exec "$NS_SRV" env NBDSNAP_DISK="$srv/disk.img" \
    NBDSNAP_STATE="$srv/state" NBDSNAP_LISTEN="$SRV_IP" \
    NBDSNAP_PSK="$psk" NBDSNAP_FILTERDIR="$top_builddir/filters" \
    NBDSNAP_EXTRA="-P $srv/pid" \
    sh "$ex/serve.sh" >> "$tmpdir/serve.log" 2>&1 &
pid=$!
bg_register $pid
for ((i = 0; i < 200; i++)); do
    [ -s "$srv/pid" ] && break
    kill -0 $pid 2>/dev/null || { cat "$tmpdir/serve.log" >&2; fail "serve.sh exited"; }
    sleep 0.05
done
[ -s "$srv/pid" ] || fail "serve.sh did not start"

U="nbds://backup@$SRV_IP:$NS_PORT/?tls-psk-file=$psk"
repo=$tmpdir/backup/repo
backup ()   # backup [ENV...]: backup.sh in the backup namespace
{
    in_cli env NBDSNAP_URI="$U" NBDSNAP_REPO="$repo" NBDSNAP="$N" "$@" \
        sh "$ex/backup.sh" >> "$tmpdir/backup.log" 2>&1 ||
        { cat "$tmpdir/backup.log" >&2; fail "backup.sh failed"; }
}
netwrite () # netwrite OFFSET SEED: 64K of data
{
    mkdata "$tmpdir/w" $K "$2"
    in_cli timeout 60 $PYTHON -c '
import sys, nbd
h = nbd.NBD(); h.set_uri_allow_local_file(True); h.connect_uri(sys.argv[1])
h.pwrite(open(sys.argv[2], "rb").read(), int(sys.argv[3])); h.flush(); h.shutdown()' \
        "$U" "$tmpdir/w" "$1"
}
snap_disk () { in_cli timeout 60 nbdcopy --no-extents "$U" "$1"; }

backup
snap_disk "$tmpdir/exp1.img"
netwrite $((5 * K)) 11
backup
snap_disk "$tmpdir/exp2.img"
json_check "$("$N" --json list "$repo")" \
    '[p["kind"] for p in j["points"]] == ["full", "incremental"]'
p1=$(json_get "$("$N" --json list "$repo")" 'j["points"][0]["name"]')
p2=$(json_get "$("$N" --json list "$repo")" 'j["points"][1]["name"]')
"$N" restore "$repo" "$p1" -o "$tmpdir/r1.img" --no-progress >/dev/null
"$N" restore "$repo" "$p2" -o "$tmpdir/r2.img" --no-progress >/dev/null
cmp "$tmpdir/r1.img" "$tmpdir/exp1.img" || fail "the full backup does not restore the disk"
cmp "$tmpdir/r2.img" "$tmpdir/exp2.img" || fail "the incremental backup does not restore the disk"

echo "== the loop: two rounds, keep 2"
netwrite $((9 * K)) 12
sleep 1     # point names have one-second resolution
backup NBDSNAP_INTERVAL=1 NBDSNAP_COUNT=2 NBDSNAP_KEEP=2
snap_disk "$tmpdir/exp4.img"
json_check "$("$N" --json list "$repo")" 'len(j["points"]) == 2' \
    'j["points"][0]["kind"] == "full"'
last=$(json_get "$("$N" --json list "$repo")" 'j["points"][-1]["name"]')
"$N" verify "$repo" >/dev/null || fail "the repository does not verify"
"$N" restore "$repo" "$last" -o "$tmpdir/r4.img" --no-progress >/dev/null
cmp "$tmpdir/r4.img" "$tmpdir/exp4.img" || fail "the newest point does not restore the disk"
find "$repo" -type f -perm /077 | grep . && fail "repository files open to others"

echo "== the compose/Pod form: a Unix socket, nbds+unix with the key"
# (No namespaces: containers share the socket through a volume.)
us=$tmpdir/usrv
mkdir -p "$us/run"
mkdata "$us/disk.img" $((16 * K)) 7
env NBDSNAP_DISK="$us/disk.img" NBDSNAP_STATE="$us/state" \
    NBDSNAP_SOCKET="$us/run/disk.sock" NBDSNAP_PSK="$psk" \
    NBDSNAP_FILTERDIR="$top_builddir/filters" NBDSNAP_EXTRA="-P $us/pid" \
    sh "$ex/serve.sh" >> "$tmpdir/userve.log" 2>&1 &
upid=$!
bg_register $upid
for ((i = 0; i < 200; i++)); do
    [ -s "$us/pid" ] && [ -S "$us/run/disk.sock" ] && break
    kill -0 $upid 2>/dev/null || { cat "$tmpdir/userve.log" >&2; fail "serve.sh (socket) exited"; }
    sleep 0.05
done
UU="nbds+unix://backup@/?socket=$us/run/disk.sock&tls-psk-file=$psk"
env NBDSNAP_URI="$UU" NBDSNAP_REPO="$us/backup/repo" NBDSNAP="$N" \
    sh "$ex/backup.sh" >> "$tmpdir/ubackup.log" 2>&1 ||
    { cat "$tmpdir/ubackup.log" >&2; fail "backup.sh over the socket failed"; }
pu=$(json_get "$("$N" --json list "$us/backup/repo")" 'j["points"][0]["name"]')
"$N" restore "$us/backup/repo" "$pu" -o "$tmpdir/ru.img" --no-progress >/dev/null
cmp "$tmpdir/ru.img" "$us/disk.img" || fail "the socket backup does not restore the disk"
st=0; "$N" snapshot list "nbd+unix:///?socket=$us/run/disk.sock" >/dev/null 2>&1 || st=$?
[ "$st" -eq 2 ] || fail "a client of the socket without the key got exit $st"
[ "$(stat -c %a "$us/state/snap")" = 700 ] || fail "serve.sh's state directory is not 0700"
kill -TERM $upid; wait $upid 2>/dev/null || true

echo "== without the key"
st=0; in_cli "$N" backup "nbd://$SRV_IP:$NS_PORT/" "$tmpdir/other" >/dev/null 2>&1 || st=$?
[ "$st" -eq 2 ] || fail "a backup without TLS got exit $st"
[ ! -e "$tmpdir/other" ] || fail "a refused backup made a repository"
kill -TERM $pid; wait $pid 2>/dev/null || true
echo "$testname: OK"
