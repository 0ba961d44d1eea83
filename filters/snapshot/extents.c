/* nbdsnap snapshot filter: extents and change maps.
 *
 * Extents of the live disk or a snapshot: blocks of a layer are data or
 * zero, blocks of the plugin's disk are what the plugin says.  Change maps
 * (@snapshot:diff/BASE[/NAME]) answer another question with the same
 * call: a block is a hole if no layer between BASE and the target holds
 * it, so that only the changed blocks read as allocated.
 *
 * Both follow the written data, not the size of the disk: a run of map
 * leaves (LEAF_BLOCKS blocks each, sparse.h) that no layer of a change
 * map's set holds is a hole, and one the owner map has no leaf for is the
 * plugin's, so such runs are found from the maps' present bits in one
 * step rather than block by block; in a leaf some layer of the set does
 * hold, a run of unchanged blocks is found from the union of the set's
 * leaves a word (32 blocks) at a time.  The answers are the same extents
 * as block by block (runs of one type are merged across the skipped
 * leaves).
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "store-internal.h"

#define ASK_PLUGIN UINT32_MAX    /* extent type: what the plugin says */

/* What the extents of a chain are asked about. */
struct question {
  const struct omap *owner;     /* the chain's owner map */
  bool diff;                    /* a change map (else plain extents) */
  struct layer **set;           /* change maps: the layers that changed */
  size_t nset;
  /* Change maps: for leaf any_leaf (SIZE_MAX: none yet), the low bit of
   * each block's 2-bit field is set if a layer of the set holds it.
   */
  size_t any_leaf;
  uint64_t any[LEAF_WORDS];
  /* The last leaf found not uniform (SIZE_MAX: none yet): its other
   * blocks need not look at the maps' present bits again.
   */
  size_t mixed_leaf;
};

/* For change maps: is block b held by any layer in the set?  The leaf of
 * b is looked at once for all its blocks (the union of the set's leaves),
 * not block by block and layer by layer.
 */
static bool
changed (struct question *q, uint64_t b)
{
  const size_t leaf = b >> LEAF_SHIFT;
  const uint64_t j = b & (LEAF_BLOCKS - 1);
  size_t i, k;

  if (leaf != q->any_leaf) {
    memset (q->any, 0, sizeof q->any);
    for (i = 0; i < q->nset; ++i) {
      const uint64_t *lf = smap_leaf (&q->set[i]->st, leaf);
      if (lf == NULL)
        continue;
      for (k = 0; k < LEAF_WORDS; ++k) {
        uint64_t w = __atomic_load_n (&lf[k], __ATOMIC_ACQUIRE);
        q->any[k] |= (w | (w >> 1)) & UINT64_C (0x5555555555555555);
      }
    }
    q->any_leaf = leaf;
  }
  return (q->any[j >> 5] >> ((j & 31) * 2)) & 1;
}

/* For change maps, after changed (q, b) said no: the first block after b
 * that some layer of the set holds, or the end of b's leaf, at most
 * bend.  Found from the leaf's union a word (32 blocks) at a time.
 */
static uint64_t
next_changed (const struct question *q, uint64_t b, uint64_t bend)
{
  const uint64_t base = b & ~(LEAF_BLOCKS - 1);
  uint64_t j = (b & (LEAF_BLOCKS - 1)) + 1, k;

  while (j < LEAF_BLOCKS) {
    uint64_t w = q->any[j >> 5] >> ((j & 31) * 2);
    if (w) {
      j += __builtin_ctzll (w) / 2;
      break;
    }
    j = (j | 31) + 1;
  }
  k = base + (j < LEAF_BLOCKS ? j : LEAF_BLOCKS);
  return k < bend ? k : bend;
}

/* The extent type of block b: NBDKIT_EXTENT_* flags, or ASK_PLUGIN. */
static uint32_t
block_type (struct question *q, uint64_t b)
{
  uint16_t o;
  unsigned st;

  if (q->diff && !changed (q, b))
    return NBDKIT_EXTENT_HOLE;  /* no owner lookup for unchanged blocks */
  o = owner_get (q->owner, b);
  st = o ? smap_get (&S.slots[o]->st, b) : BSTATE_ABSENT;
  if (q->diff)
    return st == BSTATE_ZERO ? NBDKIT_EXTENT_ZERO : 0;
  return o == 0 ? ASK_PLUGIN
    : st == BSTATE_ZERO ? NBDKIT_EXTENT_HOLE|NBDKIT_EXTENT_ZERO : 0;
}

#define NOT_UNIFORM (UINT32_MAX - 1)

/* If every block of the leaf of block b has the same type for q (change
 * maps: no layer of the set has the leaf; plain extents: the owner map
 * has no leaf, every block is the plugin's), that type, with in *until
 * the first block after b (at most bend) where that may stop: the start
 * of the next leaf that a map has.  Else NOT_UNIFORM.  A leaf whose
 * present bit is set but whose blocks are all ABSENT is not uniform here:
 * it is answered block by block.
 */
