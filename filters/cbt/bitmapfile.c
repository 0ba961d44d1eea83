/* nbdsnap cbt filter: the bitmap files, bitmap-ID.bits.
 *
 * The common 80-byte header (common/binhdr.h) followed by one record per
 * leaf of the sparse bitmap that has a bit set: the leaf number + 1,
 * then its 4096 bytes of 64-bit little-endian words (docs/cbt-format.md
 * section 5).  So the file follows the written data, not the disk size.
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
#define BM_VERSION 2             /* 1: dense (refused, section 5.5) */

/* The file name of checkpoint id's bitmap. */
static void
bm_name (uint64_t id, char *buf, size_t len)
{
  snprintf (buf, len, "bitmap-%" PRIu64 ".bits", id);
}

/* Does leaf l of c (or of extra) have a bit set? */
static bool
leaf_used (const struct ckpt *c, const struct ckpt *extra, size_t l)
{
  return !sbm_leaf_empty (&c->bits, l) ||
    (extra && l < extra->bits.nleaves && !sbm_leaf_empty (&extra->bits, l));
}

/* Replace checkpoint c's bitmap file (see tracker-internal.h): the
 * header, then one record per leaf with a bit set, in leaf order.  The
 * bitmaps do not change meanwhile (gate held, or no writer yet).
 */
int
bm_write (struct ckpt *c, const struct ckpt *extra, bool sealed)
{
  size_t nl = c->bits.nleaves, l, n = 0, k = 0, i;
  size_t len;
  uint8_t *buf;
  uint64_t *foff = NULL;
  struct binhdr h = {
    .magic = BM_MAGIC, .version = BM_VERSION, .block_size = T.g.block_size,
    .id = c->id, .nblocks = T.g.nblocks, .disk_size = T.g.disk_size,
  };
  char name[64];
  int r, e;

  for (l = 0; l < nl; ++l)
    n += leaf_used (c, extra, l);
  len = BINHDR_SIZE + n * REC_BYTES;
  buf = malloc (len);
  if (!sealed)
    foff = calloc (nl ? nl : 1, sizeof *foff);
  if (buf == NULL || (!sealed && foff == NULL)) {
    free (buf);
    free (foff);
    errno = ENOMEM;
    return -1;
  }
  h.payload_len = n * REC_BYTES;
  binhdr_put (buf, &h);
  for (l = 0; l < nl && k < n; ++l) {
    uint8_t *rec = buf + BINHDR_SIZE + k * REC_BYTES;

    if (!leaf_used (c, extra, l))
      continue;
    put_le64 (rec, l + 1);
    for (i = 0; i < LEAF_WORDS; ++i) {
      uint64_t w = sbm_word (&c->bits, l, i);
      if (extra && l < extra->bits.nleaves)
        w |= sbm_word (&extra->bits, l, i);
      put_le64 (rec + 8 + 8 * i, w);
    }
    if (foff)
      foff[l] = BINHDR_SIZE + k * REC_BYTES;
    k++;
  }
  if (sealed && binhdr_seal (buf, len) == -1) {
    free (buf);
    errno = EIO;
    return -1;
  }
  bm_name (c->id, name, sizeof name);
  r = statefile_write (T.dirfd, name, buf, len);
  e = errno;
  if (r != -1) {
    c->open_on_disk = !sealed;
    free (c->foff);
    c->foff = foff;             /* NULL if sealed */
    c->fend = len;
    foff = NULL;
  }
  free (foff);
  free (buf);
  errno = e;
  return r;
}

/* Are the n bytes at p zero? */
static bool
all_zero (const uint8_t *p, size_t n)
{
  while (n--)
    if (*p++)
      return false;
  return true;
}

/* OR the records of [p, p+len) into c's bits (nblocks blocks in the
 * file).  tail: records appended to an open file, where a torn last
 * append may have left a partial record or a zero leaf number (bits of
 * writes that were never acknowledged in strict mode: skipped).  -1
 * with a reason in why.
 */
