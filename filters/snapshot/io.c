/* nbdsnap snapshot filter: the data path.
 *
 * Reads go through an owner map (the live disk's or a view's); writes
 * and zeroes go into the active layer: whole blocks as they are, part
 * of a block as the sectors it touches (partial.h), under the block's
 * stripe lock the first time; once the active layer holds the bytes, a
 * partial write is a single pwrite into it, with no lock.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "fileio.h"
#include "ldata.h"
#include "lockscope.h"
#include "partial.h"
#include "store-internal.h"

/* Mark block b of the active layer a as v (DATA or ZERO). */
static void
mark (struct layer *a, uint64_t b, unsigned v)
{
  if (smap_set (&a->st, b, v) == BSTATE_ABSENT)
    __atomic_add_fetch (&a->held, 1, __ATOMIC_RELAXED);
  owner_set (&S.owner, b, a->slot);
}

/* Read [offset, offset+count) through an owner map (of view v; NULL:
 * the live disk): runs of blocks held by the same layer in the same
 * state become one pread / memset / plugin read, so big requests stay
 * big.  A partial block is read sector by sector down its chain.
 */
static int
read_owner (const struct view *v, const struct omap *owner,
            nbdkit_next *next, char *buf, uint64_t count, uint64_t offset,
            int *err)
{
  const uint64_t end = offset + count;

  while (offset < end) {
    uint64_t b = geom_block (&S.g, offset);
    uint16_t o = owner_get (owner, b);
    unsigned st = o ? smap_get (&S.slots[o]->st, b) : BSTATE_ABSENT;
    uint64_t run_end = min64 (end, geom_offset (&S.g, b + 1)), len;

    while (st != BSTATE_PARTIAL && run_end < end) {
      uint64_t nb = geom_block (&S.g, run_end);
      uint16_t o2 = owner_get (owner, nb);
      if (o2 != o || (o && smap_get (&S.slots[o]->st, nb) != st))
        break;
      run_end = min64 (end, geom_offset (&S.g, nb + 1));
    }
    len = run_end - offset;

    if (o == 0) {
      if (next->pread (next, buf, len, offset, 0, err) == -1)
        return -1;
    }
    else if (st == BSTATE_ZERO)
      memset (buf, 0, len);
    else if (st == BSTATE_PARTIAL) {
      if (chain_read (v, S.slots[o], next, buf, b,
                      offset - geom_offset (&S.g, b), len, err) == -1)
        return -1;
    }
    else if (ldata_pread (S.slots[o], buf, len, offset) == -1) {
      *err = errno;
      nbdkit_error ("snapshot: read layer %" PRIu64 ": %m", S.slots[o]->id);
      return -1;
    }
    buf += len;
    offset = run_end;
  }
  return 0;
}

/* Read from the live disk or a view. */
int
store_pread (struct view *v, nbdkit_next *next, void *buf,
             uint32_t count, uint64_t offset, int *err)
{
  int r;

  if (!v->live)
    return read_owner (v, &v->owner, next, buf, count, offset, err);
  gate_enter (&S.gate);
  r = read_owner (NULL, &S.owner, next, buf, count, offset, err);
  gate_leave (&S.gate);
  return r;
}

/* Mark block b of the active layer a as v after a whole-block write or
 * zero.  A block the layer does not hold whole may have a write of some
 * of its sectors under way (partial.c), which reads, patches and writes
 * back sectors under the block's stripe lock: the block must not turn
 * into data, and take in-place writes, before that is done.  So a state
 * leaves absent or partial under the stripe lock only.
 */
static void
mark_whole (struct layer *a, uint64_t b, unsigned v)
{
  unsigned st = smap_get (&a->st, b);

  if (st == BSTATE_DATA || st == BSTATE_ZERO)
    mark (a, b, v);             /* never goes back to absent or partial */
  else {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (stripe (b));
    mark (a, b, v);
  }
}

