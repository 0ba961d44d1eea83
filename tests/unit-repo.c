/* Unit tests of repo/: the text files are written byte for byte as
 * docs/repository-format.md shows them and read strictly, and a point
 * written, read, verified, merged and deleted through the library gives
 * back what was put in.  Exit 0 = pass.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvtext.h"
#include "repo-internal.h"

static int failures;

#define CHECK(cond) do {                                                \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                       \
    }                                                                   \
  } while (0)

/* The examples of docs/repository-format.md, sections 3.1 and 5.1. */
static const char doc_repository[] =
  "nbdsnap-repository\n"
  "version 1\n"
  "block-size 65536\n"
  "created 2025-01-01T02:00:00Z\n"
  "sha256 267035dc434acffdeadc2bd58dfe9aee5d8ce5b48ed003305f98a596947381d6\n";
static const char doc_manifest[] =
  "nbdsnap-point\n"
  "version 2\n"
  "name i2\n"
  "kind incremental\n"
  "parent i1\n"
  "checkpoint i2\n"
  "since i1\n"
  "sequence 3\n"
  "disk-size 8400953\n"
  "block-size 65536\n"
  "compression none\n"
  "created 2025-01-03T02:00:00Z\n"
  "blocks 3\n"
  "data-size 81977\n"
  "index-sha256 548e0746a07422eadb0d91bca6903785f5095714f839a09ca9b73f7e591f1abe\n"
  "sha256 f161d7beaf5ccacdb8e73d2dfc5d2cfd68505fabd8a6c6edabd8914f8c8cda9f\n";

static char tmpdir[] = "/tmp/unit-repo.XXXXXX";

/* Write text to tmpdir/path. */
static void
put_file (const char *path, const char *text)
{
  char full[256];
  FILE *f;

  snprintf (full, sizeof full, "%s/%s", tmpdir, path);
  f = fopen (full, "w");
  if (f == NULL || fputs (text, f) == EOF || fclose (f) == EOF)
    abort ();
}

/* text with its sha256 line replaced by a correct one (malloc'd). */
static char *
resign (const char *text)
{
  size_t n = strlen (text) - KV_SHA_LINE_LEN;
  char *t = malloc (n + KV_SHA_LINE_LEN + 1);

  memcpy (t, text, n);
  if (kv_sha_line (t, n, t + n) == -1)
    abort ();
  return t;
}

/* text with the first from replaced by to, resigned (malloc'd). */
static char *
edit (const char *text, const char *from, const char *to)
{
  char buf[4096], *p = strstr (text, from);

  if (p == NULL)
    abort ();
  snprintf (buf, sizeof buf, "%.*s%s%s", (int) (p - text), text, to,
            p + strlen (from));
  return resign (buf);
}

/* The doc's repository file opens; the doc's manifest is read and
 * written back byte for byte; variations are refused.
 */
