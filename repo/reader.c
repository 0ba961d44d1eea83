/* nbdsnap repository: reading the disk at a point through its chain.
 *
 * Opening a reader loads every point of the chain (member.c) and builds
 * one table entry per block naming the entry that gives it
 * (docs/repository-format.md, section 8); a read is then a lookup, a
 * binary search over the chain and one checked entry read.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repo-internal.h"

/* The longest chain a reader loads. */
#define MAX_CHAIN 100000

struct repo_reader {
  struct repo *r;
  struct geom g;                /* the disk at the point */
  size_t n;                     /* members, newest first */
  struct member *mem;
  uint32_t *map;                /* per block: global entry + 1, 0 = zero */
  struct pool pool;
};

/* Load the chain of point into rd->mem, newest first.  -1 with err and
 * errno.
 */
static int
reader_load_chain (struct repo_reader *rd, const char *point,
                   char *err, size_t errlen)
{
  struct repo *r = rd->r;
  char name[REPO_NAME_MAX + 1];
  size_t cap = 0, j;
  uint64_t total = 0;

  snprintf (name, sizeof name, "%s", point);
  for (;;) {
    struct member *mb;
    if (rd->n == cap) {
      struct member *nm;
      cap = cap ? 2 * cap : 8;
      nm = realloc (rd->mem, cap * sizeof *nm);
      if (nm == NULL) {
        seterr (err, errlen, "out of memory");
        return -1;
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
      return -1;
    }
    rd->n++;
    for (j = 0; j + 1 < rd->n; ++j)
      if (strcmp (rd->mem[j].m.name, mb->m.name) == 0) {
        seterr (err, errlen, "the chain of restore point %s is damaged: it "
                "loops at %s", point, mb->m.name);
        errno = EIO;
        return -1;
      }
    if (rd->n > 1 && mb[-1].eff.disk_size < mb->eff.disk_size)
      geom_init (&mb->eff, mb[-1].eff.disk_size, r->block_size);
    mb->base = total;
    total += mb->m.blocks;
    if (mb->m.full)
      break;
    if (rd->n >= MAX_CHAIN) {
      seterr (err, errlen, "the chain of restore point %s is longer than %d "
              "points", point, MAX_CHAIN);
      errno = EIO;
      return -1;
    }
    snprintf (name, sizeof name, "%s", mb->m.parent);
  }
  if (total >= UINT32_MAX) {
    seterr (err, errlen, "the chain of restore point %s has too many blocks "
            "(%" PRIu64 "); merge it", point, total);
    errno = EFBIG;
    return -1;
  }
  return 0;
}

/* Build rd->map: for each block, the newest entry covering it.  -1 with
 * err and errno.
 */
static int
reader_build_map (struct repo_reader *rd, char *err, size_t errlen)
{
  uint64_t nblocks = rd->g.nblocks, b, j;
  size_t i;

  if (nblocks > SIZE_MAX / sizeof (uint32_t)) {
    seterr (err, errlen, "disk too large");
    errno = EFBIG;
    return -1;
  }
  rd->map = malloc ((nblocks ? nblocks : 1) * sizeof (uint32_t));
  if (rd->map == NULL) {
    seterr (err, errlen, "out of memory for the block map of %" PRIu64
            " blocks", nblocks);
    return -1;
  }
  for (b = 0; b < nblocks; ++b)
    rd->map[b] = UINT32_MAX;
  for (i = 0; i < rd->n; ++i) {
    struct member *mb = &rd->mem[i];
    for (j = 0; j < mb->m.blocks; ++j) {
      const uint8_t *e = member_entry (mb, j);
      b = get_le64 (e + ENTRY_BLOCK);
      if (b >= mb->eff.nblocks)
        break;                  /* sorted */
      if (rd->map[b] == UINT32_MAX)
        rd->map[b] = e[ENTRY_KIND] == KIND_DATA ? mb->base + j + 1 : 0;
    }
  }
  for (b = 0; b < nblocks; ++b)
    if (rd->map[b] == UINT32_MAX)
      rd->map[b] = 0;
  return 0;
}

struct repo_reader *
repo_reader_open (struct repo *r, const char *point, char *err, size_t errlen)
{
  struct repo_reader *rd;
  char why[128];
  int saved;

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
  pool_init (&rd->pool, r->block_size);
  if (reader_load_chain (rd, point, err, errlen) == -1)
    goto fail;
  rd->g = rd->mem[0].g;
  if (reader_build_map (rd, err, errlen) == -1)
    goto fail;
  return rd;

 fail:
  saved = errno;
  repo_reader_close (rd);
  errno = saved;
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
  return rd->g.disk_size;
}

uint32_t
repo_reader_block_size (const struct repo_reader *rd)
{
  return rd->g.block_size;
}

uint64_t
repo_reader_blocks (const struct repo_reader *rd)
{
  return rd->g.nblocks;
}

int
repo_reader_kind (const struct repo_reader *rd, uint64_t block)
{
  if (block >= rd->g.nblocks)
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

int
repo_reader_read (struct repo_reader *rd, uint64_t block, void *buf,
                  char *err, size_t errlen)
{
  uint32_t len, lo, vis;
  uint64_t g;
  const struct member *mb;
  const uint8_t *e;
  const char *asked = rd->mem[0].m.name;
  struct scratch *s;
  int ret;

  if (block >= rd->g.nblocks) {
    seterr (err, errlen, "block %" PRIu64 " is beyond the end of restore "
            "point %s", block, asked);
    errno = EINVAL;
    return -1;
  }
  len = geom_block_len (&rd->g, block);
  if (rd->map[block] == 0) {
    memset (buf, 0, len);
    return 0;
  }
  g = rd->map[block] - 1;
  mb = reader_member (rd, g);
  e = member_entry (mb, g - mb->base);
  s = pool_get (&rd->pool);
  if (s == NULL) {
    seterr (err, errlen, "out of memory");
    errno = ENOMEM;
    return -1;
  }
  /* Bytes of the owner's block visible through all newer points. */
  lo = geom_block_len (&mb->g, block);
  vis = min64 (min64 (geom_block_len (&mb->eff, block), lo), len);
  if (lo == len && vis == len)          /* the common case: no copy */
    ret = member_read_entry (rd->r, mb, e, s, buf, asked, err, errlen);
  else {
    ret = member_read_entry (rd->r, mb, e, s, s->b, asked, err, errlen);
    if (ret == 0) {
      memcpy (buf, s->b, vis);
      memset ((char *) buf + vis, 0, len - vis);
    }
  }
  pool_put (&rd->pool, s);
  return ret;
}
