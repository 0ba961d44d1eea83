/* nbdsnap repository: the backup repository.
 *
 * The format is described byte by byte in docs/repository-format.md; the
 * short version:
 *
 *   REPO/repository            text, "sha256 HEX" last line
 *   REPO/points/NAME/manifest  text, "sha256 HEX" last line
 *   REPO/points/NAME/index     "NBDSNAPI" header, sorted 53-byte entries,
 *                              SHA-256 trailer
 *   REPO/points/NAME/data      "NBDSNAPD" header, stored blocks
 *
 * A point is built in points/.tmp-NAME-PID and renamed into place; a
 * point being deleted is first renamed to points/.del-NAME-PID.  Every
 * name starting with '.' under points/ is ignored by readers.
 */
#include <config.h>

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <zstd.h>

#include "exportname.h"
#include "statefile.h"
#include "repo.h"
#include "writeback.h"

#define REPO_VERSION 1
#define POINT_VERSION 2
#define INDEX_VERSION 1
#define DATA_VERSION 2

#define INDEX_MAGIC "NBDSNAPI"
#define DATA_MAGIC "NBDSNAPD"
#define INDEX_HDR 32
#define ENTRY_SIZE 53
/* The data file's header fills its first page so that uncompressed
 * blocks are page-aligned in the file: aligned writes are much cheaper
 * for the page cache than writes straddling pages.
 */
#define DATA_HDR 4096

#define KIND_DATA 1
#define KIND_ZERO 2

#define DEFAULT_BLOCK_SIZE (64 * 1024)
#define MIN_BLOCK_SIZE 4096
#define MAX_BLOCK_SIZE (16 * 1024 * 1024)
#define MAX_CHAIN 100000
#define ZSTD_LEVEL 3
#define IOBUF (1024 * 1024)

/* --------------------------------------------------------------- helpers */

static void __attribute__ ((format (printf, 3, 4)))
seterr (char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;

  if (err == NULL || errlen == 0)
    return;
  va_start (ap, fmt);
  vsnprintf (err, errlen, fmt, ap);
  va_end (ap);
}

static int
write_full (int fd, const void *buf, size_t len)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t r = write (fd, p, len);
    if (r == -1) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

/* pread exactly len bytes; short file -> -1 with errno EIO. */
static int
pread_full (int fd, void *buf, size_t len, uint64_t off)
{
  char *p = buf;

  while (len > 0) {
    ssize_t r = pread (fd, p, len, off);
    if (r == -1) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) {
      errno = EIO;
      return -1;
    }
    p += r;
    len -= r;
    off += r;
  }
  return 0;
}