/* Write (buf) or zero (buf == NULL) whole blocks [b0, b0+nb). */
static int
write_blocks (const char *buf, uint64_t b0, uint64_t nb, int *err)
{
  struct layer *a = S.active;
  uint64_t off = geom_offset (&S.g, b0);
  uint64_t len = min64 (nb << S.g.shift, S.g.disk_size - off);
  unsigned v = buf ? BSTATE_DATA : BSTATE_ZERO;
  uint64_t b;
  int r = 0;

  if (leaves_ready (a, b0, nb) == -1) {
    *err = ENOMEM;
    nbdkit_error ("snapshot: write: out of memory for the block maps");
    return -1;
  }

  if (__atomic_load_n (&S.merge_into_active, __ATOMIC_ACQUIRE)) {
    /* A merge is filling the active layer: go block by block under the
     * stripe locks so that it never overwrites a newer write.
     */
    for (b = b0; b < b0 + nb; ++b) {
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (stripe (b));
      if (buf && ldata_pwrite (a, buf + ((b - b0) << S.g.shift),
                              geom_block_len (&S.g, b),
                              geom_offset (&S.g, b)) == -1) {
        *err = errno;
        nbdkit_error ("snapshot: write: %m");
        if (b > b0)
          layer_touch (a);      /* the blocks before b were marked */
        return -1;
      }
      mark (a, b, v);
    }
    layer_touch (a);
    return 0;
  }

  if (buf) {
    if (ldata_pwrite (a, buf, len, off) == -1) {
      *err = errno;
      nbdkit_error ("snapshot: write: %m");
      r = -1;
    }
  }
  else if (ldata_punch (a, off, len) == -1 &&
           errno != EOPNOTSUPP && errno != ENOSYS) {
    /* Giving the space back is all the punch is for (the state says
     * "zero" whatever is there), but a file system that fails it may
     * fail more: this request fails, the states are unchanged.
     */
    *err = errno;
    nbdkit_error ("snapshot: zero: punching a hole in layer %" PRIu64
                  ": %m", a->id);
    r = -1;
  }
  if (r == 0) {
    for (b = b0; b < b0 + nb; ++b)
      mark_whole (a, b, v);
    layer_touch (a);
  }
  return r;
}

/* Read-modify-write part of block b: n bytes at boff from src (or zero),
 * in tmp (a block's worth of room).  Stripe lock held.
 */
static int
rmw_locked (nbdkit_next *next, uint64_t b, uint64_t boff, uint64_t n,
            const char *src, char *tmp, int *err)
{
  struct layer *a = S.active;
  uint64_t bl = geom_block_len (&S.g, b), off = geom_offset (&S.g, b);

  if (leaves_ready (a, b, 1) == -1) {
    *err = ENOMEM;
    nbdkit_error ("snapshot: write: out of memory for the block maps");
    return -1;
  }
  if (read_owner (NULL, &S.owner, next, tmp, bl, off, err) == -1)
    return -1;
  if (src)
    memcpy (tmp + boff, src, n);
  else
    memset (tmp + boff, 0, n);
  if (ldata_pwrite (a, tmp, bl, off) == -1) {
    *err = errno;
    nbdkit_error ("snapshot: write: %m");
    return -1;
  }
  mark (a, b, BSTATE_DATA);
  layer_touch (a);
  return 0;
}

/* Does the active layer hold bytes [boff, boff+n) of block b?  Once it
 * does, that stays so until a whole-block zero (which overlaps any
 * write to b) or a change of the live chain (which holds the gate): a
 * partial write there can go straight into the layer's data file, with
 * no lock, no read and no state change (the next flush's fdatasync
 * covers it).  A merge only fills blocks, or sectors, the active layer
 * lacks, so it never touches these bytes.
 */
static inline bool
owned (struct layer *a, uint64_t b, uint64_t boff, uint64_t n)
{
  unsigned st = smap_get (&a->st, b);
  uint16_t cover;

  if (st == BSTATE_DATA)
    return true;
  if (st != BSTATE_PARTIAL)
    return false;
  cover = cover_mask (boff, n);
  return (pmask_get (a, b) & cover) == cover;
}

