/* nbdsnap snapshot filter: what the store's files share (not for
 * snapshot.c, which uses store.h).
 *
 * Layers form a tree rooted at the plugin's disk.  The live disk is the
 * chain from the active layer down to the plugin; a snapshot is the chain
 * from its frozen layer down.  For O(1) lookups whatever the depth, the
 * live disk keeps an owner map (block -> slot of the topmost layer that
 * holds it, 0 = plugin); views compute their own when opened.
 *
 * Concurrency:
 *  - S.lock protects the layer table, connection counts and commands.
 *  - S.gate: every live request enters it; commands that change the live
 *    chain hold it (drain + exclude I/O) for their O(1) switch.
 *  - Stripe locks serialize the writes of sectors (or blocks) the active
 *    layer lacks, and all writes to the active layer while a merge
 *    copies into it.  A block's state leaves absent or partial only
 *    under its stripe lock (a whole-block write marks such blocks under
 *    it, one at a time).  Nobody holds two stripe locks.
 *  - Frozen layers never change except by merge, which only fills blocks a
 *    layer lacks with the bytes it already showed through from its parent.
 *
 * Failures: an I/O error that cannot be undone (a failed fdatasync of a
 * layer, a failed write of a map or of the state file, a directory that
 * could not be made durable) puts the store into the failed state
 * (failure.h, S.fail): from then on writes, zeroes, trims, flushes and
 * the commands that change the tree answer EIO, nothing more is saved,
 * and what the next start finds is what was made durable before.  A
 * failed pwrite (or hole punch) of one request only fails that request:
 * the block states are changed only after the bytes are written.
 *
 * The files of the store:
 *   io.c        the data path of the live disk and views
 *   partial.c   blocks a layer holds in part (presence per sector)
 *   chain.c     chains of layers and their owner maps
 *   extents.c   extents and change maps
 *   table.c     the layer table (slots)
 *   state.c     the state file, and what else is in snapshot-dir
 *   commands.c  create, list, revert, delete
 *   merge.c     the background merge of deleted snapshots
 *   views.c     views and live connections (revert-on-close)
 *   start.c     start, after_fork, stop; the store itself (S)
 */
#ifndef NBDSNAP_SNAPSHOT_STORE_INTERNAL_H
#define NBDSNAP_SNAPSHOT_STORE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "command.h"
#include "diskname.h"
#include "exportname.h"
#include "failure.h"
#include "gate.h"
#include "geom.h"
#include "layer.h"
#include "sparse.h"
#include "statefile.h"
#include "store.h"
#include "stripes.h"

#define MAX_SLOTS 65535         /* slot 0 is the plugin */

/* The store: one per nbdkit process (defined in start.c). */
struct store {
  char *dir;
  int dirfd, lockfd;
  struct geom g;
  uint8_t fp[SHA256_LEN];       /* fingerprint of the plugin's disk */
  uint64_t next_id;

  pthread_mutex_t lock;
  pthread_cond_t cond;          /* signalled when a merge finishes */
  struct layer *slots[MAX_SLOTS];
  struct layer *active;
  struct omap owner;            /* live owner map (sparse, atomic) */
  struct gate gate;
  int merge_into_active;        /* atomic */
  struct stripes stripes;
  pthread_mutex_t flush_lock;

  unsigned live_conns, live_writers;
  bool merging, stopping;
  pthread_t merge_tid;
  bool merge_tid_valid;
  char merge_error[256];        /* why the last merge stopped, or "" */
  uint64_t merge_error_id;      /* the layer it was merging away */
  char revert_on_close[NAME_MAX_LEN + 1];

  struct failure fail;          /* the sticky failed state */
  struct disk_name disk;        /* the export of the disk below */
};

extern struct store S;

/* The layer holding block b according to owner map owner (0: plugin). */
static inline uint16_t
owner_get (const struct omap *owner, uint64_t b)
{
  return omap_get (owner, b);
}

/* Record that the layer in slot v holds block b. */
static inline void
owner_set (struct omap *owner, uint64_t b, uint16_t v)
{
  omap_set (owner, b, v);
}

/* The stripe lock of block b. */
static inline pthread_mutex_t *
stripe (uint64_t b)
{
  return stripe_of (&S.stripes, b);
}

/* chain.c */
/* Build in *owner (a new map) the owner map of the chain ending at top
 * (NULL: the plugin), walking only the leaves its layers hold.  -1 on
 * ENOMEM (nothing to free).
 */
