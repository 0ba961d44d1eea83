/* nbdsnap repository: a point's manifest (points/NAME/manifest).
 *
 * A kvtext file (common/kvtext.h) whose lines come in a fixed order
 * (docs/repository-format.md, section 5): written by the commit of a
 * point, read before anything else of a point is used.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvtext.h"
#include "repo-internal.h"

/* The lines after "version", in their order. */
enum {
  M_NAME, M_KIND, M_PARENT, M_CHECKPOINT, M_SINCE, M_SEQUENCE, M_DISK_SIZE,
  M_BLOCK_SIZE, M_COMPRESSION, M_CREATED, M_BLOCKS, M_DATA_SIZE,
  M_INDEX_SHA, M_NKEYS
};
static const char *const manifest_keys[M_NKEYS] = {
  "name", "kind", "parent", "checkpoint", "since", "sequence", "disk-size",
  "block-size", "compression", "created", "blocks", "data-size",
  "index-sha256"
};

void
format_time (int64_t t, char *out, size_t len)
{
  time_t tt = t;
  struct tm tm;

  gmtime_r (&tt, &tm);
  strftime (out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Parse a time format_time wrote.  0, or -1 if s is not one. */
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

ssize_t
manifest_format (const struct manifest *m, char *buf)
{
  char t[64], ih[2 * SHA256_LEN + 1];
  size_t len;

  format_time (m->created, t, sizeof t);
  hex_encode (m->index_sha, SHA256_LEN, ih);
  len = snprintf (buf, MANIFEST_MAX - KV_SHA_LINE_LEN - 1,
                  POINT_MAGIC "\n"
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
  if (kv_sha_line (buf, len, buf + len) == -1)
    return -1;
  return len + KV_SHA_LINE_LEN;
}

/* A name value into dst: "" for "-".  -1 if it is no valid name. */
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

/* Fill m from the values of the lines after "version" (in the order of
 * manifest_keys).  NULL, or what is wrong.
 */
static const char *
manifest_values (struct manifest *m, char *const v[M_NKEYS])
{
  if (copy_name (m->name, v[M_NAME]) == -1 || m->name[0] == '\0')
    return "invalid name";
  if (strcmp (v[M_KIND], "full") == 0)
    m->full = true;
  else if (strcmp (v[M_KIND], "incremental") != 0)
    return "invalid kind";
  strcpy (m->kind, v[M_KIND]);
  if (copy_name (m->parent, v[M_PARENT]) == -1 ||
      m->full != (m->parent[0] == '\0'))
    return "invalid parent";
  if (copy_name (m->checkpoint, v[M_CHECKPOINT]) == -1)
    return "invalid checkpoint";
  if (copy_name (m->since, v[M_SINCE]) == -1)
    return "invalid since";
  if (kv_u64 (v[M_SEQUENCE], &m->sequence) == -1)
    return "invalid sequence";
  if (kv_u64 (v[M_DISK_SIZE], &m->disk_size) == -1 ||
      m->disk_size > INT64_MAX)
    return "invalid disk-size";
  if (kv_u32 (v[M_BLOCK_SIZE], &m->block_size) == -1 ||
      !geom_block_size_ok (m->block_size))
    return "invalid block-size";
  if (strcmp (v[M_COMPRESSION], "zstd") == 0)
    m->compressed = true;
  else if (strcmp (v[M_COMPRESSION], "none") != 0)
    return "invalid compression";
  if (parse_time (v[M_CREATED], &m->created) == -1)
    return "invalid created";
  if (kv_u64 (v[M_BLOCKS], &m->blocks) == -1)
    return "invalid blocks";
  if (kv_u64 (v[M_DATA_SIZE], &m->data_size) == -1 ||
      m->data_size < DATA_HDR)
    return "invalid data-size";
  if (strlen (v[M_INDEX_SHA]) != 2 * SHA256_LEN ||
      hex_decode (v[M_INDEX_SHA], m->index_sha, SHA256_LEN) == -1)
    return "invalid index-sha256";
  return NULL;
}

/* manifest_read; *damaged (if not NULL) tells a manifest that was read
 * and is damaged, of another version or missing from its point (the
 * point is unusable) from one that could not be read (out of memory, an
 * I/O error: nothing is known about the point).
 */
static int
manifest_load (struct repo *r, const char *dirname, struct manifest *m,
               char *err, size_t errlen, bool *damaged)
{
  char path[REPO_NAME_MAX + 32], *buf = NULL, *ver, *v[M_NKEYS], why[128];
  struct kv_reader kv;
  size_t len, i;
  uint64_t u;
  const char *bad = why;
  bool dummy;

  if (damaged == NULL)
    damaged = &dummy;
  *damaged = true;              /* the -1 returns that are not, say so */
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
    else {
      seterr (err, errlen, "cannot read %s/points/%s: %m", r->dir, path);
      *damaged = false;
    }
    return -1;
  }
  if (len < sizeof POINT_MAGIC ||
      memcmp (buf, POINT_MAGIC "\n", sizeof POINT_MAGIC) != 0) {
    bad = "it does not start with '" POINT_MAGIC "'";
    goto bad;
  }
  if (kv_begin (&kv, buf, len, POINT_MAGIC, why, sizeof why) == -1 ||
      (ver = kv_expect (&kv, "version", why, sizeof why)) == NULL)
    goto bad;
  if (kv_u64 (ver, &u) == -1 || u != POINT_VERSION) {
    seterr (err, errlen, "%s/points/%s has format version %s; this nbdsnap "
            "reads version %d (use a matching nbdsnap)", r->dir, path, ver,
            POINT_VERSION);
    free (buf);
    errno = EINVAL;
    return -1;
  }
  for (i = 0; i < M_NKEYS; ++i)
    if ((v[i] = kv_expect (&kv, manifest_keys[i], why, sizeof why)) == NULL)
      goto bad;
  if (!kv_at_end (&kv)) {
    snprintf (why, sizeof why, "line %u: unexpected", kv.line + 1);
    goto bad;
  }
  if ((bad = manifest_values (m, v)) != NULL)
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

int
manifest_read (struct repo *r, const char *dirname, struct manifest *m,
               char *err, size_t errlen)
{
  return manifest_load (r, dirname, m, err, errlen, NULL);
}

/* The public description of the point of m. */
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

int
manifest_all (struct repo *r, struct manifest **out, size_t *n, bool skip_bad,
              char *err, size_t errlen)
{
  DIR *d;
  struct dirent *de;
  struct manifest *a = NULL, *na;
  size_t cnt = 0, cap = 0;
  bool damaged;

  d = points_opendir (r);
  if (d == NULL) {
    seterr (err, errlen, "cannot read %s/points: %m", r->dir);
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
    if (!repo_name_valid (de->d_name, NULL, 0)) {
      if (skip_bad)
        continue;
      seterr (err, errlen, "%s/points/%s is not a restore point (invalid "
              "name): move it out of the repository", r->dir, de->d_name);
      goto fail;
    }
    if (manifest_load (r, de->d_name, &a[cnt], err, errlen, &damaged)
        == -1) {
      /* A point that vanished meanwhile (a concurrent delete) is no
       * error; one that could not be read (out of memory, I/O) always
       * is: skipping it would hide a child from delete or a sequence
       * number from the next commit.
       */
      if (errno == ENOENT && faccessat (r->pointsfd, de->d_name, F_OK,
                                        AT_SYMLINK_NOFOLLOW) == -1)
        continue;
      if (skip_bad && damaged)
        continue;
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

/* Order of repo_list: by sequence, then by name. */
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
  if (cnt > 1)                  /* a is NULL when there is none */
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

uint64_t
next_sequence (struct repo *r, char *err, size_t errlen)
{
  struct manifest *a;
  size_t n, i;
  uint64_t max = 0;

  if (manifest_all (r, &a, &n, true, err, errlen) == -1)
    return 0;
  for (i = 0; i < n; ++i)
    if (a[i].sequence > max)
      max = a[i].sequence;
  free (a);
  if (max == UINT64_MAX) {
    seterr (err, errlen, "a manifest in %s has the largest sequence number "
            "possible (damaged?); run 'nbdsnap verify %s'", r->dir, r->dir);
    errno = EOVERFLOW;
    return 0;
  }
  return max + 1;
}
