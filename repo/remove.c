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
  int fd = openat (parentfd, name, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  DIR *d;
  struct dirent *de;
  int first = 0;

  if (fd == -1)
    return errno == ENOENT ? 0 : -1;
  d = fdopendir (fd);
  if (d == NULL) {
    close (fd);
    return -1;
  }
  /* Go on after an error (remove what can be), report the first. */
  while ((de = readdir (d)) != NULL) {
    if (strcmp (de->d_name, ".") == 0 || strcmp (de->d_name, "..") == 0)
      continue;
    if (unlinkat (fd, de->d_name, 0) == -1) {
      if (errno == EISDIR) {
        if (remove_flat_dir (fd, de->d_name) == -1 && first == 0)
          first = errno;
      }
      else if (errno != ENOENT && first == 0)
        first = errno;
    }
  }
  closedir (d);
  if (unlinkat (parentfd, name, AT_REMOVEDIR) == -1 || first) {
    if (first)
      errno = first;
    return -1;
  }
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
  int count = 0, first = 0;
  char name[256], bad[256] = "";

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
      if (faccessat (r->pointsfd, point, F_OK, AT_SYMLINK_NOFOLLOW) == -1) {
        if (renameat (r->pointsfd, name, r->pointsfd, point) == 0) {
          count++;
          continue;
        }
        if (first == 0) {
          first = errno;
          snprintf (bad, sizeof bad, "%s", name);
        }
        continue;               /* never remove the last copy */
      }
    }
    if (remove_flat_dir (r->pointsfd, name) == 0)
      count++;
    else if (first == 0) {
      first = errno;
      snprintf (bad, sizeof bad, "%s", name);
    }
  }
  closedir (d);
  if (count > 0 && fsync_dirfd (r->pointsfd) == -1 && first == 0) {
    first = errno;
    snprintf (bad, sizeof bad, "(sync of the directory)");
  }
  if (first) {
    seterr (err, errlen, "cannot clean up %s/points/%s, left by an "
            "interrupted run: %s", r->dir, bad, strerror (first));
    errno = first;
    return -1;
  }
  return count;
}

int
remove_point (struct repo *r, const char *point, char *err, size_t errlen)
{
  char del[REPO_NAME_MAX + 32];
  int e;

  snprintf (del, sizeof del, ".del-%s-%ld", point, (long) getpid ());
  if (renameat (r->pointsfd, point, r->pointsfd, del) == -1) {
    seterr (err, errlen, "cannot remove %s/points/%s: %m", r->dir, point);
    return -1;
  }
  if (fsync_dirfd (r->pointsfd) == -1) {
    /* Not durable: put it back, so that the operation fails whole.  If
     * that fails too, the point is gone now but may come back after a
     * crash: its files stay (removing them could reach the disk before
     * the rename), for the cleanup of a later run.
     */
    e = errno;
    if (renameat (r->pointsfd, del, r->pointsfd, point) == 0) {
      seterr (err, errlen, "cannot sync %s/points after taking point %s "
              "out: %s; it was put back", r->dir, point,
              strerror (e));
      errno = e;
      return -1;
    }
    seterr (err, errlen, "point %s is removed from %s/points, but that "
            "directory cannot be synced (%s): after a crash the point may "
            "come back; check the disk, then run 'nbdsnap verify %s'",
            point, r->dir, strerror (e), r->dir);
    errno = e;
    return -2;
  }
  if (remove_flat_dir (r->pointsfd, del) == -1) {
    seterr (err, errlen, "point %s is removed, but its files in "
            "%s/points/%s could not all be deleted (%m); the next backup "
            "or verify deletes them", point, r->dir, del);
    return -2;
  }
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
  int n, fd = -1, ret;

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
  /* A backup in progress on top of it counts as a child too. */
  if (point_claim (r, point, "it cannot be deleted", &fd, err, errlen) == -1)
    return -1;
  ret = remove_point (r, point, err, errlen);
  close (fd);
  return ret == 0 ? 0 : -1;
}
