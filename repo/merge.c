/* nbdsnap repository: merge (fold an incremental point into its parent).
 *
 * docs/repository-format.md, 10.3: a combined point with the child's
 * name is written like a backup from the two points' indexes (stored
 * bytes copied as they are, after checking them), then exchanged with
 * the child; the parent goes if no other point depends on it.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"
#include "repo-internal.h"

/* The error of a writer, into err. */
static void
merge_werr (struct repo_writer *w, char *err, size_t errlen)
{
  const char *we = repo_writer_error (w);

  seterr (err, errlen, "%s", we ? we : "cannot write the merged point");
}

/* Copy one entry e of member mb to the writer unchanged (a data entry's
 * stored bytes after checking them).  -1 with err set.
 */
static int
merge_copy (struct repo_writer *w, const struct member *mb, const uint8_t *e,
            struct scratch *s, char *err, size_t errlen)
{
  struct rec rec = { .block = get_le64 (e + ENTRY_BLOCK),
                     .kind = e[ENTRY_KIND],
                     .slen = get_le32 (e + ENTRY_SLEN) };
  const void *stored = NULL;

  if (e[ENTRY_KIND] == KIND_DATA) {
    uint64_t off = get_le64 (e + ENTRY_OFF);
    /* Check the block before copying it: never propagate damage. */
    if (member_read_entry (w->r, mb, e, s, s->b, NULL, err, errlen) == -1)
      return -1;
    if (pread_exact (mb->datafd, s->a, rec.slen, off) == -1) {
      seterr (err, errlen, "cannot read %s/points/%s/data: %m", w->r->dir,
              mb->m.name);
      return -1;
    }
    memcpy (rec.sha, e + ENTRY_SHA, SHA256_LEN);
    stored = s->a;
  }
  if (writer_append (w, &rec, 1, stored) == -1) {
    merge_werr (w, err, errlen);
    return -1;
  }
  return 0;
}

/* Give w the entries of the point combining child c and its parent p
 * (the table of 10.3 step 3); rd reads c.  -1 with err set.
 */
static int
merge_blocks (struct repo_writer *w, const struct member *c,
              const struct member *p, struct repo_reader *rd,
              struct scratch *s, char *err, size_t errlen)
{
  uint32_t bs = w->g.block_size;
  uint64_t nb = c->g.nblocks, b, ci = 0, pi = 0, special_from;

  /* Walk both sorted indexes.  Blocks in neither need attention only
   * from special_from on: where the parent's smaller disk hid the
   * grandparent's data (which the combined point must hide explicitly).
   */
  special_from = !w->m.full && p->m.disk_size < c->m.disk_size
    ? p->m.disk_size / bs : UINT64_MAX;
  for (b = 0; b < nb; ++b) {
    const uint8_t *ce = ci < c->m.blocks ? member_entry (c, ci) : NULL;
    const uint8_t *pe;
    uint64_t cb = ce ? get_le64 (ce + ENTRY_BLOCK) : UINT64_MAX, pb, next;

    while (pi < p->m.blocks &&
           get_le64 (member_entry (p, pi) + ENTRY_BLOCK) < b)
      pi++;
    pe = pi < p->m.blocks ? member_entry (p, pi) : NULL;
    pb = pe ? get_le64 (pe + ENTRY_BLOCK) : UINT64_MAX;
    next = min64 (cb, pb);
    if (b < special_from && special_from < next)
      next = special_from;
    if (b < special_from && next > b)
      b = next;
    if (b >= nb)
      break;

    if (cb == b) {                      /* the child's block wins */
      if (merge_copy (w, c, ce, s, err, errlen) == -1)
        return -1;
      ci++;
    }
    else if (b * bs >= p->m.disk_size) { /* beyond the parent's disk */
      if (!w->m.full && repo_writer_put_zero (w, b) == -1) {
        merge_werr (w, err, errlen);
        return -1;
      }
    }
    else if (pb == b && (pe[ENTRY_KIND] == KIND_ZERO ||
                         geom_block_len (&p->g, b) ==
                         geom_block_len (&c->g, b))) {
      if (merge_copy (w, p, pe, s, err, errlen) == -1)
        return -1;
    }
    else if (pb == b || p->m.disk_size % bs != 0) {
      /* A block cut by a size change: rebuild it as the child sees it. */
      if (repo_reader_read (rd, b, s->b, err, errlen) == -1)
        return -1;
      if (repo_writer_put_data (w, b, s->b,
                                geom_block_len (&c->g, b)) == -1) {
        merge_werr (w, err, errlen);
        return -1;
      }
    }
  }
  return 0;
}

