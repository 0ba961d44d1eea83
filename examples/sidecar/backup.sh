#!/bin/sh
# nbdsnap sidecar: back up the served disk into a repository, once or on
# a schedule.  The first backup into an empty repository is full, the
# next ones incremental since the newest point (nbdsnap picks that when
# neither --full nor --incremental is given).  Each backup is verified;
# only the newest NBDSNAP_KEEP points are kept (the oldest incremental
# is merged into the full point below it, `nbdsnap merge`).  Configuration:
#
#   NBDSNAP_URI       the live disk, e.g.
#                     nbds+unix://backup@/?socket=/run/nbdsnap/disk.sock&tls-psk-file=/run/secrets/nbdsnap.psk
#                     nbds://backup@disk:10809/?tls-psk-file=/run/secrets/nbdsnap.psk
#   NBDSNAP_REPO      the repository directory (created if missing)
#   NBDSNAP_INTERVAL  seconds between backups; unset or 0: one backup and exit
#   NBDSNAP_COUNT     stop after this many backups (default: never, or 1)
#   NBDSNAP_KEEP      points to keep (default 14; 0 keeps all)
#   NBDSNAP           the nbdsnap program (default: nbdsnap on PATH)
set -eu
: "${NBDSNAP_URI:?}" "${NBDSNAP_REPO:?}"
N=${NBDSNAP:-nbdsnap}
interval=${NBDSNAP_INTERVAL:-0}
count=${NBDSNAP_COUNT:-0}
keep=${NBDSNAP_KEEP:-14}
umask 077
mkdir -p "$(dirname "$NBDSNAP_REPO")"
[ -e "$NBDSNAP_REPO/repository" ] || "$N" init "$NBDSNAP_REPO"

done_=0
while :; do
    # A failed backup leaves the repository as it was: log and go on
    # (the next round tries again; with no interval the exit status says).
    st=0
    "$N" backup "$NBDSNAP_URI" "$NBDSNAP_REPO" --no-progress || st=$?
    if [ "$st" -eq 0 ]; then
        "$N" verify "$NBDSNAP_REPO" || st=$?
    fi
    if [ "$st" -eq 0 ] && [ "$keep" -gt 0 ]; then
        # Retention on the chain full <- inc <- inc ...: fold the oldest
        # incremental into the full point until $keep points remain.
        while [ "$("$N" list "$NBDSNAP_REPO" | awk 'NR > 1' | wc -l)" -gt "$keep" ]; do
            p=$("$N" list "$NBDSNAP_REPO" | awk 'NR == 3 {print $1}')
            "$N" merge "$NBDSNAP_REPO" "$p" || { st=$?; break; }
        done
    fi
    done_=$((done_ + 1))
    if [ "$interval" -le 0 ]; then exit "$st"; fi
    if [ "$count" -gt 0 ] && [ "$done_" -ge "$count" ]; then exit "$st"; fi
    sleep "$interval"
done
