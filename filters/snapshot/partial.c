/* nbdsnap snapshot filter: partial blocks (partial.h). */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "fileio.h"
#include "ldata.h"
#include "partial.h"

/* The layer under l in the chain v reads; *i: l's index in the chain a
 * snapshot view pinned (top first).
 */
static struct layer *
below (const struct view *v, struct layer *l, size_t *i)
{
  if (v == NULL || v->live)
    return l->parent;
  ++*i;
  return *i < v->ntop ? v->pinned[*i] : NULL;
}

/* The layer of the chain from l (index i) that provides sector s of
 * block b, with *kind DATA or ZERO; NULL: the plugin's disk.
 */
static struct layer *
provider (const struct view *v, struct layer *l, size_t i, uint64_t b,
          unsigned s, unsigned *kind)
{
  for (; l; l = below (v, l, &i)) {
    unsigned st = smap_get (&l->st, b);

    if (st == BSTATE_ABSENT ||
        (st == BSTATE_PARTIAL && !((pmask_get (l, b) >> s) & 1)))
      continue;
    *kind = st == BSTATE_ZERO ? BSTATE_ZERO : BSTATE_DATA;
    return l;
  }
  *kind = BSTATE_ABSENT;
  return NULL;
}

int
chain_read (const struct view *v, struct layer *l, nbdkit_next *next,
            char *buf, uint64_t b, uint64_t boff, uint64_t len, int *err)
{
  const unsigned sh = sector_shift ();
  const uint64_t off0 = geom_offset (&S.g, b), end = boff + len;
  size_t i = 0;

  if (l && v && !v->live) {
    while (i < v->ntop && v->pinned[i] != l)
      i++;
    if (i == v->ntop) {
      *err = EIO;
      nbdkit_error ("snapshot: internal error: layer %" PRIu64 " is not "
                    "in the chain of the view", l->id);
      return -1;
    }
  }
  while (boff < end) {
    unsigned kind, k2;
    struct layer *p = provider (v, l, i, b, boff >> sh, &kind);
    uint64_t run_end = min64 (end, ((boff >> sh) + 1) << sh), n;

    /* Sectors from the same place make one read. */
    while (run_end < end &&
           provider (v, l, i, b, run_end >> sh, &k2) == p && k2 == kind)
      run_end = min64 (end, run_end + (UINT64_C (1) << sh));
    n = run_end - boff;
    if (p == NULL) {
      if (next->pread (next, buf, n, off0 + boff, 0, err) == -1)
        return -1;
    }
    else if (kind == BSTATE_ZERO)
      memset (buf, 0, n);
    else if (ldata_pread (p, buf, n, off0 + boff) == -1) {
      *err = errno;
      nbdkit_error ("snapshot: read layer %" PRIu64 ": %m", p->id);
      return -1;
    }
    buf += n;
    boff = run_end;
  }
  return 0;
}

int
active_write (uint64_t b, uint64_t boff, uint64_t n, const char *src,
              int *err)
{
  static const char zeroes[65536];
  struct layer *a = S.active;
  uint64_t off = geom_offset (&S.g, b) + boff;

  while (n > 0) {
    uint64_t len = src ? n : min64 (n, sizeof zeroes);
    if (ldata_pwrite (a, src ? src : zeroes, len, off) == -1) {
      *err = errno;
      nbdkit_error ("snapshot: write: %m");
      return -1;
    }
    if (src)
      src += len;
    off += len;
    n -= len;
  }
  return 0;
}

/* Sector s of block b, which the active layer lacks and the write
 * [boff, end) covers only in part: read it from below, patch in the
 * bytes written, write it whole.  *done: s was written.
 */
static int
edge_sector (nbdkit_next *next, uint64_t b, unsigned s, uint64_t boff,
             uint64_t end, const char *src, uint16_t have, bool *done,
             int *err)
{
  const unsigned sh = sector_shift ();
  uint64_t s0 = (uint64_t) s << sh;
  uint64_t s1 = min64 (s0 + (UINT64_C (1) << sh), geom_block_len (&S.g, b));
  uint64_t lo = boff > s0 ? boff : s0, hi = min64 (end, s1);
  char *tmp;
  int r;

  *done = false;
  if (((have >> s) & 1) || (boff <= s0 && end >= s1))
    return 0;                   /* held already, or written whole */
  tmp = malloc (s1 - s0);
  if (tmp == NULL) {
    *err = ENOMEM;
    nbdkit_error ("snapshot: write: out of memory");
    return -1;
  }
  r = chain_read (NULL, S.active, next, tmp, b, s0, s1 - s0, err);
  if (r == 0) {
    if (src)
      memcpy (tmp + (lo - s0), src + (lo - boff), hi - lo);
    else
      memset (tmp + (lo - s0), 0, hi - lo);
    r = active_write (b, s0, s1 - s0, tmp, err);
  }
  free (tmp);
  *done = r == 0;
  return r;
}

