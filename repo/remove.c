/* nbdsnap repository: removing points (delete) and what crashed
 * processes left under points/ (clean_tmp).
 *
 * docs/repository-format.md, 10.4 and 11.2.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "repo-internal.h"

int
remove_flat_dir (int parentfd, const char *name)
{
  int fd = openat (parentfd, name, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  DIR *d;
  struct dirent *de;

  if (fd == -1)
    return errno == ENOENT ? 0 : -1;
  d = fdopendir (fd);
  if (d == NULL) {
    close (fd);
    return -1;
  }
  while ((de = readdir (d)) != NULL) {
    if (strcmp (de->d_name, ".") == 0 || strcmp (de->d_name, "..") == 0)
      continue;
    if (unlinkat (fd, de->d_name, 0) == -1 && errno == EISDIR)
      remove_flat_dir (fd, de->d_name);
  }
  closedir (d);
  if (unlinkat (parentfd, name, AT_REMOVEDIR) == -1)
    return -1;
  return 0;
}

/* Is process pid (of a .tmp-NAME-PID name) still running? */
static bool
pid_alive (long pid)
{
  if (pid <= 0)
    return false;
  if (pid == (long) getpid ())
    return true;
  return kill (pid, 0) == 0 || errno == EPERM;
}

int
repo_clean_tmp (struct repo *r, char *err, size_t errlen)
{
  POINTS_LOCKED struct repo *locked = points_lock (r, err, errlen);
  DIR *d;
  struct dirent *de;
  int count = 0;
  char name[256];

  if (locked == NULL)
    return -1;
  d = points_opendir (r);
  if (d == NULL) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
    return -1;
  }
  while ((de = readdir (d)) != NULL) {
    const char *dash;
    long pid;
    bool old = strncmp (de->d_name, ".old-", 5) == 0;
    if (strncmp (de->d_name, ".tmp-", 5) != 0 &&
        strncmp (de->d_name, ".del-", 5) != 0 && !old)
      continue;
    dash = strrchr (de->d_name, '-');
    if (dash == NULL || dash < de->d_name + 5)
      continue;
    pid = strtol (dash + 1, NULL, 10);
    if (pid_alive (pid))
      continue;
    snprintf (name, sizeof name, "%s", de->d_name);
    if (old) {
      /* An interrupted merge without RENAME_EXCHANGE: if the point is
       * gone, this is its last complete version.
       */
      char point[256];
      size_t l = dash - (de->d_name + 5);
      snprintf (point, sizeof point, "%.*s", (int) l, de->d_name + 5);
      if (faccessat (r->pointsfd, point, F_OK, AT_SYMLINK_NOFOLLOW) == -1 &&
          renameat (r->pointsfd, name, r->pointsfd, point) == 0) {
        count++;
        continue;
      }
    }
    if (remove_flat_dir (r->pointsfd, name) == 0)
      count++;
  }
  closedir (d);
  fsync (r->pointsfd);
  return count;
}

int
remove_point (struct repo *r, const char *point)
{
  char del[REPO_NAME_MAX + 32];

  snprintf (del, sizeof del, ".del-%s-%ld", point, (long) getpid ());
  if (renameat (r->pointsfd, point, r->pointsfd, del) == -1)
    return -1;
  fsync (r->pointsfd);
  remove_flat_dir (r->pointsfd, del);
  return 0;
}

int
dependents (struct repo *r, const char *point, char *out, size_t outlen)
{
  struct manifest *all;
  size_t n, i, l = 0;
  int count = 0;

  out[0] = '\0';
  if (manifest_all (r, &all, &n, true, NULL, 0) == -1)
    return -1;
  for (i = 0; i < n; ++i) {
    /* A point naming itself as its parent is damaged, not its own
     * child: it can be deleted.
     */
    if (all[i].full || strcmp (all[i].parent, point) != 0 ||
        strcmp (all[i].name, point) == 0)
      continue;
    if (l < outlen)
      l += snprintf (out + l, outlen - l, "%s%s", count ? ", " : "",
                     all[i].name);
    count++;
  }
  free (all);
  return count;
}

int
repo_delete (struct repo *r, const char *point, char *err, size_t errlen)
{
  POINTS_LOCKED struct repo *locked = NULL;
  char why[128], deps[512];
  int n;

  if (!repo_name_valid (point, why, sizeof why)) {
    seterr (err, errlen, "invalid restore point name '%s': %s", point, why);
    errno = EINVAL;
    return -1;
  }
  if ((locked = points_lock (r, err, errlen)) == NULL)
    return -1;
  if (faccessat (r->pointsfd, point, F_OK, AT_SYMLINK_NOFOLLOW) == -1) {
    seterr (err, errlen, "restore point %s does not exist in %s", point,
            r->dir);
    errno = ENOENT;
    return -1;
  }
  n = dependents (r, point, deps, sizeof deps);
  if (n == -1) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
    return -1;
  }
  if (n > 0) {
    if (n == 1)
      seterr (err, errlen, "restore point %s is the parent of %s: merge %s "
              "into it first ('nbdsnap merge %s %s') or delete %s first",
              point, deps, deps, r->dir, deps, deps);
    else
      seterr (err, errlen, "restore point %s is the parent of %s: merge "
              "or delete those first", point, deps);
    errno = EBUSY;
    return -1;
  }
  if (remove_point (r, point) == -1) {
    seterr (err, errlen, "cannot remove %s/points/%s: %m", r->dir, point);
    return -1;
  }
  return 0;
}
