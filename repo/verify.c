/* nbdsnap repository: verify (every point's files and stored blocks,
 * every chain).
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "repo-internal.h"

/* Where problems go, and how many there were. */
struct vctx {
  void (*report) (const char *line, void *opaque);
  void *opaque;
  int problems;
  bool stopped;                 /* out of memory: verify cannot go on */
};

/* Did the last failure mean "cannot check" rather than "damaged"?  Out
 * of memory says nothing about the repository: verification stops and
 * fails instead of reporting damage that is not there.
 */
static bool
cannot_check (struct vctx *v, const char *err)
{
  (void) err;
  if (errno != ENOMEM)
    return false;
  v->stopped = true;
  return true;
}

/* Report one problem. */
static void __attribute__ ((format (printf, 2, 3)))
vreport (struct vctx *v, const char *fmt, ...)
{
  char line[1024];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (line, sizeof line, fmt, ap);
  va_end (ap);
  if (v->report)
    v->report (line, v->opaque);
  v->problems++;
}

/* Check one point's own files and every stored block. */
static void
verify_point (struct repo *r, const char *name, struct vctx *v)
{
  struct member mb;
  char err[1024];
  struct scratch *s;
  struct pool pool;
  uint64_t i;

  int tries, dirfd, there;

  if (v->stopped)
    return;
  /* Verify takes no lock: a point deleted, or replaced by a merge,
   * while it is loaded is no damage.  Load it again if its directory
   * changed meanwhile; skip it if it is gone.
   */
  for (tries = 0; ; ++tries) {
    dirfd = openat (r->pointsfd, name,
                    O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
    if (dirfd == -1 && errno == ENOENT)
      return;                   /* deleted since it was listed */
    if (member_load (r, name, &mb, err, sizeof err) == 0)
      break;
    there = dirfd >= 0 ? point_still_there (r, name, dirfd) : 1;
    if (dirfd >= 0)
      close (dirfd);
    if (there == 0 && tries < 3)
      continue;
    if (there == 0 && faccessat (r->pointsfd, name, F_OK,
                                 AT_SYMLINK_NOFOLLOW) == -1)
      return;
    if (!cannot_check (v, err))
      vreport (v, "%s", err);
    return;
  }
  if (dirfd >= 0)
    close (dirfd);
  pool_init (&pool, r->block_size);
  s = pool_get (&pool);
  if (s == NULL) {
    errno = ENOMEM;
    cannot_check (v, "out of memory");
    goto out;
  }
  for (i = 0; i < mb.m.blocks && !v->stopped; ++i) {
    const uint8_t *e = member_entry (&mb, i);
    if (e[ENTRY_KIND] != KIND_DATA)
      continue;
    if (member_read_entry (r, &mb, e, s, s->b, NULL, err, sizeof err) == -1
        && !cannot_check (v, err))
      vreport (v, "%s", err);
  }
 out:
  if (s)
    pool_put (&pool, s);
  pool_destroy (&pool);
  member_unload (&mb);
}

/* Check that m's chain is complete (every parent among the n manifests
 * of all, down to a full point, no loops).
 */
static void
verify_chain (const struct manifest *all, size_t n,
              const struct manifest *m, struct vctx *v)
{
  const struct manifest *cur = m;
  size_t depth = 0, i;

  while (!cur->full) {
    const struct manifest *p = NULL;
    for (i = 0; i < n; ++i)
      if (strcmp (all[i].name, cur->parent) == 0)
        p = &all[i];
    if (p == NULL) {
      vreport (v, "restore point %s: its chain is broken: %s (parent of %s) "
               "is missing or damaged", m->name, cur->parent, cur->name);
      return;
    }
    if (++depth > n) {
      vreport (v, "restore point %s: its chain loops", m->name);
      return;
    }
    cur = p;
  }
}

/* repo_verify of one point: the point and its ancestors. */
static int
verify_one (struct repo *r, const char *point, struct vctx *v)
{
  char name[REPO_NAME_MAX + 1], err[1024];
  struct manifest *all = NULL, m;
  size_t n = 0, depth = 0;

  if (!repo_name_valid (point, NULL, 0)) {
    vreport (v, "invalid restore point name '%s'", point);
    return -1;
  }
  snprintf (name, sizeof name, "%s", point);
  if (manifest_all (r, &all, &n, true, NULL, 0) == -1)
    return -1;
  free (all);                   /* only their number, n, is used */
  for (;;) {
    if (manifest_read (r, name, &m, err, sizeof err) == -1) {
      if (cannot_check (v, err)) {
        errno = ENOMEM;
        return -1;
      }
      if (depth == 0 && errno == ENOENT) {
        vreport (v, "%s", err);
        return -1;              /* unknown point: not a verify result */
      }
      if (depth > 0 && errno == ENOENT)
        vreport (v, "the chain of restore point %s is broken: %s is "
                 "missing", point, name);
      else
        vreport (v, "%s", err);
      break;
    }
    verify_point (r, name, v);
    if (v->stopped) {
      errno = ENOMEM;
      return -1;
    }
    if (m.full)
      break;
    if (++depth > n) {
      vreport (v, "the chain of restore point %s loops", point);
      break;
    }
    snprintf (name, sizeof name, "%s", m.parent);
  }
  return v->problems;
}

int
repo_verify (struct repo *r, const char *point,
             void (*report) (const char *line, void *opaque), void *opaque)
{
  struct vctx v = { report, opaque, 0, false };
  struct manifest *all = NULL;
  size_t n = 0, i;
  DIR *d;
  struct dirent *de;

  if (point)
    return verify_one (r, point, &v);

  /* All points: every directory, then every chain. */
  d = points_opendir (r);
  if (d == NULL)
    return -1;
  while ((de = readdir (d)) != NULL) {
    if (de->d_name[0] == '.')
      continue;
    if (!repo_name_valid (de->d_name, NULL, 0)) {
      vreport (&v, "%s/points/%s is not a restore point (invalid name)",
               r->dir, de->d_name);
      continue;
    }
    verify_point (r, de->d_name, &v);
  }
  closedir (d);
  if (v.stopped) {
    errno = ENOMEM;
    return -1;
  }
  if (manifest_all (r, &all, &n, true, NULL, 0) == -1)
    return -1;
  for (i = 0; i < n; ++i)
    verify_chain (all, n, &all[i], &v);
  free (all);
  return v.problems;
}