static int
load_records (struct ckpt *c, const uint8_t *p, size_t len, bool tail,
              uint64_t nblocks, const char *name, char *why, size_t whylen)
{
  size_t nl = sbm_nleaves (nblocks), off, i;

  if (!tail && len % REC_BYTES != 0) {
    snprintf (why, whylen, "%s: truncated or wrong length", name);
    return -1;
  }
  for (off = 0; off + REC_BYTES <= len; off += REC_BYTES) {
    uint64_t l1 = get_le64 (p + off), *leaf;
    const uint8_t *q = p + off + 8;

    if (tail && l1 == 0)
      continue;
    if (l1 == 0 || l1 > nl) {
      snprintf (why, whylen, "%s: a leaf record is out of range (damaged)",
                name);
      return -1;
    }
    /* Bits beyond the last block must be clear. */
    if (l1 == nl && nblocks % LEAF_BITS) {
      uint64_t used = nblocks % LEAF_BITS;
      size_t w0 = used / 64;
      if ((used % 64 && get_le64 (q + 8 * w0) >> (used % 64)) ||
          !all_zero (q + 8 * (w0 + (used % 64 != 0)),
                     LEAF_BYTES - 8 * (w0 + (used % 64 != 0)))) {
        snprintf (why, whylen, "%s: bits beyond the end of the disk "
                  "(damaged)", name);
        return -1;
      }
    }
    if (all_zero (q, LEAF_BYTES))
      continue;
    leaf = sbm_leaf_alloc (&c->bits, l1 - 1);
    if (leaf == NULL) {
      snprintf (why, whylen, "out of memory");
      return -1;
    }
    for (i = 0; i < LEAF_WORDS; ++i)
      leaf[i] |= get_le64 (q + 8 * i);
  }
  return 0;
}

/* Load checkpoint c's bitmap file (see tracker-internal.h). */
int
bm_load (struct ckpt *c, uint64_t old_nblocks, bool open_ok,
         char *why, size_t whylen)
{
  char name[64];
  char *buf = NULL;
  size_t len, check_len;
  struct binhdr h;
  const uint8_t *p;
  bool sealed;

  bm_name (c->id, name, sizeof name);
  if (statefile_read (T.dirfd, name, &buf, &len) == -1) {
    snprintf (why, whylen, "%s: %s", name, strerror (errno));
    return -1;
  }
  p = (const uint8_t *) buf;
  if (len >= BINHDR_SIZE && memcmp (p, BM_MAGIC, 8) == 0 &&
      get_le32 (p + 8) < BM_VERSION) {
    snprintf (why, whylen, "%s: bitmap format %" PRIu32 " of an older "
              "nbdsnap (dense bitmaps); this cbt filter reads format %d "
              "only and does not convert old cbt-dirs", name,
              get_le32 (p + 8), BM_VERSION);
    goto err;
  }
  /* An open file may have records appended after the payload its
   * header states (section 5.4).
   */
  check_len = len;
  if (open_ok && len >= BINHDR_SIZE &&
      all_zero (p + BINHDR_SUM_OFFSET, SHA256_LEN) &&
      get_le64 (p + 40) <= len - BINHDR_SIZE)
    check_len = BINHDR_SIZE + get_le64 (p + 40);
  if (binhdr_check ((uint8_t *) buf, check_len, BM_MAGIC, BM_VERSION,
                    open_ok, name, "bitmap", &h, &sealed, why, whylen) == -1)
    goto err;
  c->open_on_disk = !sealed;
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
  if (sbm_init (&c->bits, T.g.nblocks) == -1) {
    snprintf (why, whylen, "out of memory");
    goto err;
  }
  if (load_records (c, p + BINHDR_SIZE, h.payload_len, false, h.nblocks,
                    name, why, whylen) == -1 ||
      load_records (c, p + check_len, len - check_len, true, h.nblocks,
                    name, why, whylen) == -1)
    goto err;
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

/* c is the active bitmap now: its file holds every bit it has (no
 * writer in flight).  T.durable starts empty (so that nothing here
 * allocates): the first write to each leaf that has bits already costs
 * one round, which records the leaf as durable.
 */
void
bm_make_active (struct ckpt *c __attribute__ ((unused)))
{
  sbm_clear (&T.durable);
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
  sbm_free (&c->bits);
  free (c->foff);
  free (c);
}