int
partial_write_locked (nbdkit_next *next, uint64_t b, uint64_t boff,
                      uint64_t n, const char *src, int *err)
{
  const unsigned sh = sector_shift ();
  struct layer *a = S.active;
  unsigned st = smap_get (&a->st, b);
  uint16_t have = st == BSTATE_PARTIAL ? pmask_get (a, b) : 0;
  uint16_t cover = cover_mask (boff, n), full = full_mask (b), m;
  unsigned sfirst = boff >> sh, slast = (boff + n - 1) >> sh;
  uint64_t end = boff + n, lo = boff, hi = end;
  bool head = false, tail = false;

  if (leaves_ready (a, b, 1) == -1 ||
      omap_leaf_make (&a->pmask, b >> LEAF_SHIFT) == NULL) {
    *err = ENOMEM;
    nbdkit_error ("snapshot: write: out of memory for the block maps");
    return -1;
  }
  /* The edge sectors first, then the rest as one pwrite. */
  if (edge_sector (next, b, sfirst, boff, end, src, have, &head, err) == -1)
    return -1;
  if (head)
    lo = min64 (end, (uint64_t) (sfirst + 1) << sh);
  if (slast != sfirst || !head) {
    if (edge_sector (next, b, slast, boff, end, src, have, &tail, err) == -1)
      return -1;
    if (tail)
      hi = (uint64_t) slast << sh;
  }
  if (lo < hi &&
      active_write (b, lo, hi - lo, src ? src + (lo - boff) : NULL,
                    err) == -1)
    return -1;

  /* Bytes first, then the mask, then the state (see partial.h).  A
   * whole-block write or zero that raced with us decided the state: we
   * leave it.
   */
  if (st == BSTATE_ABSENT) {
    omap_set (&a->pmask, b, cover);
    if (smap_cas (&a->st, b, BSTATE_ABSENT,
                  (cover & full) == full ? BSTATE_DATA : BSTATE_PARTIAL)) {
      __atomic_add_fetch (&a->held, 1, __ATOMIC_RELAXED);
      owner_set (&S.owner, b, a->slot);
    }
  }
  else {
    m = omap_or (&a->pmask, b, cover);
    if ((m & full) == full)
      smap_cas (&a->st, b, BSTATE_PARTIAL, BSTATE_DATA);
  }
  layer_touch (a);
  return 0;
}

int
partial_merge (struct layer *l, unsigned st, struct layer *c, unsigned cst,
               uint64_t b, char *buf, char *why, size_t whylen)
{
  const unsigned sh = sector_shift ();
  const uint64_t off0 = geom_offset (&S.g, b), bl = geom_block_len (&S.g, b);
  uint16_t full = full_mask (b);
  uint16_t lm = st == BSTATE_PARTIAL ? pmask_get (l, b) : full;
  uint16_t cm = cst == BSTATE_PARTIAL ? pmask_get (c, b) : 0;
  uint16_t add = lm & ~cm & full, m;
  unsigned s = 0, e;

  if (add == 0)
    return 0;
  if (omap_leaf_make (&c->pmask, b >> LEAF_SHIFT) == NULL) {
    snprintf (why, whylen, "out of memory for the map of layer %" PRIu64,
              c->id);
    errno = ENOMEM;
    return -1;
  }
  if (st == BSTATE_ZERO)
    memset (buf, 0, bl);
  while (s < PARTIAL_SECTORS) {
    uint64_t lo, hi;

    if (!((add >> s) & 1)) {
      s++;
      continue;
    }
    for (e = s; e < PARTIAL_SECTORS && ((add >> e) & 1); ++e)
      ;
    lo = (uint64_t) s << sh;
    hi = min64 ((uint64_t) e << sh, bl);
    if (st != BSTATE_ZERO &&
        ldata_pread (l, buf + lo, hi - lo, off0 + lo) == -1) {
      snprintf (why, whylen, "reading layer %" PRIu64 ": %s", l->id,
                strerror (errno));
      return -1;
    }
    if (ldata_pwrite (c, buf + lo, hi - lo, off0 + lo) == -1) {
      snprintf (why, whylen, "writing layer %" PRIu64 ": %s", c->id,
                strerror (errno));
      return -1;
    }
    s = e;
  }
  if (cst == BSTATE_ABSENT) {
    omap_set (&c->pmask, b, add);
    m = add;
    if (smap_cas (&c->st, b, BSTATE_ABSENT,
                  (m & full) == full ? BSTATE_DATA : BSTATE_PARTIAL))
      __atomic_add_fetch (&c->held, 1, __ATOMIC_RELAXED);
  }
  else {
    m = omap_or (&c->pmask, b, add);
    if ((m & full) == full)
      smap_cas (&c->st, b, BSTATE_PARTIAL, BSTATE_DATA);
  }
  return 0;
}