int compute_owner (struct layer *top, struct omap *owner)
  __attribute__ ((nonnull (2)));
/* Allocate the map leaves that writing blocks [b0, b0+nb) of the active
 * layer a will mark (the layer's, the live owner map's), so that marking
 * cannot fail.  -1 on ENOMEM.
 */
int leaves_ready (struct layer *a, uint64_t b0, uint64_t nb)
  __attribute__ ((nonnull (1)));
/* The layers in exactly one of the chains of a and b: a malloc'd array
 * of *n of them, or NULL (ENOMEM).
 */
struct layer **symdiff (struct layer *a, struct layer *b, size_t *n)
  __attribute__ ((nonnull (3)));
/* Is l on the live chain?  (store lock or gate held) */
bool on_live_chain (struct layer *l) __attribute__ ((nonnull (1)));

/* table.c (store lock held for all) */
/* The snapshot (frozen or deleting layer) called name, or NULL. */
struct layer *find_snapshot (const char *name) __attribute__ ((nonnull (1)));
/* Give l a free slot.  -1 if the table is full. */
int alloc_slot (struct layer *l) __attribute__ ((nonnull (1)));
/* Drop a reference; free the layer at zero. */
void unref (struct layer *l) __attribute__ ((nonnull (1)));
/* Remove l from the table: its files go now, its memory when unused. */
void detach (struct layer *l) __attribute__ ((nonnull (1)));
/* The same, keeping its files: a state file that names l may still be
 * the one found after a crash (it is a stray otherwise, removed at the
 * next start).
 */
void detach_keep_files (struct layer *l) __attribute__ ((nonnull (1)));
/* A new empty layer on top of parent, with its empty map on disk.  NULL
 * with errno and a reason in why.
 */
struct layer *new_layer (struct layer *parent, char *why, size_t whylen)
  __attribute__ ((nonnull (2)));
/* Add the ulimit -n hint to why when errno is EMFILE or ENFILE. */
void hint_open_files (char *why, size_t whylen, size_t nlayers)
  __attribute__ ((nonnull (1)));

/* Discard a layer made by new_layer that never got committed. */
void drop_new_layer (struct layer *l) __attribute__ ((nonnull (1)));

/* state.c */
/* Commit the table to the state file (store lock held).  Returns 0;
 * -1 (errno) if the old state file is still the one in place: the
 * caller undoes its change in memory; or -2 (errno) if the new state
 * file is in place but could not be made durable: the caller keeps its
 * change (what is in memory matches the file in place).  An I/O error
 * (anything but ENOMEM) has put the store into the failed state.
 */
int save_state (void);
/* Make layer l durable (layer_save, under its save lock).  In the
 * failed state nothing is saved (EIO); an I/O error enters it, with
 * during (what was being done) in the message.  0, or -1 and errno.
 */
int save_layer (struct layer *l, bool force, const char *during)
  __attribute__ ((nonnull (1, 3)));
/* .get_ready: read and check the state file (want_bs: the block size
 * asked for, 0 if none); without one, check that the directory holds no
 * layers.  Nothing here needs the disk below.  -1 after nbdkit_error.
 */
int read_state (uint32_t want_bs);
/* .after_fork, the disk below probed: check the state read against it
 * and load its layers, or set up a new directory with blocks of new_bs.
 * Then remove the files no state names.  -1 after nbdkit_error.
 */
int load_or_create_state (uint32_t new_bs);
/* Free what read_state kept (if load_or_create_state never ran). */
void forget_state (void);

/* commands.c */
/* Switch the live disk to a new empty layer on top of target, discarding
 * the old active layer (store lock held, no merge running).  Puts the
 * bytes discarded in *discarded; -1 after command_fail (c, ...).
 */
int do_revert (struct command *c, struct layer *target, uint64_t *discarded)
  __attribute__ ((nonnull (1, 2, 3)));

/* merge.c */
/* Wait until no merge runs (store lock held). */
void wait_merge (void);
/* Start the merge thread (store lock held).  -1 and errno. */
int start_merge (void);
/* Why the merge of l stopped, or NULL (store lock held). */
const char *merge_error (const struct layer *l) __attribute__ ((nonnull (1)));
/* Reap the merge thread: after wait_merge (store lock held), or after
 * setting S.stopping (store lock not held: the thread takes it).
 */
void join_merge (void);
/* The next layer waiting to be merged away, or NULL (store lock held). */
struct layer *next_deleting (void);

#endif /* NBDSNAP_SNAPSHOT_STORE_INTERNAL_H */
