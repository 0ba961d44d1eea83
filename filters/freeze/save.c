/* nbdsnap freeze filter: copy-before-write on the live disk.
 *
 * Before a write, zero or trim of the live disk passes down, the frozen
 * content of each block it touches is copied into every open point that
 * has not saved that block yet.  The copy never fails the write: a point
 * that cannot save (read error below, scratch full) is aborted instead,
 * and its backup reports it.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "fileio.h"
#include "lockscope.h"
#include "points-internal.h"

void points_enter (void) { gate_enter (&P.gate); }
void points_leave (void) { gate_leave (&P.gate); }

/* Save block b (read into buf through next if any point needs it) into
 * every point lacking it (stripe lock of b and P.rw held).  buf is
 * allocated on first need.  Sets *failed if it aborted a point.
 */
static void
save_block (nbdkit_next *next, uint64_t b, char **buf, bool *failed)
{
  uint64_t bl = geom_block_len (&P.g, b);
  bool need = false, have = false;
  size_t i;
  int err = 0;

  for (i = 0; i < P.npts; ++i)
    if (!point_failed (P.pts[i]) && !bitset_get_atomic (&P.pts[i]->saved, b))
      need = true;
  if (!need)
    return;
  if (*buf == NULL)
    *buf = malloc (P.g.block_size);
  if (*buf && next->pread (next, *buf, bl, geom_offset (&P.g, b), 0,
                           &err) == 0)
    have = true;
  for (i = 0; i < P.npts; ++i) {
    struct point *p = P.pts[i];

    if (point_failed (p) || bitset_get_atomic (&p->saved, b))
      continue;
    if (!have) {
      point_fail (p, "cannot read the disk below to save a block",
                  *buf ? err : ENOMEM);
      *failed = true;
    }
    else if (P.max_size &&
             __atomic_add_fetch (&p->used, bl, __ATOMIC_RELAXED)
             > P.max_size) {
      /* Reserve first, so parallel writers cannot overshoot. */
      point_fail (p, "scratch space reached freeze-max-size", ENOSPC);
      *failed = true;
    }
    else if (scratch_pwrite (p, *buf, bl, geom_offset (&P.g, b)) == -1) {
      point_fail (p, "cannot write scratch space in freeze-dir",
                  errno ? errno : ENOSPC);
      *failed = true;
    }
    else {
      if (!P.max_size)
        __atomic_add_fetch (&p->used, bl, __ATOMIC_RELAXED);
      bitset_set_atomic (&p->saved, b);
    }
  }
}

void
points_save (nbdkit_next *next, uint64_t offset, uint64_t count)
{
  uint64_t b, b1;
  char *buf = NULL;
  bool failed = false;

  if (count == 0 || !points_any ())
    return;                     /* no backup open: nothing to do */
  {
    ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&P.rw);
    b1 = geom_block (&P.g, offset + count - 1);
    for (b = geom_block (&P.g, offset); b <= b1; ++b) {
      bool f = false;
      ACQUIRE_LOCK_FOR_CURRENT_SCOPE (stripe_of (&P.stripes, b));
      save_block (next, b, &buf, &f);
      failed |= f;
    }
  }
  free (buf);
  if (failed) {
    /* With the list held for writing no writer is saving: the scratch
     * space of the points aborted above can be given back for good.
     */
    size_t i;
    ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&P.rw);
    for (i = 0; i < P.npts; ++i)
      point_release_scratch (P.pts[i]);
  }
}
