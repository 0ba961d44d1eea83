/* nbdsnap snapshot filter: sparse two-level block maps.
 *
 * The disk's blocks are cut into leaves of LEAF_BLOCKS blocks.  A map is
 * a top array with one pointer per leaf; a leaf is allocated on the first
 * write into it, and an absent leaf means "nothing here" (all ABSENT, or
 * all owner 0 = the plugin).  Memory, the files and every walk over a map
 * then follow the written data, not the size of the disk.
 *
 * A bit per leaf (present) says which leaves exist, so that walks over a
 * map (start-up, revert, saving, merging) visit only those:
 * sparse_next.
 *
 * Lookups are lock-free: an atomic load of the leaf pointer, then of the
 * entry.  Leaves are only freed with the whole map (smap_free/omap_free),
 * which callers do when no request can read the map any more (the layer
 * is unreferenced, or the gate is held).
 *
 * Two kinds:
 *  - struct smap: a 2-bit state per block (BSTATE_* of bitmap.h), the
 *    states of one layer; 128 64-bit words (1 KiB) per leaf.
 *  - struct omap: a 16-bit value per block, 8 KiB per leaf: the owner
 *    maps (the slot of the layer that holds the block, 0: the plugin),
 *    and each layer's sector masks of its PARTIAL blocks (partial.h).
 */
#ifndef NBDSNAP_SNAPSHOT_SPARSE_H
#define NBDSNAP_SNAPSHOT_SPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bitmap.h"

#define LEAF_SHIFT 12
#define LEAF_BLOCKS (UINT64_C (1) << LEAF_SHIFT)
#define LEAF_WORDS (LEAF_BLOCKS / 32)   /* state words per smap leaf */

struct smap {
  uint64_t **leaf;              /* nleaves pointers (atomic), NULL: empty */
  uint64_t *present;            /* bit i: leaf i exists (atomic) */
  uint64_t nblocks;
  size_t nleaves;
};

struct omap {
  uint16_t **leaf;              /* nleaves pointers (atomic), NULL: all 0 */
  uint64_t *present;            /* bit i: leaf i exists (atomic) */
  size_t nleaves;
};

/* The first leaf >= i whose present bit is set, or nleaves.  Walk a map
 * with: for (i = sparse_next (m->present, m->nleaves, 0); i < m->nleaves;
 * i = sparse_next (m->present, m->nleaves, i + 1)).
 */
size_t sparse_next (const uint64_t *present, size_t nleaves, size_t i);
/* The same, looking no further than limit: the first present leaf in
 * [i, min (limit, nleaves)), or that bound.
 */
size_t sparse_next_before (const uint64_t *present, size_t nleaves,
                           size_t i, size_t limit);

/* The number of leaves of a disk of nblocks blocks. */
static inline size_t
sparse_nleaves (uint64_t nblocks)
{
  return (nblocks + LEAF_BLOCKS - 1) >> LEAF_SHIFT;
}

/* An empty map.  -1 on ENOMEM. */
int smap_init (struct smap *m, uint64_t nblocks) __attribute__ ((nonnull));
/* Free the map (no request may read it any more). */
void smap_free (struct smap *m) __attribute__ ((nonnull));

/* Leaf i, or NULL if absent (atomic, acquire). */
static inline uint64_t *
smap_leaf (const struct smap *m, size_t i)
{
  return __atomic_load_n (&m->leaf[i], __ATOMIC_ACQUIRE);
}

/* Leaf i, allocated (zeroed) if absent.  NULL on ENOMEM. */
uint64_t *smap_leaf_make (struct smap *m, size_t i) __attribute__ ((nonnull));

/* The state of block b. */
static inline unsigned
smap_get (const struct smap *m, uint64_t b)
{
  const uint64_t *lf = smap_leaf (m, b >> LEAF_SHIFT);
  uint64_t w;

  if (lf == NULL)
    return BSTATE_ABSENT;
  w = __atomic_load_n (&lf[(b & (LEAF_BLOCKS - 1)) >> 5], __ATOMIC_ACQUIRE);
  return (w >> ((b & 31) * 2)) & 3;
}

/* Set the state of block b, returning the previous one (atomic).  The
 * caller has made its leaf with smap_leaf_make if v is not ABSENT (so
 * that this cannot fail); if not, it is made here, and a failure to
 * allocate it aborts the process.
 */
unsigned smap_set (struct smap *m, uint64_t b, unsigned v)
  __attribute__ ((nonnull));

/* If the state of block b is expect, make it v (atomic; its leaf
 * exists if expect is not ABSENT).  True if it was changed.
 */
bool smap_cas (struct smap *m, uint64_t b, unsigned expect, unsigned v)
  __attribute__ ((nonnull));

/* Number of blocks that are not ABSENT. */
uint64_t smap_count (const struct smap *m) __attribute__ ((nonnull));

/* An empty owner map (every block: the plugin).  -1 on ENOMEM. */
int omap_init (struct omap *m, uint64_t nblocks) __attribute__ ((nonnull));
/* Free the map (no request may read it any more).  A zeroed struct is
 * an empty map that needs no freeing.
 */
void omap_free (struct omap *m) __attribute__ ((nonnull));

/* Leaf i, allocated (zeroed) if absent.  NULL on ENOMEM. */
uint16_t *omap_leaf_make (struct omap *m, size_t i) __attribute__ ((nonnull));

/* The owner of block b. */
static inline uint16_t
omap_get (const struct omap *m, uint64_t b)
{
  const uint16_t *lf = __atomic_load_n (&m->leaf[b >> LEAF_SHIFT],
                                        __ATOMIC_ACQUIRE);
  return lf ? __atomic_load_n (&lf[b & (LEAF_BLOCKS - 1)], __ATOMIC_ACQUIRE)
            : 0;
}

/* Set the owner of block b (its leaf made before by omap_leaf_make if v
 * is not 0; if not, as smap_set).
 */
void omap_set (struct omap *m, uint64_t b, uint16_t v)
  __attribute__ ((nonnull));

/* If the owner of block b is expect, make it v (atomic). */
void omap_cas (struct omap *m, uint64_t b, uint16_t expect, uint16_t v)
  __attribute__ ((nonnull));

/* OR bits into the value of block b (atomic; its leaf made before by
 * omap_leaf_make); the value after.
 */
uint16_t omap_or (struct omap *m, uint64_t b, uint16_t bits)
  __attribute__ ((nonnull));

#endif /* NBDSNAP_SNAPSHOT_SPARSE_H */
