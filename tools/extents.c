/* nbdsnap tool: which parts of a disk hold data: the server's
 * base:allocation extents, and zero blocks in what was read.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "nbdsnap.h"

/* What get_extents collects. */
struct extents_ctx {
  struct extent *v;
  size_t n, cap;
  uint64_t size, end;           /* disk size; end of what we have */
};

/* Append the extents of one reply (clipped to the disk, merged). */
static int
extent_cb (void *opaque, const char *metacontext, uint64_t offset,
           uint32_t *entries, size_t nr_entries, int *error)
{
  struct extents_ctx *c = opaque;
  size_t i;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  if (offset != c->end) {       /* not where we asked */
    *error = EPROTO;
    return -1;
  }
  for (i = 0; i + 1 < nr_entries && c->end < c->size; i += 2) {
    uint64_t len = entries[i];
    uint32_t type = entries[i + 1] & 3;
    if (len == 0)
      break;
    if (len > c->size - c->end)
      len = c->size - c->end;
    if (c->n && c->v[c->n - 1].type == type)
      c->v[c->n - 1].length += len;
    else {
      if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        struct extent *v = realloc (c->v, cap * sizeof *v);
        if (v == NULL) {
          *error = ENOMEM;
          return -1;
        }
        c->v = v;
        c->cap = cap;
      }
      c->v[c->n++] = (struct extent) { c->end, len, type };
    }
    c->end += len;
  }
  return 0;
}

/* Ask block status in pieces of at most 1G until all of [0, size) is
 * covered.
 */
int
get_extents (struct nbd_handle *h, uint64_t size, struct extent **out,
             size_t *n, char *err, size_t errlen)
{
  struct extents_ctx c = { .size = size };

  while (c.end < size) {
    uint64_t before = c.end;
    uint64_t count = size - c.end;
    if (count > (1ULL << 30))
      count = 1ULL << 30;
    if (nbd_block_status (h, count, c.end,
                          (nbd_extent_callback) { .callback = extent_cb,
                                                  .user_data = &c },
                          0) == -1) {
      snprintf (err, errlen, "reading the extents at offset %" PRIu64
                ": %s", before, nbd_get_error ());
      free (c.v);
      return -1;
    }
    if (c.end == before) {
      snprintf (err, errlen, "the server returned no extents at offset %"
                PRIu64, before);
      free (c.v);
      return -1;
    }
  }
  *out = c.v;
  *n = c.n;
  return 0;
}

/* Compare the first 16 bytes with zero, the rest with itself shifted. */
bool
is_zero (const void *vbuf, size_t len)
{
  const unsigned char *buf = vbuf;
  size_t i;

  for (i = 0; i < len && i < 16; ++i)
    if (buf[i])
      return false;
  return len <= 16 || memcmp (buf, buf + 16, len - 16) == 0;
}

