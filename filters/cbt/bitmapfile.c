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

/* Replace checkpoint c's bitmap file (see tracker-internal.h). */
int
bm_write (struct ckpt *c, const struct ckpt *extra, bool sealed)
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
  int r, e;

  if (buf == NULL)
    return -1;
  binhdr_put (buf, &h);
  for (i = 0; i < nw; ++i) {
    uint64_t w = __atomic_load_n (&c->bits.words[i], __ATOMIC_ACQUIRE);
    if (extra)
      w |= __atomic_load_n (&extra->bits.words[i], __ATOMIC_ACQUIRE);
    put_le64 (buf + BINHDR_SIZE + 8 * i, w);
  }
  if (sealed && binhdr_seal (buf, len) == -1) {
    free (buf);
    errno = EIO;
    return -1;
  }
  bm_name (c->id, name, sizeof name);
  r = statefile_write (T.dirfd, name, buf, len);
  e = errno;
  if (r != -1)
    c->open_on_disk = !sealed;
  free (buf);
  errno = e;
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
  bool sealed;

  bm_name (c->id, name, sizeof name);
  if (statefile_read (T.dirfd, name, &buf, &len) == -1) {
    snprintf (why, whylen, "%s: %s", name, strerror (errno));
    return -1;
  }
  p = (const uint8_t *) buf;
  if (binhdr_check ((uint8_t *) buf, len, BM_MAGIC, BM_VERSION, open_ok,
                    name, "bitmap", &h, &sealed, why, whylen) == -1)
    goto err;
  c->open_on_disk = !sealed;
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

/* Open c's bitmap file for in-place writes. */
int
bm_open (struct ckpt *c)
{
  char name[64];
  int fd;

  bm_name (c->id, name, sizeof name);
  fd = openat (T.dirfd, name, O_RDWR|O_NOFOLLOW|O_CLOEXEC);
  if (fd == -1)
    return -1;
  if (c->fd >= 0)
    close (c->fd);              /* a replaced file: its errors are moot */
  c->fd = fd;
  return 0;
}

/* c is the active bitmap now: its file holds every bit it has. */
void
bm_make_active (struct ckpt *c)
{
  memcpy (T.durable.words, c->bits.words,
          payload_words (T.g.nblocks) * sizeof (uint64_t));
  memset (T.dirty_pages.words, 0,
          payload_words (T.dirty_pages.nbits) * sizeof (uint64_t));
}

/* Make c the active bitmap on disk: write it open, keep an fd, and
 * start the persistence state (mark.c) from its bits.
 */
int
bm_activate (struct ckpt *c)
{
  int r = bm_write (c, NULL, false), e;

  if (r == -1)
    return -1;
  e = errno;
  if (bm_open (c) == -1)
    return -1;
  bm_make_active (c);
  errno = e;
  return r;
}

/* Seal c: write it with its checksum, close the in-place fd. */
int
bm_seal (struct ckpt *c)
{
  int r = bm_write (c, NULL, true);

  if (r == -1)
    return -1;
  if (c->fd >= 0)
    close (c->fd);              /* the file it wrote was just replaced */
  c->fd = -1;
  return r;
}

/* Remove checkpoint id's bitmap file. */
int
bm_unlink (uint64_t id)
{
  char name[64];

  bm_name (id, name, sizeof name);
  return unlinkat (T.dirfd, name, 0);
}

/* Free checkpoint c (NULL: nothing). */
void
ckpt_free (struct ckpt *c)
{
  if (c == NULL)
    return;
  if (c->fd >= 0)
    close (c->fd);              /* sealed, replaced or given up: moot */
  bitset_free (&c->bits);
  free (c);
}