static uint32_t
leaf_uniform (const struct question *q, uint64_t b, uint64_t bend,
              uint64_t *until)
{
  const size_t leaf = b >> LEAF_SHIFT;
  const size_t limit = ((bend - 1) >> LEAF_SHIFT) + 1;  /* b < bend */
  size_t next = limit, i;
  uint32_t type;

  if (q->diff) {
    for (i = 0; i < q->nset && next > leaf; ++i) {
      const struct smap *m = &q->set[i]->st;
      next = sparse_next_before (m->present, m->nleaves, leaf, next);
    }
    type = NBDKIT_EXTENT_HOLE;
  }
  else {
    next = sparse_next_before (q->owner->present, q->owner->nleaves, leaf, next);
    type = ASK_PLUGIN;
  }
  if (next <= leaf)
    return NOT_UNIFORM;
  *until = min64 (bend, (uint64_t) next << LEAF_SHIFT);
  return type;
}

/* The type of block b and in *until the end of a run of blocks from b
 * (at most bend) known to have it: a run of uniform leaves; in a change
 * map's other leaves a run of unchanged blocks up to the next changed
 * one (within the leaf); else b alone.
 */
static uint32_t
run_type (struct question *q, uint64_t b, uint64_t bend,
          uint64_t *until)
{
  const size_t leaf = b >> LEAF_SHIFT;

  if (leaf != q->mixed_leaf) {
    uint32_t type = leaf_uniform (q, b, bend, until);
    if (type != NOT_UNIFORM)
      return type;
    q->mixed_leaf = leaf;
  }
  if (q->diff && !changed (q, b)) {
    *until = next_changed (q, b, bend);
    return NBDKIT_EXTENT_HOLE;
  }
  *until = b + 1;
  return block_type (q, b);
}

/* Add the plugin's extents of [offset, end). */
static int
add_plugin_extents (nbdkit_next *next, uint64_t offset, uint64_t end,
                    struct nbdkit_extents *extents, int *err)
{
  struct nbdkit_extents *pe;
  size_t i;
  int r = 0;

  pe = nbdkit_extents_full (next, end - offset, offset, 0, err);
  if (pe == NULL)
    return -1;
  for (i = 0; i < nbdkit_extents_count (pe); ++i) {
    struct nbdkit_extent e = nbdkit_get_extent (pe, i);
    uint64_t s = e.offset < offset ? offset : e.offset;
    uint64_t t = min64 (e.offset + e.length, end);
    if (t > s && nbdkit_add_extent (extents, s, t - s, e.type) == -1) {
      *err = errno;
      r = -1;
      break;
    }
  }
  nbdkit_extents_free (pe);
  return r;
}

/* Extents of [offset, offset+count) of the chain owner resolves (target
 * its top), or with base its change map since base: runs of blocks of
 * the same type become one extent.
 */
static int
extents_owner (const struct omap *owner, struct layer *target,
               struct layer *base, nbdkit_next *next, uint64_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  const uint64_t end = offset + count;
  struct question q = { .owner = owner, .diff = base != NULL,
                       .any_leaf = SIZE_MAX, .mixed_leaf = SIZE_MAX };
  int r = 0;

  if (base) {
    q.set = symdiff (target, base, &q.nset);
    if (q.set == NULL) {
      *err = ENOMEM;
      nbdkit_error ("snapshot: extents: out of memory");
      return -1;
    }
  }

  while (offset < end) {
    const uint64_t bend = geom_block (&S.g, end - 1) + 1;
    uint64_t b = geom_block (&S.g, offset), nb, next_b;
    uint32_t type = run_type (&q, b, bend, &nb);
    uint64_t run_end;

    while (nb < bend && run_type (&q, nb, bend, &next_b) == type)
      nb = next_b;
    run_end = min64 (end, geom_offset (&S.g, nb));

    if (type == ASK_PLUGIN)
      r = add_plugin_extents (next, offset, run_end, extents, err);
    else if (nbdkit_add_extent (extents, offset, run_end - offset,
                                type) == -1) {
      *err = errno;
      r = -1;
    }
    if (r == -1)
      break;
    offset = run_end;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  free (q.set);
  return r;
}

/* Extents of the live disk, a view or a change map. */
int
store_extents (struct view *v, nbdkit_next *next, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  int r;

  gate_enter (&S.gate);     /* chains stay still while we look at them */
  if (v->live)
    r = extents_owner (&S.owner, S.active, v->base, next, count, offset,
                       flags, extents, err);
  else
    r = extents_owner (&v->owner, v->top, v->base, next, count, offset,
                       flags, extents, err);
  gate_leave (&S.gate);
  return r;
}