/* The manifest of the point combining child c and its parent p. */
static void
merge_manifest (const struct manifest *c, const struct manifest *p,
                struct manifest *m)
{
  memset (m, 0, sizeof *m);
  strcpy (m->name, c->name);
  strcpy (m->checkpoint, c->checkpoint);
  m->full = p->full;
  strcpy (m->kind, p->kind);
  strcpy (m->parent, p->parent);
  strcpy (m->since, p->since);
  m->disk_size = c->disk_size;
  m->compressed = c->compressed || p->compressed;
  m->created = c->created;
  m->sequence = c->sequence;
}

int
repo_merge (struct repo *r, const char *point, char *err, size_t errlen)
{
  POINTS_LOCKED struct repo *locked = NULL;
  struct member c, p;
  struct manifest m;
  struct repo_writer *w = NULL;
  struct repo_reader *rd = NULL;
  struct scratch *s = NULL;
  char why[128], deps[512];
  bool p_loaded = false;
  int ret = -1, cfd = -1, pfd = -1, ndeps;

  if (!repo_name_valid (point, why, sizeof why)) {
    seterr (err, errlen, "invalid restore point name '%s': %s", point, why);
    errno = EINVAL;
    return -1;
  }
  /* Hold the lock throughout: a concurrent merge or delete must not
   * remove the grandparent the combined point will name as its parent.
   */
  if ((locked = points_lock (r, err, errlen)) == NULL)
    return -1;
  if (member_load (r, point, &c, err, errlen) == -1)
    return -1;
  /* The child is replaced: a backup in progress on top of it would
   * commit onto a point that is not the one it read.
   */
  if (point_claim (r, point, "merging would replace it", &cfd, err,
                   errlen) == -1)
    goto out;
  if (c.m.full) {
    seterr (err, errlen, "restore point %s is a full backup: there is no "
            "parent to merge it into", point);
    errno = EINVAL;
    goto out;
  }
  if (member_load (r, c.m.parent, &p, err, errlen) == -1) {
    size_t l = strlen (err);
    snprintf (err + l, errlen - l, " (parent of %s)", point);
    goto out;
  }
  p_loaded = true;
  /* The parent is removed unless another point depends on it: then a
   * backup in progress on top of it must not lose it either.
   */
  ndeps = dependents (r, p.m.name, deps, sizeof deps);
  if (ndeps == -1) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
    goto out;
  }
  if (ndeps <= 1 &&
      point_claim (r, p.m.name, "merging would remove it", &pfd, err,
                   errlen) == -1)
    goto out;
  /* A reader of the child resolves the cases where sizes cut blocks. */
  rd = repo_reader_open (r, point, err, errlen);
  if (rd == NULL)
    goto out;

  merge_manifest (&c.m, &p.m, &m);
  w = writer_start (r, &m, err, errlen);
  if (w == NULL)
    goto out;
  w->merge = true;
  s = pool_get (&w->pool);
  if (s == NULL) {
    seterr (err, errlen, "out of memory");
    goto out;
  }
  if (merge_blocks (w, &c, &p, rd, s, err, errlen) == -1)
    goto out;
  pool_put (&w->pool, s);
  s = NULL;

  /* Commit swaps the combined point in for the child (and frees w).
   * If that is not durable, the parent stays: it is a valid point in
   * its own right, the old child may come back after a crash.
   */
  ret = repo_writer_commit (w, err, errlen);
  w = NULL;
  if (ret < 0) {
    if (ret == -2) {
      size_t l = strlen (err);
      snprintf (err + l, errlen - l, "; %s was kept", p.m.name);
    }
    ret = -1;
    goto out;
  }

  /* The parent goes once nothing else depends on it. */
  ndeps = dependents (r, p.m.name, deps, sizeof deps);
  if (ndeps == -1) {
    seterr (err, errlen, "point %s is merged, but whether its old parent "
            "%s is still needed cannot be told (cannot read %s/points: "
            "%m); it was kept", point, p.m.name, r->dir);
    ret = -1;
  }
  else if (ndeps == 0) {
    char e2[512];
    int rr = remove_point (r, p.m.name, e2, sizeof e2);
    if (rr < 0) {
      seterr (err, errlen, "point %s is merged (restoring it gives the same "
              "disk), but removing its old parent %s failed: %s", point,
              p.m.name, e2);
      ret = -1;
    }
  }

 out:
  if (cfd >= 0)
    close (cfd);
  if (pfd >= 0)
    close (pfd);
  if (s)
    pool_put (&w->pool, s);
  if (w)
    repo_writer_abort (w);
  repo_reader_close (rd);
  member_unload (&c);
  if (p_loaded)
    member_unload (&p);
  if (ret == -1 && errno == 0)
    errno = EIO;
  return ret;
}
