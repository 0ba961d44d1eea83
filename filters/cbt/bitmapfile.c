/* nbdsnap cbt filter: the bitmap files, bitmap-ID.bits.
 *
 * The common 80-byte header (common/binhdr.h) followed by one bit per
 * block in 64-bit little-endian words (docs/cbt-format.md section 5).
 * A frozen bitmap is sealed (it carries its checksum); the active one is
 * open (zero checksum) while nbdkit runs, updated in place by mark.c.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "binhdr.h"
#include "statefile.h"
#include "tracker-internal.h"

#define BM_MAGIC "NBDSNAPB"
#define BM_VERSION 1

/* The file name of checkpoint id's bitmap. */
static void
bm_name (uint64_t id, char *buf, size_t len)
{
  snprintf (buf, len, "bitmap-%" PRIu64 ".bits", id);
}

/* Write checkpoint c's bitmap file atomically: sealed (with checksum) or
 * open (zero checksum, about to be updated in place).
 */
static int
bm_write (struct ckpt *c, bool sealed)
{
  size_t nw = payload_words (T.g.nblocks), i;
  size_t len = BINHDR_SIZE + nw * 8;
  uint8_t *buf = malloc (len);
  struct binhdr h = {
    .magic = BM_MAGIC, .version = BM_VERSION, .block_size = T.g.block_size,
    .id = c->id, .nblocks = T.g.nblocks, .disk_size = T.g.disk_size,
    .payload_len = nw * 8,
  };
  char name[64];
  int r;

  if (buf == NULL)
    return -1;
  binhdr_put (buf, &h);
  for (i = 0; i < nw; ++i)
    put_le64 (buf + BINHDR_SIZE + 8 * i,
              __atomic_load_n (&c->bits.words[i], __ATOMIC_ACQUIRE));
  if (sealed && binhdr_seal (buf, len) == -1) {
    free (buf);
    return -1;
  }
  bm_name (c->id, name, sizeof name);
  r = statefile_write (T.dirfd, name, buf, len);
  if (r == -2)             /* in place, directory not durable: as before */
    r = 0;
  free (buf);
  return r;
}

/* Load checkpoint c's bitmap file (see tracker-internal.h). */
int
bm_load (struct ckpt *c, uint64_t old_nblocks, bool open_ok,
         char *why, size_t whylen)
{
  char name[64];
  char *buf = NULL;
  size_t len, i, nw;
  struct binhdr h;
  const uint8_t *p;

  bm_name (c->id, name, sizeof name);
  if (statefile_read (T.dirfd, name, &buf, &len) == -1) {
    snprintf (why, whylen, "%s: %s", name, strerror (errno));
    return -1;
  }
  p = (const uint8_t *) buf;
  if (binhdr_check ((uint8_t *) buf, len, BM_MAGIC, BM_VERSION, open_ok,
                    name, "bitmap", &h, NULL, why, whylen) == -1)
    goto err;
  nw = payload_words (h.nblocks);
  if (h.payload_len != nw * 8) {
    snprintf (why, whylen, "%s: truncated or wrong length", name);
    goto err;
  }
  if (h.block_size != T.g.block_size) {
    snprintf (why, whylen, "%s: granularity %" PRIu32 " differs from the "
              "state's %" PRIu32, name, h.block_size, T.g.block_size);
    goto err;
  }
  if (h.id != c->id || h.nblocks < old_nblocks || h.nblocks > T.g.nblocks) {
    snprintf (why, whylen, "%s: belongs to another checkpoint or disk size",
              name);
    goto err;
  }
  if (bitset_init (&c->bits, T.g.nblocks) == -1) {
    snprintf (why, whylen, "out of memory");
    goto err;
  }
  for (i = 0; i < nw; ++i)
    c->bits.words[i] = get_le64 (p + BINHDR_SIZE + 8 * i);
  free (buf);
  return 0;
 err:
  free (buf);
  return -1;
}

/* Make c the active bitmap on disk: write it open, keep an fd, and
 * start the persistence state (mark.c) from its bits.
 */
int
bm_activate (struct ckpt *c)
{
  char name[64];

  if (bm_write (c, false) == -1)
    return -1;
  bm_name (c->id, name, sizeof name);
  c->fd = openat (T.dirfd, name, O_RDWR|O_CLOEXEC);
  if (c->fd == -1)
    return -1;
  memcpy (T.durable.words, c->bits.words,
          payload_words (T.g.nblocks) * sizeof (uint64_t));
  memset (T.dirty_pages.words, 0,
          payload_words (T.dirty_pages.nbits) * sizeof (uint64_t));
  return 0;
}

/* Seal c: write it with its checksum, close the in-place fd. */
int
bm_seal (struct ckpt *c)
{
  if (bm_write (c, true) == -1)
    return -1;
  if (c->fd >= 0)
    close (c->fd);
  c->fd = -1;
  return 0;
}

/* Remove checkpoint id's bitmap file. */
void
bm_unlink (uint64_t id)
{
  char name[64];

  bm_name (id, name, sizeof name);
  unlinkat (T.dirfd, name, 0);
}

/* Free checkpoint c (NULL: nothing). */
void
ckpt_free (struct ckpt *c)
{
  if (c == NULL)
    return;
  if (c->fd >= 0)
    close (c->fd);
  bitset_free (&c->bits);
  free (c);
}