static void
test_text_files (void)
{
  struct repo *r;
  struct manifest m;
  char err[512], buf[MANIFEST_MAX];
  ssize_t len;
  static const struct { const char *from, *to; int errnum; } bad[] = {
    { "version 2\n", "version 1\n", EINVAL },
    { "blocks 3\n", "blocks 3junk\n", EIO },
    { "blocks 3\n", "blocks 03\n", EIO },
    { "since i1\n", "since i1 \n", EIO },
    { "since i1\n", "since i1\nsince i1\n", EIO },
    { "kind incremental\n", "kind incremental\nextra 1\n", EIO },
    { "parent i1\n", "parent -\n", EIO },
    { "block-size 65536\n", "block-size 65537\n", EIO },
    { "name i2\n", "name i3\n", EIO },
    { "data-size 81977\n", "data-size 4095\n", EIO },
    { "created 2025-01-03T02:00:00Z\n", "created 2025-01-03\n", EIO },
  };
  size_t i;

  put_file ("repository", doc_repository);
  CHECK (mkdir ("points", 0700) == 0 || errno == EEXIST);
  r = repo_open (tmpdir, err, sizeof err);
  CHECK (r != NULL);
  if (r == NULL) {
    fprintf (stderr, "%s\n", err);
    return;
  }
  CHECK (repo_block_size (r) == 65536);

  CHECK (mkdir ("points/i2", 0700) == 0);
  put_file ("points/i2/manifest", doc_manifest);
  CHECK (manifest_read (r, "i2", &m, err, sizeof err) == 0);
  CHECK (strcmp (m.parent, "i1") == 0 && !m.full && m.sequence == 3 &&
         m.disk_size == 8400953 && m.blocks == 3 && m.data_size == 81977);
  len = manifest_format (&m, buf);
  CHECK (len == (ssize_t) strlen (doc_manifest) &&
         memcmp (buf, doc_manifest, len) == 0);

  for (i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
    char *t = edit (doc_manifest, bad[i].from, bad[i].to);
    put_file ("points/i2/manifest", t);
    free (t);
    errno = 0;
    if (manifest_read (r, "i2", &m, err, sizeof err) != -1 ||
        errno != bad[i].errnum) {
      fprintf (stderr, "manifest with '%s' not refused (errno %d): %s\n",
               bad[i].to, errno, err);
      failures++;
    }
  }
  put_file ("points/i2/manifest", "nbdsnap-point\nversion 2\n");
  CHECK (manifest_read (r, "i2", &m, err, sizeof err) == -1 &&
         errno == EIO && strstr (err, "restore point i2 is damaged"));
  repo_close (r);

  /* The repository file: damage and other versions. */
  put_file ("repository", "hello\n");
  CHECK (repo_open (tmpdir, err, sizeof err) == NULL &&
         strstr (err, "not an nbdsnap repository"));
  {
    char t[sizeof doc_repository], *p;
    memcpy (t, doc_repository, sizeof t);
    p = strstr (t, "65536");
    memcpy (p, "32768", 5);       /* not resigned */
    put_file ("repository", t);
    CHECK (repo_open (tmpdir, err, sizeof err) == NULL &&
           strstr (err, "repository is damaged"));
  }
  {
    char *t = edit (doc_repository, "version 1\n", "version 2\n");
    put_file ("repository", t);
    free (t);
    CHECK (repo_open (tmpdir, err, sizeof err) == NULL &&
           strstr (err, "has format version 2"));
  }
  unlink ("points/i2/manifest");
  rmdir ("points/i2");
  rmdir ("points");
  unlink ("repository");
}

/* A point of disk_size bytes whose block b is filled with byte b + 1,
 * except zero_block, stored as a zero.  Blocks 0 and 1 are put as one
 * run.
 */
static int
write_point (struct repo *r, const char *name, const char *parent,
             uint64_t disk_size, bool compress, uint64_t zero_block)
{
  const uint32_t bs = 65536;
  char err[512], *buf = malloc (2 * bs);
  struct repo_writer *w;
  uint64_t nb = geom_blocks (disk_size, bs), b;

  w = repo_writer_begin (r, name, parent, parent, disk_size, compress,
                         err, sizeof err);
  if (w == NULL) {
    free (buf);
    return -1;
  }
  for (b = 0; b < nb; ++b) {
    uint64_t len = min64 (bs, disk_size - b * bs);
    memset (buf, (int) b + 1, len);
    if (b == zero_block)
      CHECK (repo_writer_put_zero (w, b) == 0);
    else if (b == 0 && zero_block > 1 && nb > 2) {
      memset (buf + bs, 2, bs);
      CHECK (repo_writer_put_data_run (w, 0, buf, 2 * bs) == 0);
      b++;
    }
    else
      CHECK (repo_writer_put_data (w, b, buf, len) == 0);
  }
  free (buf);
  CHECK (repo_writer_error (w) == NULL);
  if (repo_writer_commit (w, err, sizeof err) == -1) {
    fprintf (stderr, "%s\n", err);
    return -1;
  }
  return 0;
}

/* Does point name read as write_point wrote it (blocks of a newer
 * point win, see the caller)?  zero: the blocks that read as zero.
 */