/* Write part of block b: n bytes at boff from src (or zero). */
static int
write_partial (nbdkit_next *next, uint64_t b, uint64_t boff, uint64_t n,
               const char *src, int *err)
{
  struct layer *a = S.active;
  char *tmp;
  int r;

  /* Fast path: the active layer already holds these bytes. */
  if (owned (a, b, boff, n))
    return active_write (b, boff, n, src, err);

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (stripe (b));
  /* Another writer of b may have given us these bytes while we waited:
   * then writing sectors from below would race with the in-place
   * writes that others now do without the lock.
   */
  if (owned (a, b, boff, n))
    return active_write (b, boff, n, src, err);
  if (smap_get (&a->st, b) != BSTATE_ZERO)
    return partial_write_locked (next, b, boff, n, src, err);

  /* A zeroed block: read-modify-write of the whole block (its bytes
   * below must not show through any more).
   */
  tmp = malloc (S.g.block_size);
  if (tmp == NULL) {
    *err = ENOMEM;
    nbdkit_error ("snapshot: write: out of memory");
    return -1;
  }
  r = rmw_locked (next, b, boff, n, src, tmp, err);
  free (tmp);
  return r;
}

/* Make every acknowledged write durable (caller is inside the gate).  A
 * failure here is sticky (save_layer): a failed fdatasync may have lost
 * data that the next one would not report.
 */
static int
flush_locked (int *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.flush_lock);

  if (save_layer (S.active, false, "flush") == -1) {
    *err = errno;
    if (!failure_is_set (&S.fail))
      nbdkit_error ("snapshot: flush: %m");
    return -1;
  }
  return 0;
}

/* Common path of write and zero (buf == NULL). */
static int
modify (nbdkit_next *next, const char *buf, uint32_t count, uint64_t offset,
        bool fua, int *err)
{
  const uint64_t mask = S.g.block_size - 1;
  uint64_t end = offset + count;
  int r = 0;

  if (failure_check (&S.fail, err) == -1)
    return -1;
  gate_enter (&S.gate);
  while (offset < end) {
    uint64_t b = geom_block (&S.g, offset), boff = offset & mask;
    uint64_t bl = geom_block_len (&S.g, b);

    if (boff == 0 && end - offset >= bl) {
      /* As many whole blocks as the request covers. */
      uint64_t nb = 1, len;
      while (offset + (nb << S.g.shift) < end &&
             end - (offset + (nb << S.g.shift)) >=
             geom_block_len (&S.g, b + nb))
        nb++;
      if (write_blocks (buf, b, nb, err) == -1) { r = -1; break; }
      len = min64 (nb << S.g.shift, end - offset);
      if (buf) buf += len;
      offset += len;
    }
    else {
      uint64_t n = min64 (bl - boff, end - offset);
      if (write_partial (next, b, boff, n, buf, err) == -1) { r = -1; break; }
      if (buf) buf += n;
      offset += n;
    }
  }
  if (r == 0 && fua)
    r = flush_locked (err);
  gate_leave (&S.gate);
  return r;
}

/* Write to the live disk. */
int
store_pwrite (nbdkit_next *next, const void *buf, uint32_t count,
              uint64_t offset, bool fua, int *err)
{
  return modify (next, buf, count, offset, fua, err);
}

/* Zero (or trim) part of the live disk. */
int
store_zero (nbdkit_next *next, uint32_t count, uint64_t offset, bool fua,
            int *err)
{
  return modify (next, NULL, count, offset, fua, err);
}

/* Make the live disk durable. */
int
store_flush (int *err)
{
  int r;

  if (failure_check (&S.fail, err) == -1)
    return -1;
  gate_enter (&S.gate);
  r = flush_locked (err);
  gate_leave (&S.gate);
  return r;
}
