/* nbdsnap tool: nbdsnap migrate, shared by its files (docs/migration.md).
 *
 *   migrate.c         the command: options, checks, freeze, the copy of
 *                     the disk over several connections, report
 *   migrate-chain.c   the checkpoints: each one's map read from the
 *                     source's change maps, turned into bitmaps at the
 *                     destination's granularity, uploaded and installed
 *                     (@cbt:upload/COUNT, @cbt:install/SUM)
 *   migrate-snap.c    --snapshots: the snapshot tree recreated
 */
#ifndef NBDSNAP_MIGRATE_H
#define NBDSNAP_MIGRATE_H

#include <stdbool.h>
#include <stdint.h>

#include "nbdsnap.h"

#define MIG_MAX_CKPTS 1000

struct migrate {
  const char *src, *dst;
  char name[80];                /* the frozen point / checkpoint made */
  char since[80];               /* --since: only the changes since */
  bool replace;
  bool snapshots;               /* --snapshots: carry them */
  int connections;
  bool show_progress;

  /* the source */
  bool begun;                   /* our frozen point is held */
  bool made_checkpoint;         /* ... with our checkpoint */
  bool installed;               /* the destination has the chain */
  uint64_t size;
  char *carry[MIG_MAX_CKPTS];   /* checkpoints carried, oldest first */
  int64_t created[MIG_MAX_CKPTS];
  size_t ncarry;
  size_t skipped;               /* inconsistent checkpoints left behind */

  /* the destination's cbt filter */
  bool dst_cbt;
  uint32_t dst_gran;
  uint64_t dst_disk_size;
  size_t dst_ncps;
  char dst_newest[80];
  uint64_t dst_newest_dirty;
  bool dst_newest_consistent;

  /* snapshots carried (migrate-snap.c) */
  char *snaps[MIG_MAX_CKPTS];
  size_t nsnaps;
  char live_parent[80];         /* the live disk's parent snapshot, "" */
  char snap_sig[8192];          /* the source's tree before the begin */

  /* results */
  uint64_t bytes_copied, bytes_zeroed, map_blocks;
};

/* How copy_view reads the extents of its map. */
enum copy_mode {
  COPY_ALL,                     /* everything: zero extents are zeroed */
  COPY_DIFF,                    /* a change map of the view itself: hole
                                 * = unchanged, skipped */
  COPY_CHANGED,                 /* a change map of another export: hole
                                 * skipped, the rest read from the view */
};

/* migrate.c */
/* Copy the source's export view to the destination's live disk, the
 * parts map (an export of the source; NULL: view) says, over
 * m->connections connections.  Prints the error, returns the exit code.
 */
int copy_view (struct migrate *m, const char *view, const char *map,
               enum copy_mode mode)
  __attribute__ ((nonnull (1, 2)));

/* migrate-snap.c */
/* Before anything is copied: the source's snapshots can be carried (no
 * merge running, the destination has a snapshot filter and no
 * snapshot).  Prints the error, returns the exit code.
 */
int check_snapshots (struct migrate *m) __attribute__ ((nonnull));
/* Recreate the source's snapshots on the destination, oldest first
 * (each: revert to its parent, copy the changes, create), then revert
 * the destination to the live disk's parent (m->live_parent).  Prints
 * the error, returns the exit code.
 */
int carry_snapshots (struct migrate *m) __attribute__ ((nonnull));

/* migrate-chain.c */
/* After the begin: which checkpoints of the source go (the consistent
 * ones, ending with ours).  Prints the error, returns the exit code.
 */
int choose_chain (struct migrate *m) __attribute__ ((nonnull));
/* Read each carried checkpoint's map, upload the chain to the
 * destination and install it.  Prints the error, returns the exit code.
 */
int carry_chain (struct migrate *m) __attribute__ ((nonnull));

#endif /* NBDSNAP_MIGRATE_H */
