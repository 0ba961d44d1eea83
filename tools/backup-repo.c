/* nbdsnap tool: backup: the repository.
 *
 * An existing repository is opened (leftover temporary points of
 * interrupted backups removed) and decides between full and incremental.
 * A missing or empty directory gets a new repository, but only once the
 * server has answered, so that a backup that cannot even start leaves
 * nothing behind; if that first backup then fails, the repository (and
 * the directory, if it made it) is removed again.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup.h"

/* Is dir missing, or an empty directory? */
static bool
dir_missing_or_empty (const char *dir)
{
  DIR *d;
  struct dirent *e;
  bool empty = true;

  d = opendir (dir);
  if (d == NULL)
    return errno == ENOENT;
  while ((e = readdir (d)) != NULL)
    if (strcmp (e->d_name, ".") && strcmp (e->d_name, "..")) {
      empty = false;
      break;
    }
  closedir (d);
  return empty;
}

/* Open the repository; the point name must be free; choose full or
 * incremental (mode 0: incremental if there is a point) and the base
 * point (--since, or the newest).
 */
static int
open_existing (struct backup *b, int mode)
{
  char err[ERRLEN];
  struct repo_point_info *pts = NULL, info;
  size_t n = 0;
  int r;

  b->repo = open_repo (b->repodir);
  if (b->repo == NULL)
    return EXIT_FAILED;
  b->bs = repo_block_size (b->repo);
  r = repo_clean_tmp (b->repo, err, sizeof err);
  if (r > 0)
    verbose ("removed %d leftover temporary point(s)", r);
  else if (r < 0)
    msg ("warning: %s", err);

  /* A generated name (two backups in one second) takes the first free
   * suffix; a name the user chose is never changed.
   */
  if (b->name_generated) {
    size_t len = strlen (b->name);
    int k;
    for (k = 2; k < 100 &&
           repo_point_get (b->repo, b->name, &info, err, sizeof err) == 0;
         ++k)
      snprintf (b->name + len, sizeof b->name - len, "-%d", k);
  }
  if (repo_point_get (b->repo, b->name, &info, err, sizeof err) == 0)
    return fail (EXIT_FAILED, "%s: a point named '%s' already exists "
                 "(choose another --name)", b->repodir, b->name);
  if (repo_list (b->repo, &pts, &n, err, sizeof err) == -1)
    return fail (EXIT_FAILED, "%s", err);
  if (mode == 0)
    mode = n ? 1 : -1;
  b->incremental = mode == 1;
  if (b->incremental) {
    if (b->since[0] == '\0') {
      if (n == 0) {
        free (pts);
        return fail (EXIT_FAILED, "%s has no restore point to base an "
                     "incremental backup on: a full backup is needed "
                     "(nbdsnap backup --full)", b->repodir);
      }
      snprintf (b->since, sizeof b->since, "%s", pts[n - 1].name);
    }
    else if (repo_point_get (b->repo, b->since, &info, err,
                             sizeof err) == -1) {
      free (pts);
      return fail (EXIT_FAILED, "%s has no restore point '%s' to base the "
                   "incremental backup on (%s): a full backup is needed "
                   "(nbdsnap backup --full)", b->repodir, b->since, err);
    }
  }
  free (pts);
  return EXIT_OK;
}

/* A missing or empty directory is initialized later (init_repo_now),
 * for a full backup; anything else must be a repository.
 */
int
open_backup_repo (struct backup *b, int mode, uint32_t init_bs)
{
  if (dir_missing_or_empty (b->repodir)) {
    if (mode == 1)
      return fail (EXIT_FAILED, "%s: no repository there: a full backup "
                   "is needed (nbdsnap backup --full)", b->repodir);
    /* Initialized by do_backup once the server has answered, so that a
     * backup that cannot even start leaves nothing behind.
     */
    b->need_init = true;
    b->dir_was_missing = access (b->repodir, F_OK) == -1;
    b->init_bs = init_bs;
    b->incremental = false;
    return EXIT_OK;
  }
  if (init_bs)
    msg ("note: --block-size is ignored: %s exists", b->repodir);
  return open_existing (b, mode);
}

/* The server has answered: create the repository now. */
int
init_repo_now (struct backup *b)
{
  char err[ERRLEN];

  if (repo_init (b->repodir, b->init_bs, err, sizeof err) == -1) {
    /* Written but not synced: it is there, and this run made it. */
    char e2[ERRLEN];
    if ((b->repo = repo_open (b->repodir, e2, sizeof e2)) != NULL)
      b->made_repo = true;
    return fail (EXIT_FAILED, "%s", err);
  }
  verbose ("initialized repository %s", b->repodir);
  b->need_init = false;
  b->made_repo = true;
  return open_existing (b, -1);
}

/* The first backup failed: leave the directory as it was. */
void
remove_made_repo (struct backup *b)
{
  char err[ERRLEN];

  if (!b->made_repo || b->repo == NULL)
    return;
  if (repo_remove_empty (b->repo, b->dir_was_missing, err, sizeof err) == 0)
    msg ("removed the repository %s this backup had created", b->repodir);
  else
    msg ("warning: %s", err);
}
