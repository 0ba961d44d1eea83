/* nbdsnap freeze filter: reading a frozen point.
 *
 * A block saved in the point's scratch file is read from there; any
 * other block still holds its frozen content on the disk below.  Reads
 * take the block's stripe lock, so no writer can save and then
 * overwrite the block between the check and the read.
 */
#include <config.h>

#include <errno.h>

#include <nbdkit-filter.h>

#include "fileio.h"
#include "lockscope.h"
#include "points-internal.h"

/* A view of an aborted point: fail the request. */
static int
aborted (struct point *p, int *err)
{
  nbdkit_error ("freeze: backup '%s' was aborted: %s", p->name, p->failure);
  *err = EIO;
  return -1;
}

/* Read [offset, offset+n) inside block b.  -2 if p is aborted. */
static int
read_block_part (struct point *p, nbdkit_next *next, char *buf, uint64_t b,
                 uint64_t n, uint64_t offset, int *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (stripe_of (&P.stripes, b));

  if (point_failed (p))
    return -2;
  if (bitset_get_atomic (&p->saved, b)) {
    if (scratch_pread (p, buf, n, offset) == -1) {
      *err = errno;
      return -1;
    }
    return 0;
  }
  return next->pread (next, buf, n, offset, 0, err);
}

int
points_pread (struct point *p, nbdkit_next *next, void *vbuf,
              uint32_t count, uint64_t offset, int *err)
{
  char *buf = vbuf;
  const uint64_t end = offset + count;

  while (offset < end) {
    uint64_t b = geom_block (&P.g, offset);
    uint64_t n = min64 (end, geom_offset (&P.g, b + 1)) - offset;
    int r = read_block_part (p, next, buf, b, n, offset, err);

    if (r == -2)
      return aborted (p, err);
    if (r == -1)
      return -1;
    buf += n;
    offset += n;
  }
  if (point_failed (p))
    return aborted (p, err);
  return 0;
}

/* The extent of e containing pos (searching from *i on). */
static struct nbdkit_extent
extent_at (struct nbdkit_extents *e, size_t *i, uint64_t pos)
{
  struct nbdkit_extent x;

  for (;;) {
    x = nbdkit_get_extent (e, *i);
    if (pos < x.offset + x.length || *i + 1 >= nbdkit_extents_count (e))
      return x;
    (*i)++;
  }
}

/* The first block in [b, lim) whose saved bit is not val, or lim: the
 * end of the run of saved (val) or unsaved (!val) blocks from b.  A word
 * (64 blocks) at a time.
 */
static uint64_t
saved_run_end (const struct bitset *saved, uint64_t b, uint64_t lim, bool val)
{
  while (b < lim) {
    uint64_t w = __atomic_load_n (&saved->words[b >> 6], __ATOMIC_ACQUIRE);

    if (val)
      w = ~w;
    w >>= b & 63;               /* the bits from b to the word's end */
    if (w)
      return min64 (lim, b + __builtin_ctzll (w));
    b = (b | 63) + 1;
  }
  return lim;
}

/* Extents of the view: in runs, not block by block.  A run of saved
 * blocks is one data extent; between saved blocks the extents below (or
 * of the change map) pass through as they are.
 */
int
points_extents (struct point *p, nbdkit_next *next, nbdkit_next *changes,
                uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents, int *err)
{
  const uint64_t end = offset + count;
  struct nbdkit_extents *fe = NULL, *ce = NULL;
  size_t fi = 0, ci = 0;
  uint64_t pos = offset;
  int r = -1;

  if (point_failed (p))
    return aborted (p, err);
  if (changes &&
      (ce = nbdkit_extents_full (changes, count, offset, 0, err)) == NULL)
    goto out;
  /* The disk below first, the saved bits after: a block not saved once
   * the query is done was not overwritten before it either.
   */
  if ((fe = nbdkit_extents_full (next, count, offset, 0, err)) == NULL)
    goto out;

  while (pos < end) {
    uint64_t seg_end = end, b, run;
    uint32_t type;
    bool saved;

    if (ce) {
      struct nbdkit_extent c = extent_at (ce, &ci, pos);
      seg_end = min64 (seg_end, c.offset + c.length);
      if (c.type == NBDKIT_EXTENT_HOLE) {
        type = NBDKIT_EXTENT_HOLE;      /* unchanged since BASE */
        goto add;
      }
    }
    /* The blocks [b, run) that [pos, seg_end) meets, all saved or all
     * not.
     */
    b = geom_block (&P.g, pos);
    saved = bitset_get_atomic (&p->saved, b);
    if (seg_end > pos) {
      run = saved_run_end (&p->saved, b + 1,
                           geom_block (&P.g, seg_end - 1) + 1, saved);
      seg_end = min64 (seg_end, geom_offset (&P.g, run));
    }
    if (saved)
      type = 0;
    else {
      struct nbdkit_extent f = extent_at (fe, &fi, pos);
      seg_end = min64 (seg_end, f.offset + f.length);
      if (ce)
        type = (f.type & NBDKIT_EXTENT_ZERO) ? NBDKIT_EXTENT_ZERO : 0;
      else
        type = f.type;
    }
  add:
    if (seg_end <= pos)
      seg_end = min64 (end, pos + 1);   /* defensive: always progress */
    if (nbdkit_add_extent (extents, pos, seg_end - pos, type) == -1) {
      *err = errno;
      goto out;
    }
    pos = seg_end;
    if ((flags & NBDKIT_FLAG_REQ_ONE) && pos > offset)
      break;
  }
  r = 0;
  if (point_failed (p))
    r = aborted (p, err);
 out:
  if (fe) nbdkit_extents_free (fe);
  if (ce) nbdkit_extents_free (ce);
  return r;
}
