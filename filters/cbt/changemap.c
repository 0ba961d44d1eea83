/* nbdsnap cbt filter: change maps.
 *
 * Ours: the views @cbt/SINCE and @cbt:diff/SINCE/UNTIL, read-only views
 * of the disk whose extents say which blocks changed ("changed since
 * Ci" is the union of the bitmaps of Ci .. Cn, "between Ci and Cj" that
 * of Ci .. C(j-1)).  The snapshot filter's: before a snapshot revert
 * passes down, its change map tells which blocks the revert changes.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>

#include <nbdkit-filter.h>

#include "lockscope.h"
#include "minmax.h"
#include "tracker-internal.h"

/* Indexes [*lo, *hi) of the bitmaps a change map uses (rw lock held).
 * -1 with a reason in why if a checkpoint is missing, until is older
 * than since, or one of the bitmaps may miss writes.
 */
static int
range_of (const char *since, const char *until, int *lo, int *hi,
          char *why, size_t whylen)
{
  int i;

  *lo = find_ckpt (since);
  if (*lo < 0) {
    snprintf (why, whylen, "checkpoint '%s' does not exist", since);
    return -1;
  }
  *hi = T.ncps;
  if (until) {
    *hi = find_ckpt (until);
    if (*hi < 0) {
      snprintf (why, whylen, "checkpoint '%s' does not exist", until);
      return -1;
    }
    if (*hi < *lo) {
      snprintf (why, whylen, "checkpoint '%s' is older than '%s'", until,
                since);
      return -1;
    }
  }
  for (i = *lo; i < *hi; ++i)
    if (ckpt_inconsistent (T.cps[i])) {
      snprintf (why, whylen, "the bitmap of checkpoint '%s' may miss writes "
                "(nbdkit stopped uncleanly with cbt-sync=flush, or an I/O "
                "error in cbt-dir stopped the tracking), so changes since "
                "'%s' are unknown: take a full backup and a new checkpoint",
                T.cps[i]->name, since);
      return -1;
    }
  return 0;
}

/* May a view of the changes since (until) be opened? */
int
tracker_view_check (const char *since, const char *until,
                    char *why, size_t whylen)
{
  int lo, hi;

  if (!name_valid (since, why, whylen) ||
      (until && !name_valid (until, why, whylen)))
    return -1;
  ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&T.rw);
  return range_of (since, until, &lo, &hi, why, whylen);
}

/* Did block b change in any of the bitmaps [lo, hi)? */
static bool
changed (int lo, int hi, uint64_t b)
{
  int i;

  for (i = lo; i < hi; ++i)
    if (sbm_get (&T.cps[i]->bits, b))
      return true;
  return false;
}

/* The first block from b on (below end) whose changed () is not ch, or
 * end.  A leaf that none of the bitmaps [lo, hi) has is skipped whole,
 * so an unchanged region costs per leaf, not per block.
 */
static uint64_t
run_end_block (int lo, int hi, uint64_t b, uint64_t end, bool ch)
{
  while (b < end) {
    size_t l = b / LEAF_BITS, w = (b % LEAF_BITS) / 64;
    uint64_t v = 0, x;
    bool any = false;
    int i;

    for (i = lo; i < hi; ++i)
      if (sbm_leaf (&T.cps[i]->bits, l)) {
        any = true;
        v |= sbm_word (&T.cps[i]->bits, l, w);
      }
    if (!any) {
      if (ch)
        return b;
      b = (uint64_t) (l + 1) * LEAF_BITS;
      continue;
    }
    x = (ch ? ~v : v) >> (b & 63);    /* bits that end the run */
    if (x)
      return min64 (end, b + __builtin_ctzll (x));
    b = (b | 63) + 1;
  }
  return end;
}

/* Add the extents of the changed run [offset, end): per block, zero if
 * the disk below (next) says all of the block reads as zero, else data
 * (block-aligned like the bitmap).
 */
static int
add_changed (nbdkit_next *next, uint64_t offset, uint64_t end,
             struct nbdkit_extents *extents, int *err)
{
  struct nbdkit_extents *pe;
  size_t i = 0, n;
  uint64_t pos = offset;
  int r = 0;

