/* nbdsnap snapshot filter: the store (layers, state file, live disk).
 *
 * One store per nbdkit process, shared by every connection.  It owns the
 * tree of layers in snapshot-dir, the owner map of the live disk (for
 * each block: the slot of the layer that holds it, 0 for the plugin) and
 * the gate that quiesces I/O for commands.
 *
 * This is the store's interface for snapshot.c; store-internal.h lists
 * the files that implement it.
 */
#ifndef NBDSNAP_SNAPSHOT_STORE_H
#define NBDSNAP_SNAPSHOT_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "command.h"
#include "layer.h"
#include "sparse.h"

struct store_config {
  const char *dir;
  uint32_t block_size;          /* 0: not given (default or from state) */
  const char *revert_on_close;  /* NULL if not set */
};

/* What a connection reads: the live disk, or a frozen snapshot. */
struct view {
  bool live;
  struct omap owner;            /* snapshot views: private owner map */
  struct layer **pinned;        /* layers this view holds a reference on */
  size_t npinned;
  size_t ntop;                  /* pinned[0..ntop): the snapshot's chain,
                                   top first */
  struct layer *top;            /* snapshot views: the snapshot's layer */
  struct layer *base;           /* change maps: the BASE snapshot */
};

/* .get_ready: lock the dir, read and check the state file (nothing that
 * needs the disk below).  -1 after nbdkit_error.
 */
int store_start (const struct store_config *cfg) __attribute__ ((nonnull));
/* .after_fork: probe the disk below through backend, check the state
 * against it and load the layers (or create the state of a new dir),
 * resume a merge interrupted by a stop.  -1 after nbdkit_error.
 */
int store_after_fork (nbdkit_backend *backend);
/* The second half of the start (without resuming merges), done once:
 * by .after_fork, or earlier by the first open if a filter above opens
 * the disk from its own .get_ready.  -1 after nbdkit_error.
 */
int store_ready (nbdkit_backend *backend);
/* Flush and release everything (clean shutdown). */
void store_stop (void);

/* The disk below: the store keeps the history of one export of the
 * plugin, bound when the store probes it at start ("", the default
 * export).  A live connection to another export is refused: -1 after
 * nbdkit_error.
 */
int store_live_bind (const char *exportname) __attribute__ ((nonnull));
/* The export views read (NULL after nbdkit_error). */
const char *store_disk_name (void);
/* .prepare of a live or view connection: the disk behind next must be
 * the disk the store keeps (its size; its fingerprint, checked once).
 * -1 after nbdkit_error.
 */
int store_check_disk (nbdkit_next *next) __attribute__ ((nonnull));

/* Size of the disk; block size of the layers (once started). */
uint64_t store_size (void);
uint32_t store_block_size (void);

/* Connections of the live disk (for revert's busy check and
 * revert-on-close).
 */
void store_live_open (bool writable);
void store_live_close (bool writable);

/* Open a read-only view of snapshot name (base: change map since base,
 * may be NULL; name NULL with base: the live disk's change map).
 * -1 with a message in why.
 */
int store_view_open (struct view *v, const char *name, const char *base,
                     char *why, size_t whylen)
  __attribute__ ((nonnull (1, 4)));
/* Release what a view holds. */
void store_view_close (struct view *v) __attribute__ ((nonnull (1)));

/* Data path (live or view).  Return -1 and set *err on error. */
int store_pread (struct view *v, nbdkit_next *next, void *buf,
                 uint32_t count, uint64_t offset, int *err);
int store_pwrite (nbdkit_next *next, const void *buf, uint32_t count,
                  uint64_t offset, bool fua, int *err);
int store_zero (nbdkit_next *next, uint32_t count, uint64_t offset,
                bool fua, int *err);
int store_flush (int *err);
int store_extents (struct view *v, nbdkit_next *next, uint32_t count,
                   uint64_t offset, uint32_t flags,
                   struct nbdkit_extents *extents, int *err);

/* Commands: append result members to c->body (after "ok":...).  Return
 * 0 on success, or -1 after command_fail (c, ...).
 */
/* @snapshot:create/NAME: freeze the live disk as snapshot name. */
int store_cmd_create (struct command *c, const char *name)
  __attribute__ ((nonnull (1, 2)));
/* @snapshot:list: the snapshots and the live disk. */
int store_cmd_list (struct command *c) __attribute__ ((nonnull (1)));
/* @snapshot:revert/NAME[/force]: make the live disk snapshot name again. */
int store_cmd_revert (struct command *c, const char *name, bool force)
  __attribute__ ((nonnull (1, 2)));
/* @snapshot:delete/NAME: delete a snapshot (merged in the background). */
int store_cmd_delete (struct command *c, const char *name)
  __attribute__ ((nonnull (1, 2)));

/* Names of the snapshots (for list_exports); calls fn for each. */
void store_foreach_snapshot (void (*fn) (const char *name, void *opaque),
                             void *opaque);

#endif /* NBDSNAP_SNAPSHOT_STORE_H */
