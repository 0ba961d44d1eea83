/* nbdsnap snapshot filter: partial blocks (presence per sector).
 *
 * A block is cut into PARTIAL_SECTORS sectors (4 KiB with the default
 * 64 KiB blocks).  A layer may hold only some sectors of a block: state
 * BSTATE_PARTIAL, with a 16-bit mask of the sectors it holds in
 * l->pmask; its other sectors show through from the layers below, as if
 * the layer did not hold the block.  So the first write of a 4K piece
 * into a block is one 4K pwrite and a mask update, not a 64K read from
 * below and a 64K write (qcow2's subclusters make the same trade).
 *
 * Rules that keep it lock-free for readers:
 *  - the sectors' bytes are written before their bits are set, and a
 *    block's mask is set before its state becomes PARTIAL (release
 *    stores; readers load the state, then the mask, with acquire);
 *  - within a layer, a mask only grows; PARTIAL becomes DATA (mask
 *    full) or ZERO or DATA (a whole-block write or zero), never ABSENT;
 *  - the sectors a layer lacks are written under the block's stripe
 *    lock only; the sectors it holds may be rewritten with no lock.
 */
#ifndef NBDSNAP_SNAPSHOT_PARTIAL_H
#define NBDSNAP_SNAPSHOT_PARTIAL_H

#include <stdint.h>

#include <nbdkit-filter.h>

#include "store-internal.h"

#define PARTIAL_SECTORS 16

/* log2 of the sector size. */
static inline unsigned
sector_shift (void)
{
  return S.g.shift - 4;
}

/* The mask of every sector of block b (the last block may be short). */
static inline uint16_t
full_mask (uint64_t b)
{
  uint64_t bl = geom_block_len (&S.g, b);
  unsigned n = (bl + (UINT64_C (1) << sector_shift ()) - 1) >> sector_shift ();

  return n >= PARTIAL_SECTORS ? 0xffff : (uint16_t) ((1u << n) - 1);
}

/* The sectors that bytes [boff, boff+n) of a block touch (n > 0). */
static inline uint16_t
cover_mask (uint64_t boff, uint64_t n)
{
  unsigned s0 = boff >> sector_shift (), s1 = (boff + n - 1) >> sector_shift ();

  return (uint16_t) (((1u << (s1 + 1)) - 1) & ~((1u << s0) - 1));
}

/* The sector mask of block b of layer l (meaningful if PARTIAL). */
static inline uint16_t
pmask_get (const struct layer *l, uint64_t b)
{
  return omap_get (&l->pmask, b);
}

/* Read len bytes at boff of block b as the chain from l down shows them
 * (l NULL: the plugin's disk).  v: the view whose chain it is (NULL or a
 * live view: the live chain, whose parent pointers only change with the
 * gate held; a snapshot view walks the chain it pinned).  -1 and *err.
 */
int chain_read (const struct view *v, struct layer *l, nbdkit_next *next,
                char *buf, uint64_t b, uint64_t boff, uint64_t len,
                int *err);

/* Write n bytes from src (or zeroes) at boff of block b into the active
 * layer's data file: one pwrite, nothing else (the caller knows the
 * layer holds those sectors, or marks them after).  -1 and *err.
 */
int active_write (uint64_t b, uint64_t boff, uint64_t n, const char *src,
                  int *err);

/* Write n bytes from src (or zeroes) at boff of block b into the active
 * layer, which holds it as ABSENT or PARTIAL: the sectors written
 * whole, plus a read-modify-write of the edge sectors it lacks, then
 * the mask and state.  Stripe lock of b held, inside the gate.
 */
int partial_write_locked (nbdkit_next *next, uint64_t b, uint64_t boff,
                          uint64_t n, const char *src, int *err);

/* Merge: give child c the sectors of block b that c lacks and l (state
 * st, not ABSENT) holds, from l's data file (or zeroes).  c's state of
 * b is ABSENT or PARTIAL.  Stripe lock of b held.  -1 and errno with
 * why.
 */
int partial_merge (struct layer *l, unsigned st, struct layer *c,
                   unsigned cst, uint64_t b, char *buf, char *why,
                   size_t whylen);

#endif /* NBDSNAP_SNAPSHOT_PARTIAL_H */
