/* nbdsnap snapshot filter: one copy-on-write layer.
 *
 * A layer is sparse data (block N at byte N * block_size, in one file
 * or in segments: ldata.h) plus a 2-bit state per block (absent / data / zero / partial), and a sector
 * mask per partial block (partial.h), persisted as a map file.
 * Frozen layers are snapshots; exactly one layer, the active layer,
 * takes writes.  See docs/snapshot-format.md for the bytes on disk.
 */
#ifndef NBDSNAP_SNAPSHOT_LAYER_H
#define NBDSNAP_SNAPSHOT_LAYER_H

#include <pthread.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdint.h>

#include "bitmap.h"
#include "exportname.h"
#include "geom.h"
#include "sparse.h"

struct layer {
  uint64_t id;                  /* persistent, never reused */
  uint16_t slot;                /* index in the store's slot table, 1.. */
  char name[NAME_MAX_LEN + 1];  /* snapshot name; "" for the active layer */
  struct layer *parent;         /* NULL: the plugin's disk */
  int64_t created;              /* seconds since the epoch (frozen layers) */
  bool active;                  /* the layer taking writes */
  bool deleting;                /* being merged into its children */
  bool detached;                /* removed from the table, freed at refs 0 */
  int *fds;                     /* data files, one per segment (ldata.h) */
  unsigned nseg;                /* how many */
  unsigned seg_shift;           /* log2 (segment size); 0: one file */
  struct smap st;              /* per-block states (sparse) */
  struct omap pmask;            /* sector masks of PARTIAL blocks */
  uint64_t held;                /* atomic: blocks not ABSENT */
  uint64_t gen;                 /* atomic: bumped on every state change */
  uint64_t saved_gen;           /* gen last written to the map file */
  pthread_mutex_t save_lock;    /* held around layer_save */
  unsigned refs;                /* table + open views (store lock) */
  struct layer *bg_next;        /* queue of layer_free_background */
};

/* Allocate a layer and open (create if create) its data file.  NULL
 * with errno and a reason in why.
 */
struct layer *layer_open (int dirfd, uint64_t id, const struct geom *g,
                          bool create, char *why, size_t whylen)
  __attribute__ ((nonnull (3, 5)));

/* Load the map file into l->st, validating it against g.  -1 with why. */
int layer_load_map (int dirfd, struct layer *l, const struct geom *g,
                    char *why, size_t whylen)
  __attribute__ ((nonnull (2, 3, 4)));

/* Make the layer durable: fdatasync its data, then (if it changed since
 * the last save, or force) write its map atomically.  The caller holds
 * l->save_lock.  Returns:
 *    0  done, durable;
 *   -1  nothing was written (errno: ENOMEM, or EIO if the checksum
 *       could not be computed; what says which);
 *   -2  an I/O step failed (errno; what names the step).  The layer's
 *       files can no longer be trusted (Linux reports a writeback error
 *       once: the next fdatasync may return 0 over lost data), so the
 *       caller must stop saving the layer.  If the new map got in place
 *       but the directory could not be made durable, l->saved_gen says
 *       that the map in place is current.
 */
int layer_save (int dirfd, struct layer *l, const struct geom *g,
                bool force, char *what, size_t whatlen)
  __attribute__ ((nonnull (2, 3, 5)));

/* Record that blocks changed (call after bstate updates). */
static inline void
layer_touch (struct layer *l)
{
  __atomic_add_fetch (&l->gen, 1, __ATOMIC_RELEASE);
}

/* Remove a layer's files (data, map). */
void layer_unlink (int dirfd, uint64_t id);

/* Close the data files and free the layer. */
void layer_free (struct layer *l);

/* Close the data files of a layer that was saved (a close can report a
 * write error nothing else did).  -1 and errno.
 */
int layer_close (struct layer *l) __attribute__ ((nonnull (1)));

/* The same on a background thread: closing the last descriptor of an
 * unlinked data file frees its blocks, which takes time in proportion to
 * the data and must not stall a revert.
 */
void layer_free_background (struct layer *l);
/* Free what layer_free_background queued and join its thread (at
 * unload; later calls free in the caller's thread).
 */
void layer_wait_background (void);

/* File names of a layer. */
void layer_data_name (uint64_t id, char *buf, size_t len);
void layer_map_name (uint64_t id, char *buf, size_t len);

#endif /* NBDSNAP_SNAPSHOT_LAYER_H */
