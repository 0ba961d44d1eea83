#!/bin/sh
# nbdsnap sidecar: serve one disk through the full stack (freeze, cbt,
# snapshot) with TLS-PSK required.  Used by the container image
# (compose.yaml, k8s/pod.yaml), by nbdsnap-serve@.service, and by
# tests/test-examples-sidecar.sh.  Configuration from the environment:
#
#   NBDSNAP_DISK     the disk image (or block device) to serve   (required)
#   NBDSNAP_STATE    state directory: snap/, cbt/, freeze/ under it (required)
#   NBDSNAP_PSK      nbdkit --tls-psk file (psktool -u USER -p FILE) (required)
#   NBDSNAP_SOCKET   serve on this Unix socket (shared between containers)
#   NBDSNAP_LISTEN   or on this TCP address (port NBDSNAP_PORT, default 10809)
#   NBDSNAP_FILTERDIR  where the filters are, if nbdkit does not find them
#                    by short name (a build tree: its filters/*/.libs)
#   NBDSNAP_EXTRA    more nbdkit arguments (word-split)
set -eu
: "${NBDSNAP_DISK:?}" "${NBDSNAP_STATE:?}" "${NBDSNAP_PSK:?}"
umask 077
mkdir -p "$NBDSNAP_STATE/freeze"

filter () {
    if [ -n "${NBDSNAP_FILTERDIR:-}" ]; then
        echo "--filter=$NBDSNAP_FILTERDIR/$1/.libs/nbdkit-$1-filter.so"
    else
        echo "--filter=$1"
    fi
}

if [ -n "${NBDSNAP_SOCKET:-}" ]; then
    rm -f "$NBDSNAP_SOCKET"
    set -- -U "$NBDSNAP_SOCKET"
elif [ -n "${NBDSNAP_LISTEN:-}" ]; then
    set -- -i "$NBDSNAP_LISTEN" -p "${NBDSNAP_PORT:-10809}"
else
    echo "serve.sh: set NBDSNAP_SOCKET or NBDSNAP_LISTEN" >&2
    exit 2
fi

# shellcheck disable=SC2086
exec nbdkit -f "$@" --tls=require --tls-psk="$NBDSNAP_PSK" \
    "$(filter freeze)" "$(filter cbt)" "$(filter snapshot)" \
    ${NBDSNAP_EXTRA:-} \
    file "$NBDSNAP_DISK" \
    snapshot-dir="$NBDSNAP_STATE/snap" cbt-dir="$NBDSNAP_STATE/cbt" \
    freeze-dir="$NBDSNAP_STATE/freeze"
