/* nbdsnap tool: backup --until: were snapshot NAME and checkpoint NAME
 * made at one instant?
 *
 * `snapshot create --checkpoint` makes them so.  Two separate commands
 * (a checkpoint, then a snapshot of the same name, or the other way
 * round) do not: writes between the two are in one and not in the other,
 * and a backup of the interval ending at NAME, read from the snapshot,
 * would then restore to a disk that never was.  The server keeps no
 * record of which checkpoint was made with which snapshot, so this
 * compares what both say about the writes after them:
 *
 *   C1 = changed since checkpoint NAME (@cbt/NAME), read first
 *   S  = changed since snapshot NAME (@snapshot:diff/NAME)
 *   C2 = C1 read again, after S
 *
 * At one instant, every write after it is in both: each block of C1
 * overlaps S (a block changed since the checkpoint but not since the
 * snapshot was written between the two: the snapshot came later), and
 * each block of S overlaps C2 (else the snapshot came first).  C1 is read
 * before S and C2 after it, so writes going on meanwhile cannot make a
 * false difference, except a write the cbt filter has marked and the
 * snapshot filter not yet stored: S is read again before refusing.  A
 * write between the two that was later overwritten on both sides cannot
 * be seen; the creation times are compared too (backup-until.c).
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <libnbd.h>

#include "backup.h"

/* The changed runs (extents that are not a plain hole) of the change map
 * exportname, sorted.  0, 1 if it cannot be opened, -1 on a later error
 * (err set).
 */
static int
changed_runs (struct backup *b, const char *exportname, struct extent **out,
              size_t *n, char *err, size_t errlen)
{
  struct nbd_handle *h;
  size_t i, k = 0;
  int r = 0;

  *out = NULL;
  *n = 0;
  h = connect_export (b->uri, exportname, true, NULL, err, errlen);
  if (h == NULL)
    return 1;
  if (nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
    snprintf (err, errlen, "%s: no change map", exportname);
    r = -1;
  }
  else if (get_extents (h, b->size, out, n, err, errlen) == -1)
    r = -1;
  disconnect (h);
  if (r == 0) {
    for (i = 0; i < *n; ++i)
      if ((*out)[i].type != LIBNBD_STATE_HOLE)
        (*out)[k++] = (*out)[i];
    *n = k;
  }
  return r;
}

/* The first block (of bs bytes) of the runs a that overlaps none of the
 * runs c; UINT64_MAX if every one does.
 */
static uint64_t
first_uncovered (const struct extent *a, size_t na, uint64_t bs,
                 const struct extent *c, size_t nc, uint64_t size)
{
  size_t i, j = 0;
  uint64_t s, e, end;

  for (i = 0; i < na; ++i) {
    end = a[i].offset + a[i].length;
    for (s = a[i].offset / bs * bs; s < end; s += bs) {
      e = s + bs < size ? s + bs : size;
      while (j < nc && c[j].offset + c[j].length <= s)
        j++;
      if (j == nc || c[j].offset >= e)
        return s;
    }
  }
  return UINT64_MAX;
}

int
until_same_instant (struct backup *b, uint64_t gran, uint64_t snap_bs)
{
  char cx[256], sx[256], err[ERRLEN];
  struct extent *c1 = NULL, *s = NULL, *c2 = NULL;
  size_t n1 = 0, ns = 0, n2 = 0;
  uint64_t off = UINT64_MAX;
  int r, tries;
  const char *when = NULL;

  snprintf (cx, sizeof cx, "@cbt/%s", b->until);
  snprintf (sx, sizeof sx, "@snapshot:diff/%s", b->until);
  if ((r = changed_runs (b, cx, &c1, &n1, err, sizeof err)) == 0) {
    for (tries = 0; tries < 3; ++tries) {
      free (s);
      if (tries)
        nanosleep (&(struct timespec) { 0, 100000000 }, NULL);
      if ((r = changed_runs (b, sx, &s, &ns, err, sizeof err)) != 0)
        break;
      off = first_uncovered (c1, n1, gran, s, ns, b->size);
      if (off == UINT64_MAX)
        break;
    }
    if (r == 0 && off != UINT64_MAX)
      when = "after the checkpoint and before the snapshot";
  }
  if (r == 0 && when == NULL &&
      (r = changed_runs (b, cx, &c2, &n2, err, sizeof err)) == 0) {
    off = first_uncovered (s, ns, snap_bs, c2, n2, b->size);
    if (off != UINT64_MAX)
      when = "after the snapshot and before the checkpoint";
  }
  free (c1);
  free (s);
  free (c2);
  if (r == 1) {
    /* A view the server cannot give (e.g. the live disk was reverted to
     * an older snapshot): nothing to compare.
     */
    verbose ("cannot compare the changes since snapshot and checkpoint "
             "'%s' (%s): only their creation times were checked", b->until,
             err);
    return EXIT_OK;
  }
  if (r == -1)
    return fail (EXIT_FAILED, "%s", err);
  if (when)
    return fail (EXIT_FAILED, "snapshot '%s' does not hold the bytes of "
                 "checkpoint '%s': they were not made at one instant (offset "
                 "%" PRIu64 " was written %s); make both with 'nbdsnap "
                 "snapshot create URI NAME --checkpoint'", b->until,
                 b->until, off, when);
  return EXIT_OK;
}
