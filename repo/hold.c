/* nbdsnap repository: holds on points (a backup in progress holds its
 * parent).
 *
 * A backup writing an incremental point holds a shared flock(2) on its
 * parent's directory, points/PARENT, from repo_writer_begin to the end
 * of the writer (commit or abort; the kernel drops it if the process
 * dies).  Delete and merge, which remove or replace points, first claim
 * each point they would remove or replace with an exclusive,
 * non-blocking flock on its directory: a held point is refused with the
 * pid of the backup holding it.  Both sides act under the points/ lock,
 * so a hold is never taken on a point that is being removed
 * (docs/repository-format.md, 10.5).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "repo-internal.h"

/* Open points/POINT (a directory: what hold and claim lock).  -1 after
 * seterr.
 */
static int
open_point_dir (struct repo *r, const char *point, char *err, size_t errlen)
{
  int fd = openat (r->pointsfd, point,
                   O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);

  if (fd == -1) {
    if (errno == ENOENT)
      seterr (err, errlen, "restore point %s does not exist in %s", point,
              r->dir);
    else
      seterr (err, errlen, "cannot open %s/points/%s: %m", r->dir, point);
  }
  return fd;
}

int
point_hold (struct repo *r, const char *point, int *fdp, char *err,
            size_t errlen)
{
  int fd = open_point_dir (r, point, err, errlen);

  if (fd == -1)
    return -1;
  /* Under the points/ lock nobody holds it exclusively (delete and
   * merge claim points only under that lock): never blocks.
   */
  while (flock (fd, LOCK_SH|LOCK_NB) == -1) {
    int e = errno;
    if (e == EINTR)
      continue;
    seterr (err, errlen, "cannot hold restore point %s (the parent of this "
            "backup) in %s: %s", point, r->dir,
            e == EWOULDBLOCK ? "it is being removed or merged" :
            strerror (e));
    close (fd);
    errno = e == EWOULDBLOCK ? EBUSY : e;
    return -1;
  }
  *fdp = fd;
  return 0;
}

/* The pid of a process holding a flock on fd's file (from /proc/locks),
 * or -1 if none is found.
 */
static long
holder_pid (int fd)
{
  struct stat st;
  FILE *f;
  char line[256];
  long found = -1;

  if (fstat (fd, &st) == -1 || (f = fopen ("/proc/locks", "re")) == NULL)
    return -1;
  while (found == -1 && fgets (line, sizeof line, f)) {
    unsigned maj, mnr;
    unsigned long ino;
    long pid;
    /* "N: FLOCK  ADVISORY  READ  PID MAJ:MIN:INODE START END"; lines
     * of waiters ("N: -> FLOCK ...") are not holders.
     */
    if (strstr (line, "->") != NULL ||
        sscanf (line, "%*d: FLOCK %*s %*s %ld %x:%x:%lu", &pid, &maj, &mnr,
                &ino) != 4)
      continue;
    if (ino == (unsigned long) st.st_ino && maj == major (st.st_dev) &&
        mnr == minor (st.st_dev))
      found = pid;
  }
  fclose (f);
  return found;
}

int
point_claim (struct repo *r, const char *point, const char *why, int *fdp,
             char *err, size_t errlen)
{
  int fd = open_point_dir (r, point, err, errlen);

  if (fd == -1)
    return -1;
  while (flock (fd, LOCK_EX|LOCK_NB) == -1) {
    int e = errno;
    long pid;
    if (e == EINTR)
      continue;
    if (e == EWOULDBLOCK) {
      char p[64] = "";
      pid = holder_pid (fd);
      if (pid > 0)
        snprintf (p, sizeof p, " (pid %ld)", pid);
      seterr (err, errlen, "restore point %s is the parent of a backup in "
              "progress%s: %s; try again when that backup has finished",
              point, p, why);
      e = EBUSY;
    }
    else
      seterr (err, errlen, "cannot lock %s/points/%s: %s", r->dir, point,
              strerror (e));
    close (fd);
    errno = e;
    return -1;
  }
  *fdp = fd;
  return 0;
}

int
point_still_there (struct repo *r, const char *point, int fd)
{
  struct stat a, b;

  if (fstat (fd, &a) == -1)
    return -1;
  if (fstatat (r->pointsfd, point, &b, AT_SYMLINK_NOFOLLOW) == -1)
    return errno == ENOENT ? 0 : -1;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

int
repo_point_busy (struct repo *r, const char *point)
{
  int fd = openat (r->pointsfd, point,
                   O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  long pid;

  if (fd == -1)
    return errno == ENOENT ? 0 : -1;
  /* Only look (/proc/locks): taking a lock, even for an instant, could
   * make a backup beginning right then fail to hold its parent.
   */
  pid = holder_pid (fd);
  close (fd);
  return pid > 0;
}
