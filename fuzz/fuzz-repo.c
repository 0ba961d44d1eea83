/* libFuzzer harness: a repository point as a hostile or damaged disk
 * would hand it to the repository library (repo/).  The input is one
 * point's three files:
 *
 *   byte 0     mode: bit 0 repairs the checksums after the split (the
 *              index trailer, the manifest's index-sha256 line and its
 *              final sha256 line), so that mutations get past them
 *   u32 LE     length of the manifest, then the manifest
 *   u32 LE     length of the index, then the index
 *   rest       the data file
 *
 * They are written as points/P of a repository with 4 KiB blocks in a
 * scratch directory, then listed, verified and read block by block
 * through the public API.  Whatever the bytes, the library must answer
 * "damaged" or read them: never crash, hang or read out of bounds.
 */
#include <config.h>

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "kvtext.h"
#include "repo.h"
#include "statefile.h"

int LLVMFuzzerTestOneInput (const unsigned char *data, size_t size);

static char dir[64];

/* Remove the scratch repository at exit (libFuzzer exits through exit()). */
static void
remove_dir (void)
{
  char cmd[128];

  if (dir[0] && strncmp (dir, "/dev/shm/nbdsnap-fuzz-repo-", 27) == 0) {
    snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system (cmd) != 0)
      fprintf (stderr, "fuzz-repo: could not remove %s\n", dir);
  }
}

static void
put (const char *name, const void *buf, size_t len)
{
  char path[128];
  int fd;

  snprintf (path, sizeof path, "%s/points/P/%s", dir, name);
  fd = open (path, O_WRONLY|O_CREAT|O_TRUNC, 0600);
  if (fd == -1) {
    perror (path);
    abort ();
  }
  if (len && write_full (fd, buf, len) == -1) {
    perror (path);
    abort ();
  }
  close (fd);
}

/* Repair the checksums of manifest m (mlen bytes, room for more) over
 * index ix.  Returns the new manifest length.
 */
static size_t
repair (char *m, size_t mlen, uint8_t *ix, size_t ixlen)
{
  uint8_t sum[SHA256_LEN];
  char hex[2 * SHA256_LEN + 1], *p, *end;
  size_t body;

  if (ixlen >= 32 + SHA256_LEN) {
    sha256_buf (ix, ixlen - SHA256_LEN, ix + ixlen - SHA256_LEN);
    memcpy (sum, ix + ixlen - SHA256_LEN, SHA256_LEN);
    hex_encode (sum, SHA256_LEN, hex);
    p = memmem (m, mlen, "index-sha256 ", 13);
    if (p && (size_t) (p - m) + 13 + 64 <= mlen)
      memcpy (p + 13, hex, 64);
  }
  /* Drop a final sha256 line if there is one, append a correct one. */
  end = m + mlen;
  body = mlen;
  if (mlen >= KV_SHA_LINE_LEN &&
      memcmp (end - KV_SHA_LINE_LEN, "sha256 ", 7) == 0)
    body = mlen - KV_SHA_LINE_LEN;
  kv_sha_line (m, body, m + body);
  return body + KV_SHA_LINE_LEN;
}

static void
ignore (const char *line, void *opaque)
{
}

int
LLVMFuzzerTestOneInput (const unsigned char *data, size_t size)
{
  uint32_t mlen, ixlen;
  const unsigned char *dat;
  size_t datlen;
  const unsigned char *p = data;
  char *m;
  uint8_t *ix;
  char err[512];
  struct repo *r;

  if (dir[0] == '\0') {
    snprintf (dir, sizeof dir, "/dev/shm/nbdsnap-fuzz-repo-%d", getpid ());
    mkdir (dir, 0700);
    atexit (remove_dir);
    if (repo_init (dir, 4096, err, sizeof err) == -1) {
      fprintf (stderr, "fuzz-repo: %s\n", err);
      abort ();
    }
  }
  if (size < 9)
    return 0;
  mlen = get_le32 (p + 1);
  if (mlen > size - 9)
    return 0;
  ixlen = get_le32 (p + 5 + mlen);
  if (ixlen > size - 9 - mlen)
    return 0;
  dat = p + 9 + mlen + ixlen;
  datlen = size - 9 - mlen - ixlen;
  m = malloc (mlen + KV_SHA_LINE_LEN + 1);
  ix = malloc (ixlen + 1);
  if (m == NULL || ix == NULL)
    abort ();
  memcpy (m, p + 5, mlen);
  memcpy (ix, p + 9 + mlen, ixlen);
  if (data[0] & 1)
    mlen = repair (m, mlen, ix, ixlen);

  {
    char path[128];
    snprintf (path, sizeof path, "%s/points/P", dir);
    mkdir (path, 0700);
  }
  put ("manifest", m, mlen);
  put ("index", ix, ixlen);
  put ("data", dat, datlen);
  free (m);
  free (ix);

  r = repo_open (dir, err, sizeof err);  /* the repository file is ours */
  if (r == NULL)
    abort ();
  {
    struct repo_point_info *pts;
    size_t n;
    if (repo_list (r, &pts, &n, err, sizeof err) == 0)
      free (pts);
  }
  repo_verify (r, NULL, ignore, NULL);
  {
    struct repo_reader *rd = repo_reader_open (r, "P", err, sizeof err);
    if (rd) {
      uint64_t b, nb = repo_reader_blocks (rd);
      char *buf = malloc (repo_reader_block_size (rd));
      for (b = 0; buf && b < nb && b < 4096; ++b)
        if (repo_reader_kind (rd, b) == REPO_BLOCK_DATA)
          repo_reader_read (rd, b, buf, err, sizeof err);
      free (buf);
      repo_reader_close (rd);
    }
  }
  repo_close (r);
  return 0;
}
