/* nbdsnap repository: the repository itself (init, open, close, lock).
 *
 * REPO/repository is written once, by repo_init; REPO/points/ holds the
 * points, and its flock(2) serializes the processes that change it
 * (docs/repository-format.md, sections 3 and 10).
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "exportname.h"
#include "kvtext.h"
#include "repo-internal.h"

#define DEFAULT_BLOCK_SIZE (64 * 1024)

void
seterr (char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;

  if (err == NULL || errlen == 0)
    return;
  va_start (ap, fmt);
  vsnprintf (err, errlen, fmt, ap);
  va_end (ap);
}

bool
repo_name_valid (const char *name, char *why, size_t whylen)
{
  char dummy[128];

  if (why == NULL) {
    why = dummy;
    whylen = sizeof dummy;
  }
  if (!name_valid (name, why, whylen))
    return false;
  if (name[0] == '.') {
    snprintf (why, whylen,
              "name must not start with '.' (reserved for temporary "
              "directories in the repository)");
    return false;
  }
  return true;
}

uint32_t
repo_block_size (const struct repo *r)
{
  return r->block_size;
}

DIR *
points_opendir (struct repo *r)
{
  int fd = openat (r->pointsfd, ".", O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  DIR *d;

  if (fd == -1)
    return NULL;
  d = fdopendir (fd);
  if (d == NULL) {
    int saved = errno;
    close (fd);
    errno = saved;
  }
  return d;
}

/* Is parentfd/name an empty directory?  (Nothing is changed.) */
static bool
empty_dir_at (int parentfd, const char *name)
{
  int fd = openat (parentfd, name, O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  DIR *d;
  struct dirent *de;
  bool empty = true;

  if (fd == -1)
    return false;
  d = fdopendir (fd);
  if (d == NULL) {
    close (fd);
    return false;
  }
  while ((de = readdir (d)) != NULL)
    if (strcmp (de->d_name, ".") && strcmp (de->d_name, ".."))
      empty = false;
  closedir (d);
  return empty;
}

/* fsync the directory that holds path (a repository directory just
 * created).  0 or -1 and errno.
 */
static int
fsync_parent_of (const char *path)
{
  char *d = strdup (path), *slash;
  int fd, r, saved;

  if (d == NULL)
    return -1;
  /* dirname without its surprises: "a/b/" -> "a", "b" -> "." */
  slash = d + strlen (d);
  while (slash > d + 1 && slash[-1] == '/')
    *--slash = '\0';
  slash = strrchr (d, '/');
  if (slash == NULL)
    strcpy (d, ".");
  else if (slash == d)
    d[1] = '\0';
  else
    *slash = '\0';
  fd = open (d, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  saved = errno;
  free (d);
  if (fd == -1) {
    errno = saved;
    return -1;
  }
  r = fsync (fd);
  saved = errno;
  close (fd);
  errno = saved;
  return r;
}

int
repo_init (const char *dir, uint32_t block_size, char *err, size_t errlen)
{
  char buf[512], tbuf[64];
  size_t len;
  int fd = -1, r;
  DIR *d;
  struct dirent *de;
  bool other = false, made_dir = false, has_points = false;

  if (block_size == 0)
    block_size = DEFAULT_BLOCK_SIZE;
  if (!geom_block_size_ok (block_size)) {
    seterr (err, errlen,
            "block size %" PRIu32 " is not a power of two between 4096 and "
            "16777216", block_size);
    errno = EINVAL;
    return -1;
  }
  if (mkdir (dir, 0700) == 0)
    made_dir = true;
  else if (errno != EEXIST) {
    seterr (err, errlen, "cannot create repository directory %s: %m", dir);
    return -1;
  }
  fd = open (dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (fd == -1) {
    seterr (err, errlen, "cannot open repository directory %s: %m", dir);
    return -1;
  }
  /* Refuse a non-empty directory, changing nothing in it.  What an
   * interrupted init leaves (an empty points/, a repository.tmp) is
   * fine: it is taken over.
   */
  d = fdopendir (dup (fd));
  if (d == NULL) {
    seterr (err, errlen, "cannot read directory %s: %m", dir);
    close (fd);
    return -1;
  }
  while ((de = readdir (d)) != NULL) {
    if (strcmp (de->d_name, ".") == 0 || strcmp (de->d_name, "..") == 0 ||
        strcmp (de->d_name, "repository.tmp") == 0)
      continue;
    if (strcmp (de->d_name, "points") == 0 && empty_dir_at (fd, "points")) {
      has_points = true;
      continue;
    }
    other = true;
  }
  closedir (d);
  if (other) {
    if (faccessat (fd, "repository", F_OK, 0) == 0)
      seterr (err, errlen, "%s is already a repository", dir);
    else
      seterr (err, errlen,
              "%s is not empty: a new repository needs an empty or new "
              "directory", dir);
    close (fd);
    errno = EEXIST;
    return -1;
  }
  if (!has_points && mkdirat (fd, "points", 0700) == -1) {
    seterr (err, errlen, "cannot create %s/points: %m", dir);
    has_points = true;          /* nothing to undo */
    goto undo;
  }
  /* A new directory's own entry must be durable too. */
  if (made_dir && fsync_parent_of (dir) == -1) {
    seterr (err, errlen, "cannot sync the directory holding %s: %m", dir);
    goto undo;
  }
  format_time (time (NULL), tbuf, sizeof tbuf);
  len = snprintf (buf, sizeof buf,
                  REPO_MAGIC "\n"
                  "version %d\n"
                  "block-size %" PRIu32 "\n"
                  "created %s\n", REPO_VERSION, block_size, tbuf);
  /* The repository file also makes points/ durable: it is renamed into
   * the same directory, which is then fsynced.
   */
  r = kv_write_file (fd, "repository", buf, len);
  if (r == -2) {
    seterr (err, errlen, "%s/repository is written, but %s could not be "
            "synced (%m): the repository may not survive a crash; check the "
            "disk, then run 'nbdsnap list %s'", dir, dir, dir);
    close (fd);
    return -1;
  }
  if (r < 0) {
    seterr (err, errlen, "cannot write %s/repository: %m", dir);
    goto undo;
  }
  close (fd);
  return 0;

 undo:
  /* Leave the directory as it was found (best effort: what stays is
   * what an interrupted init leaves, which init takes over).
   */
  {
    int saved = errno;
    bool left = false;
    if (!has_points && unlinkat (fd, "points", AT_REMOVEDIR) == -1)
      left = true;
    close (fd);
    if (made_dir && !left && rmdir (dir) == -1)
      left = true;
    if (left) {
      size_t l = err ? strlen (err) : 0;
      if (err && l < errlen)
        snprintf (err + l, errlen - l, "; cannot remove what init made "
                  "(%m): an interrupted init is left in %s, which 'nbdsnap "
                  "init' takes over", dir);
    }
    errno = saved;
  }
  return -1;
}

/* Check the text of REPO/repository (len bytes, changed in place) and
 * set r->block_size.  -1 with err and errno.
 */
static int
repo_parse (struct repo *r, char *buf, size_t len, char *err, size_t errlen)
{
  const char *dir = r->dir;
  struct kv_reader kv;
  char why[128], *v;
  uint64_t u;
  uint32_t bs;

  if (len < sizeof REPO_MAGIC ||
      memcmp (buf, REPO_MAGIC "\n", sizeof REPO_MAGIC) != 0) {
    seterr (err, errlen,
            "%s is not an nbdsnap repository (%s/repository does not start "
            "with '" REPO_MAGIC "')", dir, dir);
    errno = EINVAL;
    return -1;
  }
  if (kv_begin (&kv, buf, len, REPO_MAGIC, why, sizeof why) == -1) {
    seterr (err, errlen,
            "%s/repository is damaged (its sha256 line does not match its "
            "content): restore the file from a copy; it holds only the "
            "version and block size (see docs/repository-format.md)", dir);
    errno = EIO;
    return -1;
  }
  if ((v = kv_expect (&kv, "version", why, sizeof why)) == NULL)
    goto malformed;
  if (kv_u64 (v, &u) == -1 || u != REPO_VERSION) {
    seterr (err, errlen,
            "%s/repository has format version %s; this nbdsnap reads "
            "version %d (use a matching nbdsnap)", dir, v, REPO_VERSION);
    errno = EINVAL;
    return -1;
  }
  if ((v = kv_expect (&kv, "block-size", why, sizeof why)) == NULL)
    goto malformed;
  if (kv_u32 (v, &bs) == -1 || !geom_block_size_ok (bs)) {
    snprintf (why, sizeof why, "line %u: invalid block-size", kv.line);
    goto malformed;
  }
  if (kv_expect (&kv, "created", why, sizeof why) == NULL)
    goto malformed;
  if (!kv_at_end (&kv)) {
    snprintf (why, sizeof why, "line %u: unexpected", kv.line + 1);
    goto malformed;
  }
  r->block_size = bs;
  return 0;

 malformed:
  seterr (err, errlen, "%s/repository is malformed (%s)", dir, why);
  errno = EINVAL;
  return -1;
}

struct repo *
repo_open (const char *dir, char *err, size_t errlen)
{
  struct repo *r;
  char *buf = NULL;
  size_t len;
  int saved;

  r = calloc (1, sizeof *r);
  if (r == NULL || (r->dir = strdup (dir)) == NULL) {
    seterr (err, errlen, "out of memory");
    free (r);
    return NULL;
  }
  r->pointsfd = -1;
  r->dirfd = open (dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (r->dirfd == -1) {
    if (errno == ENOENT)
      seterr (err, errlen,
              "repository %s does not exist (create it with 'nbdsnap init "
              "%s' or a first full backup)", dir, dir);
    else
      seterr (err, errlen, "cannot open repository %s: %m", dir);
    goto fail;
  }
  if (statefile_read (r->dirfd, "repository", &buf, &len) == -1) {
    if (errno == ENOENT) {
      seterr (err, errlen,
              "%s is not an nbdsnap repository (it has no 'repository' "
              "file)", dir);
      errno = ENOENT;
    }
    else
      seterr (err, errlen, "cannot read %s/repository: %m", dir);
    goto fail;
  }
  if (repo_parse (r, buf, len, err, errlen) == -1)
    goto fail;
  free (buf);
  buf = NULL;
  r->pointsfd = openat (r->dirfd, "points",
                        O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC);
  if (r->pointsfd == -1) {
    seterr (err, errlen, "cannot open %s/points: %m (the repository is "
            "damaged: create the empty directory if it was lost)", dir);
    goto fail;
  }
  return r;

 fail:
  saved = errno;
  free (buf);
  repo_close (r);
  errno = saved;
  return NULL;
}

void
repo_close (struct repo *r)
{
  if (r == NULL)
    return;
  if (r->pointsfd >= 0)
    close (r->pointsfd);
  if (r->dirfd >= 0)
    close (r->dirfd);
  free (r->dir);
  free (r);
}

struct repo *
points_lock (struct repo *r, char *err, size_t errlen)
{
  while (flock (r->pointsfd, LOCK_EX) == -1) {
    if (errno == EINTR)
      continue;
    seterr (err, errlen, "cannot lock %s/points: %m", r->dir);
    return NULL;
  }
  return r;
}

void
points_unlock (struct repo *r)
{
  int saved = errno;

  flock (r->pointsfd, LOCK_UN);
  errno = saved;
}

int
repo_remove_empty (struct repo *r, bool remove_dir, char *err, size_t errlen)
{
  POINTS_LOCKED struct repo *locked = points_lock (r, err, errlen);
  DIR *d;
  struct dirent *de;
  bool empty = true;
  char first[256] = "";

  if (locked == NULL)
    return -1;
  d = points_opendir (r);
  if (d == NULL) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
    return -1;
  }
  while ((de = readdir (d)) != NULL)
    if (strcmp (de->d_name, ".") && strcmp (de->d_name, "..")) {
      if (empty || first[0] == '.')
        snprintf (first, sizeof first, "%s", de->d_name);
      empty = false;
    }
  closedir (d);
  if (!empty) {
    if (first[0] == '.')
      seterr (err, errlen, "%s is not empty: %s/points/%s is left (the "
              "next backup or verify removes it)", r->dir, r->dir, first);
    else
      seterr (err, errlen, "%s holds restore points", r->dir);
    errno = ENOTEMPTY;
    return -1;
  }
  /* Without its repository file the directory is no repository (an
   * empty points/ left by a crash here is what repo_init accepts).
   */
  if (unlinkat (r->dirfd, "repository", 0) == -1 ||
      fsync (r->dirfd) == -1 ||
      unlinkat (r->dirfd, "points", AT_REMOVEDIR) == -1) {
    seterr (err, errlen, "cannot remove the repository %s: %m", r->dir);
    return -1;
  }
  if (remove_dir && rmdir (r->dir) == -1) {
    seterr (err, errlen, "cannot remove %s: %m", r->dir);
    return -1;
  }
  return 0;
}