static void
check_point (struct repo *r, const char *name, uint64_t disk_size,
             uint64_t zero)
{
  const uint32_t bs = 65536;
  char err[512], *buf = malloc (bs);
  struct repo_reader *rd = repo_reader_open (r, name, err, sizeof err);
  uint64_t b, i;

  CHECK (rd != NULL);
  if (rd == NULL) {
    fprintf (stderr, "%s\n", err);
    free (buf);
    return;
  }
  CHECK (repo_reader_size (rd) == disk_size);
  CHECK (repo_reader_blocks (rd) == geom_blocks (disk_size, bs));
  for (b = 0; b < repo_reader_blocks (rd); ++b) {
    uint64_t len = min64 (bs, disk_size - b * bs);
    int want = b == zero ? 0 : (int) b + 1;
    CHECK (repo_reader_kind (rd, b) ==
           (want ? REPO_BLOCK_DATA : REPO_BLOCK_ZERO));
    CHECK (repo_reader_read (rd, b, buf, err, sizeof err) == 0);
    for (i = 0; i < len; ++i)
      if (buf[i] != want)
        break;
    CHECK (i == len);
  }
  CHECK (repo_reader_read (rd, b, buf, err, sizeof err) == -1);
  repo_reader_close (rd);
  free (buf);
}

/* Count verify's problems. */
static void
count_line (const char *line, void *opaque)
{
  (void) line;
  ++*(int *) opaque;
}

/* Write, read, verify, list, merge and delete through the library. */
static void
test_points (void)
{
  struct repo *r;
  struct repo_point_info *info, pi;
  size_t n;
  char err[512];
  int lines = 0;
  const uint64_t size1 = 4 * 65536 + 1000, size2 = 3 * 65536 - 100;

  CHECK (repo_init (tmpdir, 0, err, sizeof err) == 0);
  r = repo_open (tmpdir, err, sizeof err);
  CHECK (r != NULL);
  if (r == NULL)
    return;
  CHECK (write_point (r, "f1", NULL, size1, false, 3) == 0);
  CHECK (write_point (r, "i1", "f1", size2, true, 1) == 0);
  CHECK (write_point (r, "f1", NULL, size1, false, 3) == -1);
  {
    /* A put outside the disk fails the writer: it cannot commit. */
    struct repo_writer *w = repo_writer_begin (r, "x1", NULL, NULL, size1,
                                               false, err, sizeof err);
    CHECK (w != NULL);
    if (w) {
      CHECK (repo_writer_put_zero (w, 5) == -1);
      CHECK (repo_writer_error (w) != NULL);
      CHECK (repo_writer_commit (w, err, sizeof err) == -1 &&
             strstr (err, "outside the disk"));
    }
  }
  check_point (r, "f1", size1, 3);
  check_point (r, "i1", size2, 1);
  CHECK (repo_verify (r, NULL, count_line, &lines) == 0 && lines == 0);
  CHECK (repo_list (r, &info, &n, err, sizeof err) == 0 && n == 2 &&
         strcmp (info[0].name, "f1") == 0 &&
         strcmp (info[1].name, "i1") == 0 &&
         strcmp (info[1].parent, "f1") == 0 && info[1].compressed);
  free (info);
  CHECK (repo_delete (r, "f1", err, sizeof err) == -1 && errno == EBUSY);
  CHECK (repo_merge (r, "i1", err, sizeof err) == 0);
  CHECK (repo_point_get (r, "f1", &pi, err, sizeof err) == -1 &&
         errno == ENOENT);
  CHECK (repo_point_get (r, "i1", &pi, err, sizeof err) == 0 &&
         strcmp (pi.kind, "full") == 0);
  check_point (r, "i1", size2, 1);
  CHECK (repo_verify (r, "i1", count_line, &lines) == 0 && lines == 0);
  CHECK (repo_clean_tmp (r, err, sizeof err) == 0);
  CHECK (repo_remove_empty (r, false, err, sizeof err) == -1 &&
         errno == ENOTEMPTY);
  CHECK (repo_delete (r, "i1", err, sizeof err) == 0);
  CHECK (repo_delete (r, "i1", err, sizeof err) == -1 && errno == ENOENT);
  CHECK (repo_remove_empty (r, true, err, sizeof err) == 0);
  repo_close (r);
}

/* init on an existing repository changes nothing (it once removed an
 * empty points/ and then refused); what an interrupted init leaves is
 * taken over.
 */