  pe = nbdkit_extents_full (next, end - offset, offset, 0, err);
  if (pe == NULL)
    return -1;
  n = nbdkit_extents_count (pe);
  while (r == 0 && pos < end) {
    uint64_t bend = min64 (end, geom_offset (&T.g,
                                             geom_block (&T.g, pos) + 1));
    bool zero = true;
    size_t k;

    while (i + 1 < n && nbdkit_get_extent (pe, i).offset +
           nbdkit_get_extent (pe, i).length <= pos)
      i++;
    for (k = i; k < n; ++k) {
      struct nbdkit_extent e = nbdkit_get_extent (pe, k);
      if (e.offset >= bend)
        break;
      if (!(e.type & NBDKIT_EXTENT_ZERO))
        zero = false;
    }
    if (nbdkit_add_extent (extents, pos, bend - pos,
                           zero ? NBDKIT_EXTENT_ZERO : 0) == -1) {
      *err = errno;
      r = -1;
    }
    pos = bend;
  }
  nbdkit_extents_free (pe);
  return r;
}

/* The extents of a change map view: HOLE where no block changed, else
 * per block data or ZERO.
 */
int
tracker_extents (const char *since, const char *until, nbdkit_next *next,
                 uint32_t count, uint64_t offset, uint32_t flags,
                 struct nbdkit_extents *extents, int *err)
{
  const uint64_t end = offset + count;
  char why[512];
  int lo, hi;

  ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&T.rw);
  if (range_of (since, until, &lo, &hi, why, sizeof why) == -1) {
    nbdkit_error ("cbt: change map: %s", why);
    *err = EIO;
    return -1;
  }
  while (offset < end) {
    uint64_t b = geom_block (&T.g, offset);
    bool ch = changed (lo, hi, b);
    uint64_t bend = geom_block (&T.g, end - 1) + 1;
    uint64_t run_end = min64 (end, geom_offset (&T.g,
                                                run_end_block (lo, hi, b + 1,
                                                               bend, ch)));

    if (!ch) {
      if (nbdkit_add_extent (extents, offset, run_end - offset,
                             NBDKIT_EXTENT_HOLE) == -1) {
        *err = errno;
        return -1;
      }
    }
    else if (add_changed (next, offset, run_end, extents, err) == -1)
      return -1;
    offset = run_end;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

/* Mark the blocks a snapshot revert below us will change.  If the
 * snapshot filter cannot tell us (no such snapshot, say), every block is
 * marked: an incremental may then be larger, never incomplete.
 */
int
tracker_mark_revert (nbdkit_backend *backend, const char *snapshot)
{
  char name[NAME_MAX_LEN + 32];
  nbdkit_next *next;
  uint64_t off = 0;
  int64_t size = -1;
  int err = 0, r = -1;
  bool opened = false;

  if (active_ckpt () == NULL)
    return 0;                   /* no checkpoint: nothing to track */
  snprintf (name, sizeof name, "@snapshot:diff/%s", snapshot);
  next = nbdkit_next_context_open (backend, 1, name, 1);
  if (next != NULL && next->prepare (next) == 0) {
    opened = true;
    size = next->get_size (next);
    if (size != (int64_t) T.g.disk_size || next->can_extents (next) != 1)
      size = -1;
  }
  gate_enter (&T.gate);
  if (size == -1) {
    nbdkit_debug ("cbt: no change map for the revert to '%s': marking "
                  "every block", snapshot);
    r = tracker_mark (0, T.g.disk_size, &err);
  }
  else {
    /* As few requests as a 32-bit count allows (block-aligned): each
     * costs a pass through the layers below whatever it covers.
     */
    const uint32_t chunk = UINT32_MAX & ~(T.g.block_size - 1);

    r = 0;
    while (r == 0 && off < (uint64_t) size) {
      uint32_t len = min64 (size - off, chunk);
      struct nbdkit_extents *e = nbdkit_extents_full (next, len, off, 0,
                                                      &err);
      size_t i;

      if (e == NULL) {
        r = -1;
        break;
      }
      for (i = 0; r == 0 && i < nbdkit_extents_count (e); ++i) {
        struct nbdkit_extent x = nbdkit_get_extent (e, i);
        /* In a snapshot change map, HOLE alone means "unchanged". */
        if (x.type != NBDKIT_EXTENT_HOLE)
          r = tracker_mark (x.offset, x.length, &err);
      }
      nbdkit_extents_free (e);
      off += len;
    }
  }
  gate_leave (&T.gate);
  if (opened)
    next->finalize (next);
  if (next)
    nbdkit_next_context_close (next);
  return r;
}
