# nbdsnap test helpers: two network namespaces joined by a veth pair,
# standing in for two hosts (or two containers).  Sourced after
# functions.sh:
#
#   . "$testsdir/netns-functions.sh"
#   netns_setup                 # skips (77) unless root with `ip netns`
#   ns_server NAME NBDKIT-ARGS  # nbdkit -f on $SRV_IP:$NS_PORT in the server ns
#   in_cli CMD ARGS...          # run CMD in the client namespace
#   in_srv CMD ARGS...          # run CMD in the server namespace
#
# The addresses exist inside the namespaces only (the host's own network
# is not touched): $SRV_IP (server) and $CLI_IP (client) on a /24 of their
# own.  Namespace and link names carry the test's pid, so tests can run
# in parallel.  Everything is removed on exit: the processes running in
# the namespaces (all started by the test), then the namespaces, which
# takes the veth pair with them.

SRV_IP=10.77.0.1
CLI_IP=10.77.0.2
NS_PORT=10809
NS_SRV=nbdsnap-$$-srv
NS_CLI=nbdsnap-$$-cli

in_srv () { ip netns exec "$NS_SRV" "$@"; }
in_cli () { ip netns exec "$NS_CLI" "$@"; }

netns_setup ()
{
    [ "$(id -u)" -eq 0 ] || skip "network namespaces need root"
    command -v ip >/dev/null || skip "no ip(8) (Debian package iproute2)"
    ip netns add "$NS_SRV" 2>/dev/null || skip "cannot create a network namespace (ip netns add)"
    cleanup_fn _netns_teardown
    ip netns add "$NS_CLI"
    ip link add "nsv$$s" type veth peer name "nsv$$c"
    ip link set "nsv$$s" netns "$NS_SRV"
    ip link set "nsv$$c" netns "$NS_CLI"
    in_srv ip addr add "$SRV_IP/24" dev "nsv$$s"
    in_cli ip addr add "$CLI_IP/24" dev "nsv$$c"
    in_srv ip link set lo up
    in_cli ip link set lo up
    in_srv ip link set "nsv$$s" up
    in_cli ip link set "nsv$$c" up
    # Wait for the carrier on both ends.
    local i
    for ((i = 0; i < 100; i++)); do
        ip -n "$NS_SRV" link show "nsv$$s" | grep -q LOWER_UP &&
            ip -n "$NS_CLI" link show "nsv$$c" | grep -q LOWER_UP && return 0
        sleep 0.1
    done
    fail "the veth pair between $NS_SRV and $NS_CLI does not come up"
}

_netns_teardown ()
{
    local ns p i pids=()
    for ns in "$NS_SRV" "$NS_CLI"; do
        pids+=($(ip netns pids "$ns" 2>/dev/null))
    done
    # SIGTERM first (a sanitizer build reports leaks at exit), then SIGKILL.
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for ((i = 0; i < 100; i++)); do
        for p in "${pids[@]}"; do
            kill -0 "$p" 2>/dev/null && break
        done
        kill -0 "$p" 2>/dev/null || break
        sleep 0.05
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    for ns in "$NS_SRV" "$NS_CLI"; do
        ip netns del "$ns" 2>/dev/null
    done
    ip link del "nsv$$s" 2>/dev/null
    return 0
}

# ns_server NAME NBDKIT-ARGS...: start nbdkit in the server namespace on
# $SRV_IP:$NS_PORT (log $tmpdir/NAME.log).  The server is registered
# like start_server's (stop_server NAME, server_alive NAME work).
ns_server ()
{
    local name=$1; shift
    local pidf=$tmpdir/$name.pid log=$tmpdir/$name.log pid i
    rm -f "$pidf"
    echo "=== $(date +%T) [$NS_SRV] nbdkit $*" >> "$log"
    # ip netns exec execs the command: $! is nbdkit's pid.
    ip netns exec "$NS_SRV" nbdkit -f -i "$SRV_IP" -p "$NS_PORT" -P "$pidf" \
        "$@" >> "$log" 2>&1 &
    pid=$!
    _srv_pid[$name]=$pid
    _srv_args[$name]=$(printf '%q ' "$@")
    echo "$pid" > "$tmpdir/$name.bgpid"
    for ((i = 0; i < 600; i++)); do
        [ -s "$pidf" ] && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || true
            rm -f "$tmpdir/$name.bgpid"
            unset "_srv_pid[$name]"
            echo "$testname: nbdkit ($name) exited during startup:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.05
    done
    fail "nbdkit ($name) did not start within 30s"
}