static void
test_init_twice (void)
{
  struct repo *r;
  char err[512];

  CHECK (repo_init ("r", 0, err, sizeof err) == 0);
  CHECK (repo_init ("r", 0, err, sizeof err) == -1 && errno == EEXIST &&
         strstr (err, "already a repository"));
  r = repo_open ("r", err, sizeof err);
  CHECK (r != NULL);
  if (r == NULL)
    fprintf (stderr, "%s\n", err);
  else {
    struct repo_point_info *info;
    size_t n;
    CHECK (repo_list (r, &info, &n, err, sizeof err) == 0 && n == 0);
    if (n == 0)
      free (info);
    CHECK (repo_remove_empty (r, true, err, sizeof err) == 0);
    repo_close (r);
  }
  /* An interrupted init: an empty points/ and a repository.tmp. */
  CHECK (mkdir ("r", 0700) == 0 && mkdir ("r/points", 0700) == 0);
  put_file ("r/repository.tmp", "nbdsnap-repo");
  CHECK (repo_init ("r", 0, err, sizeof err) == 0);
  r = repo_open ("r", err, sizeof err);
  CHECK (r != NULL);
  if (r) {
    unlink ("r/repository.tmp");
    CHECK (repo_remove_empty (r, true, err, sizeof err) == 0);
    repo_close (r);
  }
  /* A non-empty points/ without a repository file is not taken over. */
  CHECK (mkdir ("r", 0700) == 0 && mkdir ("r/points", 0700) == 0 &&
         mkdir ("r/points/x", 0700) == 0);
  CHECK (repo_init ("r", 0, err, sizeof err) == -1 &&
         strstr (err, "not empty"));
  CHECK (rmdir ("r/points/x") == 0 && rmdir ("r/points") == 0 &&
         rmdir ("r") == 0);
}

/* A writer holds its parent: delete and merge of it are refused with
 * this process's pid until the writer is gone.
 */
static void
test_hold (void)
{
  struct repo *r;
  struct repo_writer *w;
  char err[512], pid[64];

  snprintf (pid, sizeof pid, "(pid %ld)", (long) getpid ());
  CHECK (repo_init (tmpdir, 0, err, sizeof err) == 0);
  r = repo_open (tmpdir, err, sizeof err);
  CHECK (r != NULL);
  if (r == NULL)
    return;
  CHECK (write_point (r, "f1", NULL, 65536, false, 5) == 0);
  CHECK (write_point (r, "i1", "f1", 65536, false, 5) == 0);
  w = repo_writer_begin (r, "i2", "i1", "i1", 65536, false, err, sizeof err);
  CHECK (w != NULL);
  CHECK (repo_delete (r, "i1", err, sizeof err) == -1 && errno == EBUSY &&
         strstr (err, "parent of a backup in progress") && strstr (err, pid));
  CHECK (repo_merge (r, "i1", err, sizeof err) == -1 && errno == EBUSY &&
         strstr (err, "merging would replace it") && strstr (err, pid));
  repo_writer_abort (w);
  w = repo_writer_begin (r, "i2", "f1", "f1", 65536, false, err, sizeof err);
  CHECK (w != NULL);
  /* f1 would be removed by merging i1 (its only child). */
  CHECK (repo_merge (r, "i1", err, sizeof err) == -1 && errno == EBUSY &&
         strstr (err, "merging would remove it"));
  CHECK (repo_writer_commit (w, err, sizeof err) == 0);
  /* Two children now: merging i1 keeps f1 (for i2). */
  CHECK (repo_merge (r, "i1", err, sizeof err) == 0);
  CHECK (repo_delete (r, "i1", err, sizeof err) == 0);
  CHECK (repo_delete (r, "i2", err, sizeof err) == 0);
  CHECK (repo_delete (r, "f1", err, sizeof err) == 0);
  CHECK (repo_remove_empty (r, false, err, sizeof err) == 0);
  repo_close (r);
}

int
main (void)
{
  if (mkdtemp (tmpdir) == NULL || chdir (tmpdir) == -1) {
    perror (tmpdir);
    return 1;
  }
  test_text_files ();
  test_init_twice ();
  test_hold ();
  test_points ();
  if (chdir ("/") == 0)
    rmdir (tmpdir);             /* gone already if all went well */
  if (failures) {
    fprintf (stderr, "unit-repo: %d check(s) failed (see %s)\n", failures,
             tmpdir);
    return 1;
  }
  printf ("unit-repo: all checks passed\n");
  return 0;
}