static void
format_time (int64_t t, char *out, size_t len)
{
  time_t tt = t;
  struct tm tm;

  gmtime_r (&tt, &tm);
  strftime (out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int
parse_time (const char *s, int64_t *out)
{
  struct tm tm;
  int n = 0;

  memset (&tm, 0, sizeof tm);
  if (sscanf (s, "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &tm.tm_year, &tm.tm_mon,
              &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 ||
      s[n] != '\0' || n != 20)
    return -1;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  *out = timegm (&tm);
  return 0;
}

static int
parse_u64 (const char *s, uint64_t *out)
{
  uint64_t v = 0;

  if (*s == '\0' || (s[0] == '0' && s[1] != '\0'))
    return -1;
  for (; *s; ++s) {
    if (*s < '0' || *s > '9')
      return -1;
    if (v > (UINT64_MAX - (*s - '0')) / 10)
      return -1;
    v = v * 10 + (*s - '0');
  }
  *out = v;
  return 0;
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

/* Text files end with "sha256 HEX\n" over all bytes before that line.
 * Returns the length of the body (the bytes covered) or -1.
 */
#define SHA_LINE_LEN (7 + 2 * SHA256_LEN + 1)
static ssize_t
check_text_sha (const char *buf, size_t len)
{
  const char *line;
  uint8_t want[SHA256_LEN], got[SHA256_LEN];

  if (len < SHA_LINE_LEN + 1)
    return -1;
  line = buf + len - SHA_LINE_LEN;
  if (line[-1] != '\n' || memcmp (line, "sha256 ", 7) != 0 ||
      line[SHA_LINE_LEN - 1] != '\n' ||
      hex_decode (line + 7, want, SHA256_LEN) == -1)
    return -1;
  if (sha256_buf (buf, line - buf, got) == -1 ||
      memcmp (want, got, SHA256_LEN) != 0)
    return -1;
  return line - buf;
}

/* Append the sha256 line to a text body in buf (which has room). */
static size_t
add_text_sha (char *buf, size_t len)
{
  uint8_t h[SHA256_LEN];
  char hex[2 * SHA256_LEN + 1];

  sha256_buf (buf, len, h);
  hex_encode (h, SHA256_LEN, hex);
  len += sprintf (buf + len, "sha256 %s\n", hex);
  return len;
}

/* Split the next "key value\n" line off *p (body ends at end).  Returns
 * false at the end or on a malformed line.
 */
static bool
next_line (char **p, char *end, const char *key, char **value)
{
  char *nl, *line = *p;
  size_t klen = strlen (key);

  if (line >= end)
    return false;
  nl = memchr (line, '\n', end - line);
  if (nl == NULL)
    return false;
  *nl = '\0';
  *p = nl + 1;
  if (strncmp (line, key, klen) != 0)
    return false;
  if (line[klen] == '\0' && value == NULL)
    return true;
  if (line[klen] != ' ' || value == NULL)
    return false;
  *value = line + klen + 1;
  return true;
}

/* Remove a directory holding only plain files (a point directory). */
static int
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

/* ------------------------------------------------------------ repository */

struct repo {
  char *dir;
  int dirfd, pointsfd;
  uint32_t block_size;
};

const char *
repo_dir (const struct repo *r)
{
  return r->dir;
}

uint32_t
repo_block_size (const struct repo *r)
{
  return r->block_size;
}

int
repo_init (const char *dir, uint32_t block_size, char *err, size_t errlen)
{
  char buf[512], tbuf[64];
  size_t len;
  int fd = -1;
  DIR *d;
  struct dirent *de;
  bool other = false;

  if (block_size == 0)
    block_size = DEFAULT_BLOCK_SIZE;
  if (block_size < MIN_BLOCK_SIZE || block_size > MAX_BLOCK_SIZE ||
      (block_size & (block_size - 1)) != 0) {
    seterr (err, errlen,
            "block size %" PRIu32 " is not a power of two between %d and %d",
            block_size, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE);
    errno = EINVAL;
    return -1;
  }
  if (mkdir (dir, 0700) == -1 && errno != EEXIST) {
    seterr (err, errlen, "cannot create repository directory %s: %m", dir);
    return -1;
  }
  fd = open (dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (fd == -1) {
    seterr (err, errlen, "cannot open repository directory %s: %m", dir);
    return -1;
  }
  /* Refuse a non-empty directory (an empty points/ of an interrupted
   * init is fine).
   */
  d = fdopendir (dup (fd));
  if (d == NULL) {
    seterr (err, errlen, "cannot read directory %s: %m", dir);
    close (fd);
    return -1;
  }
  while ((de = readdir (d)) != NULL) {
    if (strcmp (de->d_name, ".") == 0 || strcmp (de->d_name, "..") == 0)
      continue;
    if (strcmp (de->d_name, "points") == 0 &&
        unlinkat (fd, "points", AT_REMOVEDIR) == 0)
      continue;
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
  if (mkdirat (fd, "points", 0700) == -1) {
    seterr (err, errlen, "cannot create %s/points: %m", dir);
    close (fd);
    return -1;
  }
  format_time (time (NULL), tbuf, sizeof tbuf);
  len = snprintf (buf, sizeof buf,
                  "nbdsnap-repository\n"
                  "version %d\n"
                  "block-size %" PRIu32 "\n"
                  "created %s\n", REPO_VERSION, block_size, tbuf);
  len = add_text_sha (buf, len);
  if (statefile_write (fd, "repository", buf, len) == -1) {
    seterr (err, errlen, "cannot write %s/repository: %m", dir);
    close (fd);
    return -1;
  }
  close (fd);
  return 0;
}

struct repo *
repo_open (const char *dir, char *err, size_t errlen)
{
  struct repo *r;
  char *buf = NULL, *p, *end, *v;
  size_t len;
  ssize_t body;
  uint64_t u;

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
  if (len < 19 || memcmp (buf, "nbdsnap-repository\n", 19) != 0) {
    seterr (err, errlen,
            "%s is not an nbdsnap repository (%s/repository does not start "
            "with 'nbdsnap-repository')", dir, dir);
    errno = EINVAL;
    goto fail;
  }
  body = check_text_sha (buf, len);
  if (body == -1) {
    seterr (err, errlen,
            "%s/repository is damaged (its sha256 line does not match its "
            "content): restore the file from a copy; it holds only the "
            "version and block size (see docs/repository-format.md)", dir);
    errno = EIO;
    goto fail;
  }
  p = buf;
  end = buf + body;
  if (!next_line (&p, end, "nbdsnap-repository", NULL) ||
      !next_line (&p, end, "version", &v)) {
    seterr (err, errlen, "%s/repository is malformed", dir);
    errno = EINVAL;
    goto fail;
  }
  if (parse_u64 (v, &u) == -1 || u != REPO_VERSION) {
    seterr (err, errlen,
            "%s/repository has format version %s; this nbdsnap reads "
            "version %d (use a matching nbdsnap)", dir, v, REPO_VERSION);
    errno = EINVAL;
    goto fail;
  }
  if (!next_line (&p, end, "block-size", &v) || parse_u64 (v, &u) == -1 ||
      u < MIN_BLOCK_SIZE || u > MAX_BLOCK_SIZE || (u & (u - 1)) != 0 ||
      !next_line (&p, end, "created", &v) || p != end) {
    seterr (err, errlen, "%s/repository is malformed", dir);
    errno = EINVAL;
    goto fail;
  }
  r->block_size = u;
  free (buf);
  buf = NULL;
  r->pointsfd = openat (r->dirfd, "points",
                        O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (r->pointsfd == -1) {
    seterr (err, errlen, "cannot open %s/points: %m (the repository is "
            "damaged: create the empty directory if it was lost)", dir);
    goto fail;
  }
  return r;

 fail:
  {
    int saved = errno;
    free (buf);
    repo_close (r);
    errno = saved;
  }
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

/* Serialize operations that change points/ between processes. */
static int
lock_points (struct repo *r, char *err, size_t errlen)
{
  while (flock (r->pointsfd, LOCK_EX) == -1) {
    if (errno == EINTR) continue;
    seterr (err, errlen, "cannot lock %s/points: %m", r->dir);
    return -1;
  }
  return 0;
}

static void
unlock_points (struct repo *r)
{
  flock (r->pointsfd, LOCK_UN);
}

int
repo_remove_empty (struct repo *r, bool remove_dir, char *err, size_t errlen)
{
  DIR *d;
  struct dirent *de;
  bool empty = true;
  int ret = -1;

  if (lock_points (r, err, errlen) == -1)
    return -1;
  d = fdopendir (dup (r->pointsfd));
  if (d == NULL) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
    goto out;
  }
  while ((de = readdir (d)) != NULL)
    if (strcmp (de->d_name, ".") && strcmp (de->d_name, ".."))
      empty = false;
  closedir (d);
  if (!empty) {
    seterr (err, errlen, "%s holds restore points", r->dir);
    errno = ENOTEMPTY;
    goto out;
  }
  /* Without its repository file the directory is no repository (an
   * empty points/ left by a crash here is what repo_init accepts).
   */
  if (unlinkat (r->dirfd, "repository", 0) == -1 ||
      fsync (r->dirfd) == -1 ||
      unlinkat (r->dirfd, "points", AT_REMOVEDIR) == -1) {
    seterr (err, errlen, "cannot remove the repository %s: %m", r->dir);
    goto out;
  }
  if (remove_dir && rmdir (r->dir) == -1) {
    seterr (err, errlen, "cannot remove %s: %m", r->dir);
    goto out;
  }
  ret = 0;
 out:
  unlock_points (r);
  return ret;
}

/* -------------------------------------------------------------- manifest */

struct manifest {
  char name[REPO_NAME_MAX + 1], kind[16], parent[REPO_NAME_MAX + 1],
    checkpoint[REPO_NAME_MAX + 1], since[REPO_NAME_MAX + 1];
  uint64_t sequence, disk_size, blocks, data_size;
  uint32_t block_size;
  bool compressed, full;
  int64_t created;
  uint8_t index_sha[SHA256_LEN];
};

static size_t
manifest_format (const struct manifest *m, char *buf, size_t size)
{
  char t[64], ih[2 * SHA256_LEN + 1];
  size_t len;

  format_time (m->created, t, sizeof t);
  hex_encode (m->index_sha, SHA256_LEN, ih);
  len = snprintf (buf, size,
                  "nbdsnap-point\n"
                  "version %d\n"
                  "name %s\n"
                  "kind %s\n"
                  "parent %s\n"
                  "checkpoint %s\n"
                  "since %s\n"
                  "sequence %" PRIu64 "\n"
                  "disk-size %" PRIu64 "\n"
                  "block-size %" PRIu32 "\n"
                  "compression %s\n"
                  "created %s\n"
                  "blocks %" PRIu64 "\n"
                  "data-size %" PRIu64 "\n"
                  "index-sha256 %s\n",
                  POINT_VERSION, m->name, m->full ? "full" : "incremental",
                  m->full ? "-" : m->parent, m->checkpoint,
                  m->since[0] ? m->since : "-", m->sequence, m->disk_size,
                  m->block_size, m->compressed ? "zstd" : "none", t,
                  m->blocks, m->data_size, ih);
  return add_text_sha (buf, len);
}

static int
copy_name (char *dst, const char *v)
{
  if (strcmp (v, "-") == 0) {
    dst[0] = '\0';
    return 0;
  }
  if (!repo_name_valid (v, NULL, 0))
    return -1;
  strcpy (dst, v);
  return 0;
}

/* Read and check points/NAME/manifest.  dirname is what the directory is
 * called (the manifest's name line must match it).
 */
static int
manifest_read (struct repo *r, const char *dirname, struct manifest *m,
               char *err, size_t errlen)
{
  char path[REPO_NAME_MAX + 32], *buf = NULL, *p, *end, *v;
  size_t len;
  ssize_t body;
  uint64_t u;
  const char *bad = NULL;

  memset (m, 0, sizeof *m);
  snprintf (path, sizeof path, "%s/manifest", dirname);
  if (statefile_read (r->pointsfd, path, &buf, &len) == -1) {
    if (errno == ENOENT && faccessat (r->pointsfd, dirname, F_OK, 0) == -1)
    {
      seterr (err, errlen, "restore point %s does not exist in %s "
              "('nbdsnap list %s' shows the points)", dirname, r->dir,
              r->dir);
      errno = ENOENT;
    }
    else if (errno == ENOENT) {
      seterr (err, errlen, "restore point %s is damaged: %s/points/%s has "
              "no manifest (delete it with 'nbdsnap delete')", dirname,
              r->dir, path);
      errno = EIO;
    }
    else
      seterr (err, errlen, "cannot read %s/points/%s: %m", r->dir, path);
    return -1;
  }
  if (len < 14 || memcmp (buf, "nbdsnap-point\n", 14) != 0) {
    bad = "it does not start with 'nbdsnap-point'";
    goto bad;
  }
  body = check_text_sha (buf, len);
  if (body == -1) {
    bad = "its sha256 line does not match its content";
    goto bad;
  }
  p = buf;
  end = buf + body;
  bad = "a line is missing or malformed";
  if (!next_line (&p, end, "nbdsnap-point", NULL) ||
      !next_line (&p, end, "version", &v))
    goto bad;
  if (parse_u64 (v, &u) == -1 || u != POINT_VERSION) {
    seterr (err, errlen, "%s/points/%s has format version %s; this nbdsnap "
            "reads version %d (use a matching nbdsnap)", r->dir, path, v,
            POINT_VERSION);
    free (buf);
    errno = EINVAL;
    return -1;
  }
  if (!next_line (&p, end, "name", &v) || copy_name (m->name, v) == -1 ||
      m->name[0] == '\0')
    goto bad;
  if (!next_line (&p, end, "kind", &v))
    goto bad;
  if (strcmp (v, "full") == 0)
    m->full = true;
  else if (strcmp (v, "incremental") != 0)
    goto bad;
  strcpy (m->kind, v);
  if (!next_line (&p, end, "parent", &v) || copy_name (m->parent, v) == -1 ||
      (m->full != (m->parent[0] == '\0')))
    goto bad;
  if (!next_line (&p, end, "checkpoint", &v) ||
      copy_name (m->checkpoint, v) == -1)
    goto bad;
  if (!next_line (&p, end, "since", &v) || copy_name (m->since, v) == -1)
    goto bad;
  if (!next_line (&p, end, "sequence", &v) || parse_u64 (v, &m->sequence))
    goto bad;
  if (!next_line (&p, end, "disk-size", &v) || parse_u64 (v, &m->disk_size) ||
      m->disk_size > INT64_MAX)
    goto bad;
  if (!next_line (&p, end, "block-size", &v) || parse_u64 (v, &u) ||
      u < MIN_BLOCK_SIZE || u > MAX_BLOCK_SIZE || (u & (u - 1)))
    goto bad;
  m->block_size = u;
  if (!next_line (&p, end, "compression", &v))
    goto bad;
  if (strcmp (v, "zstd") == 0)
    m->compressed = true;
  else if (strcmp (v, "none") != 0)
    goto bad;
  if (!next_line (&p, end, "created", &v) || parse_time (v, &m->created))
    goto bad;
  if (!next_line (&p, end, "blocks", &v) || parse_u64 (v, &m->blocks))
    goto bad;
  if (!next_line (&p, end, "data-size", &v) || parse_u64 (v, &m->data_size) ||
      m->data_size < DATA_HDR)
    goto bad;
  if (!next_line (&p, end, "index-sha256", &v) || strlen (v) != 64 ||
      hex_decode (v, m->index_sha, SHA256_LEN))
    goto bad;
  if (p != end)
    goto bad;
  if (strcmp (m->name, dirname) != 0) {
    bad = "its name line does not match the directory name";
    goto bad;
  }
  free (buf);
  return 0;

 bad:
  seterr (err, errlen, "restore point %s is damaged: %s/points/%s is not a "
          "valid manifest (%s); run 'nbdsnap verify %s'", dirname, r->dir,
          path, bad, r->dir);
  free (buf);
  errno = EIO;
  return -1;
}

static void
manifest_to_info (const struct manifest *m, struct repo_point_info *info)
{
  memset (info, 0, sizeof *info);
  strcpy (info->name, m->name);
  strcpy (info->kind, m->kind);
  strcpy (info->parent, m->parent);
  strcpy (info->since, m->since);
  info->disk_size = m->disk_size;
  info->blocks = m->blocks;
  info->stored_bytes = m->data_size - DATA_HDR;
  info->created = m->created;
  info->compressed = m->compressed;
}

int
repo_point_get (struct repo *r, const char *point,
                struct repo_point_info *info, char *err, size_t errlen)
{
  struct manifest m;
  char why[128];

  if (!repo_name_valid (point, why, sizeof why)) {
    seterr (err, errlen, "invalid restore point name '%s': %s", point, why);
    errno = EINVAL;
    return -1;
  }
  if (manifest_read (r, point, &m, err, errlen) == -1)
    return -1;
  manifest_to_info (&m, info);
  return 0;
}

/* All manifests (names not starting with '.').  Damaged ones are skipped
 * when skip_bad, else the first one is an error.
 */
static int
manifest_all (struct repo *r, struct manifest **out, size_t *n, bool skip_bad,
              char *err, size_t errlen)
{
  DIR *d;
  struct dirent *de;
  struct manifest *a = NULL, *na;
  size_t cnt = 0, cap = 0;
  int fd = openat (r->pointsfd, ".", O_RDONLY|O_DIRECTORY|O_CLOEXEC);

  if (fd == -1 || (d = fdopendir (fd)) == NULL) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
    if (fd >= 0) close (fd);
    return -1;
  }
  while ((de = readdir (d)) != NULL) {
    if (de->d_name[0] == '.')
      continue;
    if (cnt == cap) {
      cap = cap ? 2 * cap : 16;
      na = realloc (a, cap * sizeof *a);
      if (na == NULL) {
        seterr (err, errlen, "out of memory");
        goto fail;
      }
      a = na;
    }
    if (!repo_name_valid (de->d_name, NULL, 0) ||
        manifest_read (r, de->d_name, &a[cnt], err, errlen) == -1) {
      if (skip_bad)
        continue;
      if (!repo_name_valid (de->d_name, NULL, 0))
        seterr (err, errlen, "%s/points/%s is not a restore point (invalid "
                "name): move it out of the repository", r->dir, de->d_name);
      goto fail;
    }
    cnt++;
  }
  closedir (d);
  *out = a;
  *n = cnt;
  return 0;

 fail:
  closedir (d);
  free (a);
  return -1;
}

static int
compare_manifest (const void *av, const void *bv)
{
  const struct manifest *a = av, *b = bv;

  if (a->sequence != b->sequence)
    return a->sequence < b->sequence ? -1 : 1;
  return strcmp (a->name, b->name);
}

int
repo_list (struct repo *r, struct repo_point_info **out, size_t *n,
           char *err, size_t errlen)
{
  struct manifest *a;
  size_t cnt, i;
  struct repo_point_info *info;

  if (manifest_all (r, &a, &cnt, false, err, errlen) == -1)
    return -1;
  qsort (a, cnt, sizeof *a, compare_manifest);
  info = calloc (cnt ? cnt : 1, sizeof *info);
  if (info == NULL) {
    free (a);
    seterr (err, errlen, "out of memory");
    return -1;
  }
  for (i = 0; i < cnt; ++i)
    manifest_to_info (&a[i], &info[i]);
  free (a);
  *out = info;
  *n = cnt;
  return 0;
}

/* ------------------------------------------------------- scratch buffers */

/* Per-reader/writer pool of scratch buffers and zstd contexts (no
 * thread-local storage: the plugin may be unloaded while threads live).
 */
struct scratch {
  struct scratch *next;
  void *a, *b;                  /* 2 * compressBound(block) each */
  ZSTD_CCtx *cctx;
  ZSTD_DCtx *dctx;
};

struct pool {
  pthread_mutex_t lock;
  struct scratch *free;
  size_t size;
};

static void
pool_init (struct pool *p, uint32_t block_size)
{
  pthread_mutex_init (&p->lock, NULL);
  p->free = NULL;
  p->size = ZSTD_compressBound (block_size) + 64;
}

static struct scratch *
pool_get (struct pool *p)
{
  struct scratch *s;

  pthread_mutex_lock (&p->lock);
  s = p->free;
  if (s)
    p->free = s->next;
  pthread_mutex_unlock (&p->lock);
  if (s)
    return s;
  s = calloc (1, sizeof *s);
  if (s == NULL)
    return NULL;
  s->a = malloc (p->size);
  s->b = malloc (p->size);
  if (s->a == NULL || s->b == NULL) {
    free (s->a);
    free (s->b);
    free (s);
    return NULL;
  }
  return s;
}

static void
pool_put (struct pool *p, struct scratch *s)
{
  pthread_mutex_lock (&p->lock);
  s->next = p->free;
  p->free = s;
  pthread_mutex_unlock (&p->lock);
}

static void
pool_destroy (struct pool *p)
{
  struct scratch *s, *next;

  for (s = p->free; s; s = next) {
    next = s->next;
    free (s->a);
    free (s->b);
    ZSTD_freeCCtx (s->cctx);
    ZSTD_freeDCtx (s->dctx);
    free (s);
  }
  p->free = NULL;
  pthread_mutex_destroy (&p->lock);
}

/* ---------------------------------------------------------------- writer */

struct repo_writer {
  struct repo *r;
  struct manifest m;
  char tmpname[REPO_NAME_MAX + 32];
  int dirfd, datafd, spillfd;
  int directfd;                 /* data with O_DIRECT, -1 if unavailable */
  bool no_direct;               /* O_DIRECT writes failed: do not use */
  uint64_t nblocks;
  bool merge;                   /* exchange with an existing point */
  bool caller_locked;           /* points/ already locked by the caller */
  struct pool pool;

  pthread_mutex_t lock;         /* protects everything below */
  bool failed;
  char err[512];
  uint64_t data_end;            /* next offset in data */
  uint64_t alloc_end;           /* data allocated up to here (fallocate) */
  bool no_alloc;                /* fallocate is not supported */
  uint8_t *spill;               /* buffered index records */
  size_t spill_len;
  uint64_t nrecords;
  struct pair { uint64_t block, rec; } *pairs;
  size_t npairs, cappairs;
};

static uint64_t
blocks_of (uint64_t size, uint32_t bs)
{
  return size / bs + (size % bs != 0);
}

/* Length of block b of a disk of size bytes. */
static uint32_t
block_len (uint64_t size, uint32_t bs, uint64_t b)
{
  uint64_t start = b * bs;

  if (start >= size)
    return 0;
  return size - start < bs ? size - start : bs;
}

static void __attribute__ ((format (printf, 2, 3)))
writer_fail (struct repo_writer *w, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock (&w->lock);
  if (!w->failed) {
    va_start (ap, fmt);
    vsnprintf (w->err, sizeof w->err, fmt, ap);
    va_end (ap);
    w->failed = true;
  }
  pthread_mutex_unlock (&w->lock);
}

const char *
repo_writer_error (struct repo_writer *w)
{
  const char *e;

  pthread_mutex_lock (&w->lock);
  e = w->failed ? w->err : NULL;
  pthread_mutex_unlock (&w->lock);
  return e;
}

static void
writer_free (struct repo_writer *w, bool remove)
{
  if (w->datafd >= 0) close (w->datafd);
  if (w->directfd >= 0) close (w->directfd);
  if (w->spillfd >= 0) close (w->spillfd);
  if (w->dirfd >= 0) close (w->dirfd);
  if (remove && w->tmpname[0])
    remove_flat_dir (w->r->pointsfd, w->tmpname);
  pool_destroy (&w->pool);
  pthread_mutex_destroy (&w->lock);
  free (w->spill);
  free (w->pairs);
  free (w);
}

/* Begin a writer with a prepared manifest (name, kind, parent,
 * checkpoint, since, disk_size, compressed, created filled in).
 */
static struct repo_writer *
writer_start (struct repo *r, const struct manifest *m, char *err,
              size_t errlen)
{
  struct repo_writer *w;
  uint8_t hdr[DATA_HDR] = { 0 };      /* zero after the first 16 bytes */

  w = calloc (1, sizeof *w);
  if (w == NULL) {
    seterr (err, errlen, "out of memory");
    return NULL;
  }
  w->r = r;
  w->m = *m;
  w->m.block_size = r->block_size;
  w->dirfd = w->datafd = w->spillfd = w->directfd = -1;
  w->nblocks = blocks_of (m->disk_size, r->block_size);
  pthread_mutex_init (&w->lock, NULL);
  pool_init (&w->pool, r->block_size);
  w->spill = malloc (IOBUF);
  if (w->spill == NULL) {
    seterr (err, errlen, "out of memory");
    goto fail;
  }
  snprintf (w->tmpname, sizeof w->tmpname, ".tmp-%s-%ld", m->name,
            (long) getpid ());
  remove_flat_dir (r->pointsfd, w->tmpname);
  if (mkdirat (r->pointsfd, w->tmpname, 0700) == -1) {
    seterr (err, errlen, "cannot create %s/points/%s: %m", r->dir,
            w->tmpname);
    w->tmpname[0] = '\0';
    goto fail;
  }
  w->dirfd = openat (r->pointsfd, w->tmpname,
                     O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (w->dirfd == -1)
    goto ioerr;
  w->datafd = openat (w->dirfd, "data",
                      O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600);
  if (w->datafd == -1)
    goto ioerr;
  w->spillfd = openat (w->dirfd, "index.unsorted",
                       O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600);
  if (w->spillfd == -1)
    goto ioerr;
  memcpy (hdr, DATA_MAGIC, 8);
  put_le32 (hdr + 8, DATA_VERSION);
  put_le32 (hdr + 12, r->block_size);
  if (write_full (w->datafd, hdr, DATA_HDR) == -1)
    goto ioerr;
  w->data_end = DATA_HDR;
  /* A second descriptor for direct writes (see writer_store); file
   * systems without O_DIRECT refuse it here or on the first write.
   */
  w->directfd = openat (w->dirfd, "data", O_WRONLY|O_DIRECT|O_CLOEXEC);
  return w;

 ioerr:
  seterr (err, errlen, "cannot create files in %s/points/%s: %m", r->dir,
          w->tmpname);
 fail:
  writer_free (w, true);
  return NULL;
}

struct repo_writer *
repo_writer_begin (struct repo *r, const char *name, const char *parent,
                   const char *since, uint64_t disk_size, bool compress,
                   char *err, size_t errlen)
{
  struct manifest m, pm;
  char why[128];

  memset (&m, 0, sizeof m);
  if (!repo_name_valid (name, why, sizeof why)) {
    seterr (err, errlen, "invalid restore point name '%s': %s", name, why);
    errno = EINVAL;
    return NULL;
  }
  if (since && !repo_name_valid (since, why, sizeof why)) {
    seterr (err, errlen, "invalid checkpoint name '%s': %s", since, why);
    errno = EINVAL;
    return NULL;
  }
  if (disk_size > INT64_MAX) {
    seterr (err, errlen, "disk size %" PRIu64 " is too large", disk_size);
    errno = EINVAL;
    return NULL;
  }
  if (faccessat (r->pointsfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
    seterr (err, errlen, "a restore point named %s already exists in %s "
            "(choose another name or delete it first)", name, r->dir);
    errno = EEXIST;
    return NULL;
  }
  if (parent) {
    if (manifest_read (r, parent, &pm, err, errlen) == -1)
      return NULL;
    if (pm.block_size != r->block_size) {
      seterr (err, errlen, "parent point %s has block size %" PRIu32
              " but the repository has %" PRIu32 "", parent, pm.block_size,
              r->block_size);
      errno = EINVAL;
      return NULL;
    }
    strcpy (m.parent, parent);
  }
  strcpy (m.name, name);
  strcpy (m.checkpoint, name);
  if (since)
    strcpy (m.since, since);
  m.full = parent == NULL;
  strcpy (m.kind, m.full ? "full" : "incremental");
  m.disk_size = disk_size;
  m.compressed = compress;
  m.created = time (NULL);
  return writer_start (r, &m, err, errlen);
}

/* One record for writer_append. */
struct rec {
  uint64_t block;
  int kind;
  uint32_t slen;                /* stored length, 0 for a zero */
  uint8_t sha[SHA256_LEN];
};

/* Write the stored bytes of records into [off, off + len) of the data
 * file.  Page-aligned writes from page-aligned memory bypass the page
 * cache (O_DIRECT): the bytes go from the caller's buffer to the disk,
 * with no copy and no dirty pages to write back later, which is most of
 * what a backup costs besides reading and hashing.  Anything else, or a
 * file system without O_DIRECT, is written through the page cache.
 * Either way the commit's fsync makes the data durable.
 */
#define DIRECT_ALIGN 4096
#define DIRECT_MIN (256u << 10)
#define PREALLOC (64u << 20)

static int
writer_store (struct repo_writer *w, uint64_t off, const void *buf,
              uint64_t len)
{
  int fd = w->datafd;
  uint64_t done;

  if (w->directfd >= 0 && !__atomic_load_n (&w->no_direct, __ATOMIC_RELAXED) &&
      len >= DIRECT_MIN &&
      off % DIRECT_ALIGN == 0 && len % DIRECT_ALIGN == 0 &&
      (uintptr_t) buf % DIRECT_ALIGN == 0)
    fd = w->directfd;
  for (done = 0; done < len; ) {
    ssize_t n = pwrite (fd, (const char *) buf + done, len - done,
                        off + done);
    if (n > 0) {
      done += n;
      continue;
    }
    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1 && errno == EINVAL && fd != w->datafd) {
      /* The file system refuses direct I/O after all: page cache. */
      __atomic_store_n (&w->no_direct, true, __ATOMIC_RELAXED);
      fd = w->datafd;
      continue;
    }
    if (n == 0)
      errno = ENOSPC;
    {
      int saved = errno;
      writer_fail (w, "cannot write %s/points/%s/data: %s", w->r->dir,
                   w->tmpname, strerror (saved));
    }
    errno = EIO;
    return -1;
  }
  if (fd == w->datafd)
    writeback_after_write (fd, off, len);
  return 0;
}

/* Append n records whose stored bytes lie back to back in stored (NULL
 * if they are all zeroes).  Their places in the data file and their
 * index entries are taken under the lock; the bytes are written outside
 * it, so the threads of a backup write in parallel.  If the write fails
 * the writer is failed, so a range never written is never committed.
 */
static int
writer_append (struct repo_writer *w, const struct rec *recs, size_t n,
               const void *stored)
{
  uint64_t off0, total = 0;
  size_t i;

  pthread_mutex_lock (&w->lock);
  if (w->failed)
    goto fail;
  if (w->npairs + n > w->cappairs) {
    size_t ncap = w->cappairs ? 2 * w->cappairs : 1024;
    struct pair *np;
    while (ncap < w->npairs + n)
      ncap *= 2;
    np = realloc (w->pairs, ncap * sizeof *np);
    if (np == NULL) {
      snprintf (w->err, sizeof w->err, "out of memory");
      w->failed = true;
      goto fail;
    }
    w->pairs = np;
    w->cappairs = ncap;
  }
  off0 = w->data_end;
  for (i = 0; i < n; ++i) {
    uint8_t *e;
    if (w->spill_len + ENTRY_SIZE > IOBUF) {
      if (write_full (w->spillfd, w->spill, w->spill_len) == -1) {
        snprintf (w->err, sizeof w->err,
                  "cannot write %s/points/%s/index.unsorted: %m",
                  w->r->dir, w->tmpname);
        w->failed = true;
        goto fail;
      }
      w->spill_len = 0;
    }
    e = w->spill + w->spill_len;
    put_le64 (e, recs[i].block);
    e[8] = recs[i].kind;
    put_le32 (e + 9, recs[i].slen);
    put_le64 (e + 13, recs[i].slen ? off0 + total : 0);
    if (recs[i].kind == KIND_DATA)
      memcpy (e + 21, recs[i].sha, SHA256_LEN);
    else
      memset (e + 21, 0, SHA256_LEN);
    w->spill_len += ENTRY_SIZE;
    w->pairs[w->npairs].block = recs[i].block;
    w->pairs[w->npairs].rec = w->nrecords++;
    w->npairs++;
    total += recs[i].slen;
  }
  w->data_end += total;
  /* Allocate the file ahead of the writes: ext4 (and others) serialize
   * direct writes that extend a file or fill holes, but not those into
   * allocated space.  The commit cuts the file back to data_end.
   */
  if (w->data_end > w->alloc_end && !w->no_alloc) {
    uint64_t to = (w->data_end + PREALLOC) / PREALLOC * PREALLOC;
    if (fallocate (w->datafd, 0, w->alloc_end, to - w->alloc_end) == 0)
      w->alloc_end = to;
    else
      w->no_alloc = true;
  }
  pthread_mutex_unlock (&w->lock);

  return total ? writer_store (w, off0, stored, total) : 0;

 fail:
  pthread_mutex_unlock (&w->lock);
  errno = EIO;
  return -1;
}

/* Are len bytes from block on whole blocks of the disk (the last one
 * short only at the end of the disk)?  At most max_len bytes.
 */
static int
check_put (struct repo_writer *w, uint64_t block, size_t len, size_t max_len)
{
  uint32_t bs = w->r->block_size;
  uint64_t avail;

  if (block < w->nblocks) {
    avail = w->m.disk_size - block * bs;
    if (len > 0 && len <= max_len && len <= avail &&
        (len == avail || len % bs == 0))
      return 0;
  }
  writer_fail (w, "block %" PRIu64 " of %zu bytes is outside the disk "
               "(%" PRIu64 " bytes, block size %" PRIu32 ")", block, len,
               w->m.disk_size, bs);
  errno = EINVAL;
  return -1;
}

int
repo_writer_put_data (struct repo_writer *w, uint64_t block, const void *buf,
                      size_t len)
{
  struct rec rec = { .block = block, .kind = KIND_DATA, .slen = len };
  struct scratch *s = NULL;
  const void *stored = buf;
  int ret;

  if (check_put (w, block, len, w->r->block_size) == -1)
    return -1;
  if (sha256_buf (buf, len, rec.sha) == -1) {
    writer_fail (w, "SHA-256 failed (gnutls)");
    return -1;
  }
  if (w->m.compressed) {
    size_t c;
    s = pool_get (&w->pool);
    if (s == NULL) {
      writer_fail (w, "out of memory");
      errno = ENOMEM;
      return -1;
    }
    if (s->cctx == NULL)
      s->cctx = ZSTD_createCCtx ();
    if (s->cctx != NULL) {
      c = ZSTD_compressCCtx (s->cctx, s->a, w->pool.size, buf, len,
                             ZSTD_LEVEL);
      if (!ZSTD_isError (c) && c < len) {
        stored = s->a;
        rec.slen = c;
      }
    }
  }
  ret = writer_append (w, &rec, 1, stored);
  if (s)
    pool_put (&w->pool, s);
  return ret;
}

int
repo_writer_put_data_run (struct repo_writer *w, uint64_t block,
                          const void *buf, size_t len)
{
  uint32_t bs = w->r->block_size;
  size_t n = len / bs + (len % bs != 0), i;
  struct rec stack[16], *recs = stack;
  int ret;

  if (check_put (w, block, len, SIZE_MAX) == -1)
    return -1;
  if (w->m.compressed || n == 1) {
    for (i = 0; i < n; ++i) {
      size_t l = len - i * bs < bs ? len - i * bs : bs;
      if (repo_writer_put_data (w, block + i, (const char *) buf + i * bs,
                                l) == -1)
        return -1;
    }
    return 0;
  }
  if (n > sizeof stack / sizeof stack[0] &&
      (recs = malloc (n * sizeof *recs)) == NULL) {
    writer_fail (w, "out of memory");
    errno = ENOMEM;
    return -1;
  }
  for (i = 0; i < n; ++i) {
    recs[i].block = block + i;
    recs[i].kind = KIND_DATA;
    recs[i].slen = len - i * bs < bs ? len - i * bs : bs;
    if (sha256_buf ((const char *) buf + i * bs, recs[i].slen,
                    recs[i].sha) == -1) {
      writer_fail (w, "SHA-256 failed (gnutls)");
      ret = -1;
      goto out;
    }
  }
  ret = writer_append (w, recs, n, buf);
 out:
  if (recs != stack)
    free (recs);
  return ret;
}

int
repo_writer_put_zero (struct repo_writer *w, uint64_t block)
{
  if (block >= w->nblocks) {
    writer_fail (w, "block %" PRIu64 " is outside the disk (%" PRIu64
                 " bytes)", block, w->m.disk_size);
    errno = EINVAL;
    return -1;
  }
  struct rec rec = { .block = block, .kind = KIND_ZERO };
  return writer_append (w, &rec, 1, NULL);
}

static int
compare_pair (const void *av, const void *bv)
{
  const struct pair *a = av, *b = bv;

  if (a->block != b->block)
    return a->block < b->block ? -1 : 1;
  return a->rec < b->rec ? -1 : a->rec > b->rec;
}

/* Write the sorted index (last record of a block wins). */
static int
writer_write_index (struct repo_writer *w)
{
  uint8_t *recs = NULL, *out = NULL, hdr[INDEX_HDR];
  size_t outlen = 0, i;
  uint64_t count = 0, spill_size = w->nrecords * ENTRY_SIZE;
  gnutls_hash_hd_t h = NULL;
  int fd = -1, ret = -1;

  if (write_full (w->spillfd, w->spill, w->spill_len) == -1)
    goto err;
  w->spill_len = 0;
  if (spill_size > 0) {
    recs = mmap (NULL, spill_size, PROT_READ, MAP_PRIVATE, w->spillfd, 0);
    if (recs == MAP_FAILED) {
      recs = NULL;
      goto err;
    }
  }
  qsort (w->pairs, w->npairs, sizeof *w->pairs, compare_pair);
  for (i = 0; i < w->npairs; ++i)
    if (i + 1 == w->npairs || w->pairs[i + 1].block != w->pairs[i].block)
      count++;
  out = malloc (IOBUF);
  if (out == NULL || gnutls_hash_init (&h, GNUTLS_DIG_SHA256) < 0)
    goto err;
  fd = openat (w->dirfd, "index", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600);
  if (fd == -1)
    goto err;
  memset (hdr, 0, sizeof hdr);
  memcpy (hdr, INDEX_MAGIC, 8);
  put_le32 (hdr + 8, INDEX_VERSION);
  put_le32 (hdr + 12, ENTRY_SIZE);
  put_le64 (hdr + 16, count);
  put_le32 (hdr + 24, w->r->block_size);
  memcpy (out, hdr, INDEX_HDR);
  outlen = INDEX_HDR;
  for (i = 0; i < w->npairs; ++i) {
    if (i + 1 < w->npairs && w->pairs[i + 1].block == w->pairs[i].block)
      continue;
    if (outlen + ENTRY_SIZE > IOBUF) {
      gnutls_hash (h, out, outlen);
      if (write_full (fd, out, outlen) == -1)
        goto err;
      outlen = 0;
    }
    memcpy (out + outlen, recs + w->pairs[i].rec * ENTRY_SIZE, ENTRY_SIZE);
    outlen += ENTRY_SIZE;
  }
  gnutls_hash (h, out, outlen);
  gnutls_hash_deinit (h, w->m.index_sha);
  h = NULL;
  memcpy (out + outlen, w->m.index_sha, SHA256_LEN);
  outlen += SHA256_LEN;
  if (write_full (fd, out, outlen) == -1 || fsync (fd) == -1)
    goto err;
  w->m.blocks = count;
  ret = 0;
 err:
  if (ret == -1 && errno == 0)
    errno = ENOMEM;
  {
    int saved = errno;
    if (h) gnutls_hash_deinit (h, NULL);
    if (fd >= 0) close (fd);
    if (recs) munmap (recs, spill_size);
    free (out);
    errno = saved;
  }
  return ret;
}

/* Write a file inside the temp dir (the directory rename is the commit,
 * so no temp name is needed here).
 */
static int
write_file_at (int dirfd, const char *name, const void *buf, size_t len)
{
  int fd = openat (dirfd, name, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0600);
  int saved;

  if (fd == -1)
    return -1;
  if (write_full (fd, buf, len) == -1 || fsync (fd) == -1) {
    saved = errno;
    close (fd);
    errno = saved;
    return -1;
  }
  return close (fd);
}

static uint64_t
next_sequence (struct repo *r)
{
  struct manifest *a;
  size_t n, i;
  uint64_t max = 0;

  if (manifest_all (r, &a, &n, true, NULL, 0) == -1)
    return 1;
  for (i = 0; i < n; ++i)
    if (a[i].sequence > max)
      max = a[i].sequence;
  free (a);
  return max + 1;
}

int
repo_writer_commit (struct repo_writer *w, char *err, size_t errlen)
{
  struct repo *r = w->r;
  char buf[2048];
  size_t len;
  const char *step;
  bool locked = false;

  if (w->failed) {
    seterr (err, errlen, "%s", w->err);
    goto fail;
  }
  errno = 0;
  step = "write the index";
  if (writer_write_index (w) == -1)
    goto ioerr;
  close (w->spillfd);
  w->spillfd = -1;
  unlinkat (w->dirfd, "index.unsorted", 0);
  step = "cut the data file to its size";
  if (w->alloc_end > w->data_end && ftruncate (w->datafd, w->data_end) == -1)
    goto ioerr;
  step = "sync the data";
  if (fsync (w->datafd) == -1)
    goto ioerr;
  w->m.data_size = w->data_end;

  if (!w->caller_locked) {
    if (lock_points (r, err, errlen) == -1)
      goto fail;
    locked = true;
  }
  if (!w->merge)
    w->m.sequence = next_sequence (r);
  len = manifest_format (&w->m, buf, sizeof buf);
  step = "write the manifest";
  if (write_file_at (w->dirfd, "manifest", buf, len) == -1)
    goto ioerr;
  step = "sync the point directory";
  if (fsync (w->dirfd) == -1)
    goto ioerr;
  step = "rename the point into place";
  if (!w->merge) {
    if (renameat2 (r->pointsfd, w->tmpname, r->pointsfd, w->m.name,
                   RENAME_NOREPLACE) == -1) {
      if (errno == EEXIST || errno == ENOTEMPTY) {
        seterr (err, errlen, "a restore point named %s already exists in %s "
                "(created while this backup ran)", w->m.name, r->dir);
        goto fail;
      }
      if (errno != EINVAL && errno != ENOSYS)
        goto ioerr;
      /* Filesystem without RENAME_NOREPLACE: we hold the lock. */
      if (faccessat (r->pointsfd, w->m.name, F_OK, AT_SYMLINK_NOFOLLOW)
          == 0) {
        seterr (err, errlen, "a restore point named %s already exists in %s",
                w->m.name, r->dir);
        goto fail;
      }
      if (renameat (r->pointsfd, w->tmpname, r->pointsfd, w->m.name) == -1)
        goto ioerr;
    }
    w->tmpname[0] = '\0';         /* nothing to remove any more */
  }
  else {
    /* Merge: swap the new combined point with the old one atomically;
     * the old one is then under the temp name and removed below.
     */
    if (renameat2 (r->pointsfd, w->tmpname, r->pointsfd, w->m.name,
                   RENAME_EXCHANGE) == -1) {
      char old[REPO_NAME_MAX + 32];
      if (errno != EINVAL && errno != ENOSYS)
        goto ioerr;
      /* No RENAME_EXCHANGE: a crash between these two renames leaves
       * .old-NAME-PID, which repo_clean_tmp renames back.
       */
      snprintf (old, sizeof old, ".old-%s-%ld", w->m.name, (long) getpid ());
      if (renameat (r->pointsfd, w->m.name, r->pointsfd, old) == -1)
        goto ioerr;
      if (renameat (r->pointsfd, w->tmpname, r->pointsfd, w->m.name) == -1) {
        int saved = errno;
        renameat (r->pointsfd, old, r->pointsfd, w->m.name);
        errno = saved;
        goto ioerr;
      }
      fsync (r->pointsfd);
      remove_flat_dir (r->pointsfd, old);
      w->tmpname[0] = '\0';
    }
  }
  step = "sync the points directory";
  if (fsync (r->pointsfd) == -1)
    (void) fsync (r->pointsfd);
  if (locked)
    unlock_points (r);
  writer_free (w, true);        /* merge: removes the old point */
  return 0;

 ioerr:
  seterr (err, errlen, "cannot %s of point %s in %s/points/%s: %s", step,
          w->m.name, r->dir, w->tmpname, strerror (errno ? errno : EIO));
 fail:
  if (locked)
    unlock_points (r);
  writer_free (w, true);
  errno = EIO;
  return -1;
}

void
repo_writer_abort (struct repo_writer *w)
{
  if (w)
    writer_free (w, true);
}

/* ---------------------------------------------------------------- reader */

/* One point of a chain, loaded. */
struct member {
  struct manifest m;
  uint64_t eff;                 /* bytes visible through newer points */
  uint64_t base;                /* global number of its first entry */
  uint8_t *idx;                 /* mmap of the index file */
  size_t idxlen;
  int datafd;
};

struct repo_reader {
  struct repo *r;
  uint32_t bs;
  uint64_t size, nblocks;
  size_t n;                     /* members, newest first */
  struct member *mem;
  uint32_t *map;                /* per block: global entry + 1, 0 = zero */
  struct pool pool;
};

static const uint8_t *
member_entry (const struct member *mb, uint64_t i)
{
  return mb->idx + INDEX_HDR + i * ENTRY_SIZE;
}

static void
member_unload (struct member *mb)
{
  if (mb->idx)
    munmap (mb->idx, mb->idxlen);
  mb->idx = NULL;
  if (mb->datafd >= 0)
    close (mb->datafd);
  mb->datafd = -1;
}

static bool
header_padding_zero (const uint8_t *hdr)
{
  size_t i;

  for (i = 16; i < DATA_HDR; ++i)
    if (hdr[i] != 0)
      return false;
  return true;
}

/* Open and check a point's index and data file (not the block data).
 * Checks the structure of every entry.
 */
static int
member_load (struct repo *r, const char *name, struct member *mb,
             char *err, size_t errlen)
{
  char path[REPO_NAME_MAX + 32];
  int fd;
  struct stat st;
  uint8_t sha[SHA256_LEN], hdr[DATA_HDR];
  uint64_t nb, i, prev = 0;
  const char *bad = NULL;

  memset (mb, 0, sizeof *mb);
  mb->datafd = -1;
  if (manifest_read (r, name, &mb->m, err, errlen) == -1)
    return -1;
  if (mb->m.block_size != r->block_size) {
    seterr (err, errlen, "restore point %s has block size %" PRIu32 " but "
            "the repository %s has %" PRIu32 " (a point copied from another "
            "repository?)", name, mb->m.block_size, r->dir, r->block_size);
    errno = EINVAL;
    return -1;
  }
  nb = blocks_of (mb->m.disk_size, r->block_size);

  snprintf (path, sizeof path, "%s/index", name);
  fd = openat (r->pointsfd, path, O_RDONLY|O_CLOEXEC);
  if (fd == -1 || fstat (fd, &st) == -1) {
    seterr (err, errlen, "restore point %s is damaged: cannot open "
            "%s/points/%s: %m", name, r->dir, path);
    if (fd >= 0) close (fd);
    return -1;
  }
  mb->idxlen = st.st_size;
  if (mb->idxlen != INDEX_HDR + mb->m.blocks * ENTRY_SIZE + SHA256_LEN) {
    bad = "its size does not match the manifest's block count";
    close (fd);
    goto bad;
  }
  mb->idx = mmap (NULL, mb->idxlen, PROT_READ, MAP_PRIVATE, fd, 0);
  close (fd);
  if (mb->idx == MAP_FAILED) {
    mb->idx = NULL;
    seterr (err, errlen, "cannot map %s/points/%s: %m", r->dir, path);
    return -1;
  }
  if (memcmp (mb->idx, INDEX_MAGIC, 8) != 0) {
    bad = "no NBDSNAPI magic";
    goto bad;
  }
  if (get_le32 (mb->idx + 8) != INDEX_VERSION) {
    seterr (err, errlen, "%s/points/%s has format version %" PRIu32 "; this "
            "nbdsnap reads version %d", r->dir, path,
            get_le32 (mb->idx + 8), INDEX_VERSION);
    errno = EINVAL;
    goto fail;
  }
  if (get_le32 (mb->idx + 12) != ENTRY_SIZE ||
      get_le64 (mb->idx + 16) != mb->m.blocks ||
      get_le32 (mb->idx + 24) != r->block_size ||
      get_le32 (mb->idx + 28) != 0) {
    bad = "its header does not match the manifest";
    goto bad;
  }
  if (sha256_buf (mb->idx, mb->idxlen - SHA256_LEN, sha) == -1 ||
      memcmp (sha, mb->idx + mb->idxlen - SHA256_LEN, SHA256_LEN) != 0 ||
      memcmp (sha, mb->m.index_sha, SHA256_LEN) != 0) {
    bad = "SHA-256 mismatch";
    goto bad;
  }
  for (i = 0; i < mb->m.blocks; ++i) {
    const uint8_t *e = member_entry (mb, i);
    uint64_t b = get_le64 (e), off = get_le64 (e + 13);
    uint32_t slen = get_le32 (e + 9);
    if ((i > 0 && b <= prev) || b >= nb ||
        (e[8] == KIND_DATA &&
         (slen == 0 || slen > block_len (mb->m.disk_size, r->block_size, b) ||
          (slen < block_len (mb->m.disk_size, r->block_size, b) &&
           !mb->m.compressed) ||
          off < DATA_HDR || off > mb->m.data_size ||
          slen > mb->m.data_size - off)) ||
        (e[8] == KIND_ZERO && (slen != 0 || off != 0)) ||
        (e[8] != KIND_DATA && e[8] != KIND_ZERO)) {
      seterr (err, errlen, "restore point %s is damaged: entry %" PRIu64
              " (block %" PRIu64 ") of %s/points/%s is invalid; run "
              "'nbdsnap verify %s'", name, i, b, r->dir, path, r->dir);
      errno = EIO;
      goto fail;
    }
    prev = b;
  }

  snprintf (path, sizeof path, "%s/data", name);
  mb->datafd = openat (r->pointsfd, path, O_RDONLY|O_CLOEXEC);
  if (mb->datafd == -1 || fstat (mb->datafd, &st) == -1) {
    seterr (err, errlen, "restore point %s is damaged: cannot open "
            "%s/points/%s: %m", name, r->dir, path);
    goto fail;
  }
  if ((uint64_t) st.st_size != mb->m.data_size) {
    seterr (err, errlen, "restore point %s is damaged: %s/points/%s has %"
            PRIu64 " bytes, the manifest says %" PRIu64 " (%s)",
            name, r->dir, path, (uint64_t) st.st_size, mb->m.data_size,
            (uint64_t) st.st_size < mb->m.data_size ? "truncated"
            : "bytes were appended");
    errno = EIO;
    goto fail;
  }
  if (pread_full (mb->datafd, hdr, DATA_HDR, 0) == -1 ||
      memcmp (hdr, DATA_MAGIC, 8) != 0 ||
      get_le32 (hdr + 8) != DATA_VERSION ||
      get_le32 (hdr + 12) != r->block_size ||
      !header_padding_zero (hdr)) {
    seterr (err, errlen, "restore point %s is damaged: %s/points/%s has no "
            "valid NBDSNAPD header", name, r->dir, path);
    errno = EIO;
    goto fail;
  }
  return 0;

 bad:
  seterr (err, errlen, "restore point %s is damaged: %s/points/%s is not a "
          "valid index (%s); run 'nbdsnap verify %s'", name, r->dir, path,
          bad, r->dir);
  errno = EIO;
 fail:
  {
    int saved = errno;
    member_unload (mb);
    errno = saved;
  }
  return -1;
}

/* Read, decompress and check one data entry of a member into out (room
 * for block_size bytes); *len gets the block's length in that point.
 */
static int
member_read_entry (struct repo *r, const struct member *mb,
                   const uint8_t *e, struct scratch *s, void *out,
                   uint32_t *len, const char *asked, char *err, size_t errlen)
{
  uint64_t b = get_le64 (e), off = get_le64 (e + 13);
  uint32_t slen = get_le32 (e + 9);
  uint32_t lo = block_len (mb->m.disk_size, r->block_size, b);
  uint8_t sha[SHA256_LEN];
  char via[REPO_NAME_MAX + 32] = "";

  if (asked && strcmp (asked, mb->m.name) != 0)
    snprintf (via, sizeof via, " (read for point %s)", asked);
  if (slen == lo) {
    if (pread_full (mb->datafd, out, lo, off) == -1) {
      seterr (err, errlen, "restore point %s block %" PRIu64 "%s: cannot "
              "read %s/points/%s/data at offset %" PRIu64 ": %m",
              mb->m.name, b, via, r->dir, mb->m.name, off);
      return -1;
    }
  }
  else {
    size_t d;
    if (pread_full (mb->datafd, s->a, slen, off) == -1) {
      seterr (err, errlen, "restore point %s block %" PRIu64 "%s: cannot "
              "read %s/points/%s/data at offset %" PRIu64 ": %m",
              mb->m.name, b, via, r->dir, mb->m.name, off);
      return -1;
    }
    if (s->dctx == NULL && (s->dctx = ZSTD_createDCtx ()) == NULL) {
      seterr (err, errlen, "out of memory");
      errno = ENOMEM;
      return -1;
    }
    d = ZSTD_decompressDCtx (s->dctx, out, lo, s->a, slen);
    if (ZSTD_isError (d) || d != lo) {
      seterr (err, errlen, "restore point %s block %" PRIu64 "%s is "
              "damaged: the compressed data in %s/points/%s/data at offset %"
              PRIu64 " does not decompress (%s)", mb->m.name, b, via, r->dir,
              mb->m.name, off,
              ZSTD_isError (d) ? ZSTD_getErrorName (d) : "wrong length");
      errno = EIO;
      return -1;
    }
  }
  if (sha256_buf (out, lo, sha) == -1 ||
      memcmp (sha, e + 21, SHA256_LEN) != 0) {
    seterr (err, errlen, "restore point %s block %" PRIu64 "%s is damaged: "
            "SHA-256 mismatch in %s/points/%s/data at offset %" PRIu64 "%s%s%s",
            mb->m.name, b, via, r->dir, mb->m.name, off,
            asked ? " (run 'nbdsnap verify " : "", asked ? r->dir : "",
            asked ? "')" : "");
    errno = EIO;
    return -1;
  }
  *len = lo;
  return 0;
}

struct repo_reader *
repo_reader_open (struct repo *r, const char *point, char *err, size_t errlen)
{
  struct repo_reader *rd;
  char name[REPO_NAME_MAX + 1];
  char why[128];
  size_t cap = 0, i, j;
  uint64_t total = 0, b;

  if (!repo_name_valid (point, why, sizeof why)) {
    seterr (err, errlen, "invalid restore point name '%s': %s", point, why);
    errno = EINVAL;
    return NULL;
  }
  rd = calloc (1, sizeof *rd);
  if (rd == NULL) {
    seterr (err, errlen, "out of memory");
    return NULL;
  }
  rd->r = r;
  rd->bs = r->block_size;
  pool_init (&rd->pool, r->block_size);
  snprintf (name, sizeof name, "%s", point);

  /* Load the chain, newest first. */
  for (;;) {
    struct member *mb;
    if (rd->n == cap) {
      struct member *nm;
      cap = cap ? 2 * cap : 8;
      nm = realloc (rd->mem, cap * sizeof *nm);
      if (nm == NULL) {
        seterr (err, errlen, "out of memory");
        goto fail;
      }
      rd->mem = nm;
    }
    mb = &rd->mem[rd->n];
    if (member_load (r, name, mb, err, errlen) == -1) {
      if (rd->n > 0 && errno == ENOENT) {
        seterr (err, errlen, "the chain of restore point %s is broken: its "
                "ancestor %s (parent of %s) is missing from %s", point, name,
                rd->mem[rd->n - 1].m.name, r->dir);
        errno = ENOENT;
      }
      else if (rd->n > 0) {
        size_t l = strlen (err);
        snprintf (err + l, errlen - l, " (needed by restore point %s)",
                  point);
      }
      goto fail;
    }
    rd->n++;
    for (j = 0; j + 1 < rd->n; ++j)
      if (strcmp (rd->mem[j].m.name, mb->m.name) == 0) {
        seterr (err, errlen, "the chain of restore point %s is damaged: it "
                "loops at %s", point, mb->m.name);
        errno = EIO;
        goto fail;
      }
    mb->eff = rd->n == 1 ? mb->m.disk_size
      : (mb->m.disk_size < mb[-1].eff ? mb->m.disk_size : mb[-1].eff);
    mb->base = total;
    total += mb->m.blocks;
    if (mb->m.full)
      break;
    if (rd->n >= MAX_CHAIN) {
      seterr (err, errlen, "the chain of restore point %s is longer than %d "
              "points", point, MAX_CHAIN);
      errno = EIO;
      goto fail;
    }
    snprintf (name, sizeof name, "%s", mb->m.parent);
  }
  if (total >= UINT32_MAX) {
    seterr (err, errlen, "the chain of restore point %s has too many blocks "
            "(%" PRIu64 "); merge it", point, total);
    errno = EFBIG;
    goto fail;
  }

  /* Per-block owner map: newest covering entry wins. */
  rd->size = rd->mem[0].m.disk_size;
  rd->nblocks = blocks_of (rd->size, rd->bs);
  if (rd->nblocks > SIZE_MAX / sizeof (uint32_t)) {
    seterr (err, errlen, "disk too large");
    errno = EFBIG;
    goto fail;
  }
  rd->map = malloc ((rd->nblocks ? rd->nblocks : 1) * sizeof (uint32_t));
  if (rd->map == NULL) {
    seterr (err, errlen, "out of memory for the block map of %" PRIu64
            " blocks", rd->nblocks);
    goto fail;
  }
  for (b = 0; b < rd->nblocks; ++b)
    rd->map[b] = UINT32_MAX;
  for (i = 0; i < rd->n; ++i) {
    struct member *mb = &rd->mem[i];
    uint64_t lim = blocks_of (mb->eff, rd->bs);
    for (j = 0; j < mb->m.blocks; ++j) {
      const uint8_t *e = member_entry (mb, j);
      b = get_le64 (e);
      if (b >= lim)
        break;                  /* sorted */
      if (rd->map[b] == UINT32_MAX)
        rd->map[b] = e[8] == KIND_DATA ? mb->base + j + 1 : 0;
    }
  }
  for (b = 0; b < rd->nblocks; ++b)
    if (rd->map[b] == UINT32_MAX)
      rd->map[b] = 0;
  return rd;

 fail:
  {
    int saved = errno;
    repo_reader_close (rd);
    errno = saved;
  }
  return NULL;
}

void
repo_reader_close (struct repo_reader *rd)
{
  size_t i;

  if (rd == NULL)
    return;
  for (i = 0; i < rd->n; ++i)
    member_unload (&rd->mem[i]);
  free (rd->mem);
  free (rd->map);
  pool_destroy (&rd->pool);
  free (rd);
}

uint64_t
repo_reader_size (const struct repo_reader *rd)
{
  return rd->size;
}

uint32_t
repo_reader_block_size (const struct repo_reader *rd)
{
  return rd->bs;
}

uint64_t
repo_reader_blocks (const struct repo_reader *rd)
{
  return rd->nblocks;
}

int
repo_reader_kind (struct repo_reader *rd, uint64_t block)
{
  if (block >= rd->nblocks)
    return REPO_BLOCK_ZERO;
  return rd->map[block] ? REPO_BLOCK_DATA : REPO_BLOCK_ZERO;
}

/* The member holding global entry g (binary search over bases). */
static struct member *
reader_member (struct repo_reader *rd, uint64_t g)
{
  size_t lo = 0, hi = rd->n;    /* bases ascend with i */

  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if (rd->mem[mid].base <= g)
      lo = mid;
    else
      hi = mid;
  }
  return &rd->mem[lo];
}

const char *
repo_reader_owner (struct repo_reader *rd, uint64_t block)
{
  if (block >= rd->nblocks || rd->map[block] == 0)
    return NULL;
  return reader_member (rd, rd->map[block] - 1)->m.name;
}

int
repo_reader_read (struct repo_reader *rd, uint64_t block, void *buf,
                  char *err, size_t errlen)
{
  uint32_t len, lo, vis;
  uint64_t g;
  struct member *mb;
  struct scratch *s;
  int ret;

  if (block >= rd->nblocks) {
    seterr (err, errlen, "block %" PRIu64 " is beyond the end of restore "
            "point %s", block, rd->mem[0].m.name);
    errno = EINVAL;
    return -1;
  }
  len = block_len (rd->size, rd->bs, block);
  if (rd->map[block] == 0) {
    memset (buf, 0, len);
    return 0;
  }
  g = rd->map[block] - 1;
  mb = reader_member (rd, g);
  s = pool_get (&rd->pool);
  if (s == NULL) {
    seterr (err, errlen, "out of memory");
    errno = ENOMEM;
    return -1;
  }
  /* Bytes of the owner's block visible through all newer points. */
  lo = block_len (mb->m.disk_size, rd->bs, block);
  vis = block_len (mb->eff, rd->bs, block);
  if (vis > lo) vis = lo;
  if (vis > len) vis = len;
  if (lo == len && vis == len)          /* the common case: no copy */
    ret = member_read_entry (rd->r, mb, member_entry (mb, g - mb->base), s,
                             buf, &lo, rd->mem[0].m.name, err, errlen);
  else {
    ret = member_read_entry (rd->r, mb, member_entry (mb, g - mb->base), s,
                             s->b, &lo, rd->mem[0].m.name, err, errlen);
    if (ret == 0) {
      memcpy (buf, s->b, vis);
      memset ((char *) buf + vis, 0, len - vis);
    }
  }
  pool_put (&rd->pool, s);
  return ret;
}

/* ---------------------------------------------------------------- verify */

struct vctx {
  void (*report) (const char *line, void *opaque);
  void *opaque;
  int problems;
};

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

  if (member_load (r, name, &mb, err, sizeof err) == -1) {
    vreport (v, "%s", err);
    return;
  }
  pool_init (&pool, r->block_size);
  s = pool_get (&pool);
  if (s == NULL) {
    vreport (v, "out of memory verifying %s", name);
    goto out;
  }
  for (i = 0; i < mb.m.blocks; ++i) {
    const uint8_t *e = member_entry (&mb, i);
    uint32_t lo;
    if (e[8] != KIND_DATA)
      continue;
    if (member_read_entry (r, &mb, e, s, s->b, &lo, NULL, err,
                           sizeof err) == -1)
      vreport (v, "%s", err);
  }
 out:
  if (s)
    pool_put (&pool, s);
  pool_destroy (&pool);
  member_unload (&mb);
}

/* Check that a point's chain is complete (parent exists, ends at a full
 * point, same block size, no loops).
 */
static void
verify_chain (struct repo *r, const struct manifest *all, size_t n,
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

int
repo_verify (struct repo *r, const char *point,
             void (*report) (const char *line, void *opaque), void *opaque)
{
  struct vctx v = { report, opaque, 0 };
  struct manifest *all = NULL, m;
  size_t n = 0, i;
  char err[1024];
  DIR *d;
  struct dirent *de;
  int fd;

  if (point) {
    /* The point and its ancestors. */
    char name[REPO_NAME_MAX + 1];
    size_t depth = 0;

    if (!repo_name_valid (point, NULL, 0)) {
      vreport (&v, "invalid restore point name '%s'", point);
      return -1;
    }
    snprintf (name, sizeof name, "%s", point);
    if (manifest_all (r, &all, &n, true, NULL, 0) == -1)
      return -1;
    for (;;) {
      if (manifest_read (r, name, &m, err, sizeof err) == -1) {
        if (depth == 0 && errno == ENOENT) {
          vreport (&v, "%s", err);
          free (all);
          return -1;            /* unknown point: not a verify result */
        }
        if (depth > 0 && errno == ENOENT)
          vreport (&v, "the chain of restore point %s is broken: %s is "
                   "missing", point, name);
        else
          vreport (&v, "%s", err);
        break;
      }
      verify_point (r, name, &v);
      if (m.full)
        break;
      if (++depth > n) {
        vreport (&v, "the chain of restore point %s loops", point);
        break;
      }
      snprintf (name, sizeof name, "%s", m.parent);
    }
    free (all);
    return v.problems;
  }

  /* All points: every directory, then every chain. */
  fd = openat (r->pointsfd, ".", O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (fd == -1 || (d = fdopendir (fd)) == NULL) {
    if (fd >= 0) close (fd);
    return -1;
  }
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
  if (manifest_all (r, &all, &n, true, NULL, 0) == -1)
    return -1;
  for (i = 0; i < n; ++i)
    verify_chain (r, all, n, &all[i], &v);
  free (all);
  return v.problems;
}

/* ----------------------------------------------------------------- clean */

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
  DIR *d;
  struct dirent *de;
  int fd, count = 0;
  char name[256];

  if (lock_points (r, err, errlen) == -1)
    return -1;
  fd = openat (r->pointsfd, ".", O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (fd == -1 || (d = fdopendir (fd)) == NULL) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
    if (fd >= 0) close (fd);
    unlock_points (r);
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
  unlock_points (r);
  return count;
}

/* ---------------------------------------------------------------- delete */

/* Remove a point directory: rename to .del-NAME-PID (atomic), sync,
 * remove the files.
 */
static int
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

/* Names of the points whose parent is point (comma separated in out). */
static int
dependents (struct repo *r, const char *point, const char *except,
            char *out, size_t outlen)
{
  struct manifest *all;
  size_t n, i, l = 0;
  int count = 0;

  out[0] = '\0';
  if (manifest_all (r, &all, &n, true, NULL, 0) == -1)
    return -1;
  for (i = 0; i < n; ++i) {
    if (all[i].full || strcmp (all[i].parent, point) != 0)
      continue;
    if (except && strcmp (all[i].name, except) == 0)
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
  char why[128], deps[512];
  int n;

  if (!repo_name_valid (point, why, sizeof why)) {
    seterr (err, errlen, "invalid restore point name '%s': %s", point, why);
    errno = EINVAL;
    return -1;
  }
  if (lock_points (r, err, errlen) == -1)
    return -1;
  if (faccessat (r->pointsfd, point, F_OK, AT_SYMLINK_NOFOLLOW) == -1) {
    seterr (err, errlen, "restore point %s does not exist in %s", point,
            r->dir);
    errno = ENOENT;
    goto fail;
  }
  n = dependents (r, point, NULL, deps, sizeof deps);
  if (n == -1) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
    goto fail;
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
    goto fail;
  }
  if (remove_point (r, point) == -1) {
    seterr (err, errlen, "cannot remove %s/points/%s: %m", r->dir, point);
    goto fail;
  }
  unlock_points (r);
  return 0;

 fail:
  {
    int saved = errno;
    unlock_points (r);
    errno = saved;
  }
  return -1;
}

/* ----------------------------------------------------------------- merge */

/* Copy one stored entry of member mb to the writer unchanged. */
static int
merge_copy (struct repo_writer *w, const struct member *mb, const uint8_t *e,
            struct scratch *s, char *err, size_t errlen)
{
  uint64_t off = get_le64 (e + 13);
  struct rec rec = { .block = get_le64 (e), .kind = e[8],
                     .slen = get_le32 (e + 9) };

  if (e[8] == KIND_ZERO)
    return writer_append (w, &rec, 1, NULL);
  /* Check the block before copying it: never propagate damage. */
  {
    uint32_t lo;
    if (member_read_entry (w->r, mb, e, s, s->b, &lo, NULL, err,
                           errlen) == -1)
      return -1;
  }
  if (pread_full (mb->datafd, s->a, rec.slen, off) == -1) {
    seterr (err, errlen, "cannot read %s/points/%s/data: %m", w->r->dir,
            mb->m.name);
    return -1;
  }
  memcpy (rec.sha, e + 21, SHA256_LEN);
  if (writer_append (w, &rec, 1, s->a) == -1) {
    seterr (err, errlen, "%s", w->err);
    return -1;
  }
  return 0;
}

int
repo_merge (struct repo *r, const char *point, char *err, size_t errlen)
{
  struct member c, p;
  struct manifest m;
  struct repo_writer *w = NULL;
  struct repo_reader *rd = NULL;
  struct scratch *s = NULL;
  char why[128], deps[512];
  uint64_t nb, b, ci = 0, pi = 0, special_from;
  uint32_t bs = r->block_size;
  bool c_loaded = false, p_loaded = false;
  int ret = -1, nd;

  if (!repo_name_valid (point, why, sizeof why)) {
    seterr (err, errlen, "invalid restore point name '%s': %s", point, why);
    errno = EINVAL;
    return -1;
  }
  /* Hold the lock throughout: a concurrent merge or delete must not
   * remove the grandparent the combined point will name as its parent.
   */
  if (lock_points (r, err, errlen) == -1)
    return -1;
  if (member_load (r, point, &c, err, errlen) == -1) {
    unlock_points (r);
    return -1;
  }
  c_loaded = true;
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
  /* A reader of the child resolves the cases where sizes cut blocks. */
  rd = repo_reader_open (r, point, err, errlen);
  if (rd == NULL)
    goto out;

  memset (&m, 0, sizeof m);
  strcpy (m.name, c.m.name);
  strcpy (m.checkpoint, c.m.checkpoint);
  m.full = p.m.full;
  strcpy (m.kind, p.m.kind);
  strcpy (m.parent, p.m.parent);
  strcpy (m.since, p.m.since);
  m.disk_size = c.m.disk_size;
  m.compressed = c.m.compressed || p.m.compressed;
  m.created = c.m.created;
  m.sequence = c.m.sequence;
  w = writer_start (r, &m, err, errlen);
  if (w == NULL)
    goto out;
  w->merge = true;
  w->caller_locked = true;
  s = pool_get (&w->pool);
  if (s == NULL) {
    seterr (err, errlen, "out of memory");
    goto out;
  }

  /* Walk both sorted indexes.  Blocks in neither need attention only
   * from special_from on: where the parent's smaller disk hid the
   * grandparent's data (which the combined point must hide explicitly).
   */
  nb = blocks_of (c.m.disk_size, bs);
  special_from = !m.full && p.m.disk_size < c.m.disk_size
    ? p.m.disk_size / bs : UINT64_MAX;
  for (b = 0; b < nb; ++b) {
    const uint8_t *ce = ci < c.m.blocks ? member_entry (&c, ci) : NULL;
    const uint8_t *pe;
    uint64_t cb = ce ? get_le64 (ce) : UINT64_MAX, pb, next;

    while (pi < p.m.blocks && get_le64 (member_entry (&p, pi)) < b)
      pi++;
    pe = pi < p.m.blocks ? member_entry (&p, pi) : NULL;
    pb = pe ? get_le64 (pe) : UINT64_MAX;
    next = cb < pb ? cb : pb;
    if (b < special_from && special_from < next)
      next = special_from;
    if (b < special_from && next > b)
      b = next;
    if (b >= nb)
      break;

    if (cb == b) {                      /* the child's block wins */
      if (merge_copy (w, &c, ce, s, err, errlen) == -1)
        goto out;
      ci++;
    }
    else if (b * bs >= p.m.disk_size) { /* beyond the parent's disk */
      if (!m.full && repo_writer_put_zero (w, b) == -1)
        goto werr;
    }
    else if (pb == b && (pe[8] == KIND_ZERO ||
                         block_len (p.m.disk_size, bs, b) ==
                         block_len (c.m.disk_size, bs, b))) {
      if (merge_copy (w, &p, pe, s, err, errlen) == -1)
        goto out;
    }
    else if (pb == b || p.m.disk_size % bs != 0) {
      /* A block cut by a size change: rebuild it as the child sees it. */
      uint32_t len = block_len (c.m.disk_size, bs, b);
      if (repo_reader_read (rd, b, s->b, err, errlen) == -1)
        goto out;
      if (repo_writer_put_data (w, b, s->b, len) == -1)
        goto werr;
    }
  }
  pool_put (&w->pool, s);
  s = NULL;

  /* Commit swaps the combined point in for the child. */
  if (repo_writer_commit (w, err, errlen) == -1) {
    w = NULL;
    goto out;
  }
  w = NULL;

  /* The parent goes once nothing else depends on it. */
  nd = dependents (r, p.m.name, NULL, deps, sizeof deps);
  if (nd == 0)
    remove_point (r, p.m.name);
  ret = 0;
  goto out;

 werr:
  seterr (err, errlen, "%s", w->err[0] ? w->err : "cannot write the merged "
          "point");
 out:
  if (s)
    pool_put (&w->pool, s);
  if (w)
    repo_writer_abort (w);
  repo_reader_close (rd);
  if (c_loaded) member_unload (&c);
  if (p_loaded) member_unload (&p);
  unlock_points (r);
  if (ret == -1 && errno == 0)
    errno = EIO;
  return ret;
}
