/* nbdsnap tool: backup: which blocks to copy.
 *
 * The base:allocation extents of the view read (the frozen disk for a
 * full backup, the change map @freeze:diff for an incremental one) are
 * turned into runs of repository blocks: data to read, blocks that read
 * as zero, blocks to skip; then the data runs into chunks, one read
 * request each.
 */
#include <config.h>

#include <stdlib.h>

#include <libnbd.h>

#include "backup.h"
#include "minmax.h"

/* Append n blocks of kind at block (merged with the last run if it
 * continues it); KIND_NONE adds nothing.
 */
static int
add_run (struct backup *b, uint64_t block, uint64_t n, int kind)
{
  struct run *last;

  if (kind == KIND_NONE || n == 0)
    return 0;
  last = b->nruns ? &b->runs[b->nruns - 1] : NULL;
  if (last && last->kind == kind && last->block + last->n == block) {
    last->n += n;
    return 0;
  }
  if (b->nruns == b->caprun) {
    size_t cap = b->caprun ? b->caprun * 2 : 1024;
    struct run *v = realloc (b->runs, cap * sizeof *v);
    if (v == NULL)
      return -1;
    b->runs = v;
    b->caprun = cap;
  }
  b->runs[b->nruns++] = (struct run) { block, n, kind };
  return 0;
}

/* What the extents of part of a block say about it (bits). */
enum { S_SKIP = 1, S_ZERO = 2, S_DATA = 4 };

/* The state of a piece of a block, from its extent's type. */
static int
piece_state (const struct backup *b, uint32_t type)
{
  if (type & LIBNBD_STATE_ZERO)
    return S_ZERO;              /* reads as zeroes (changed, if a diff) */
  if (b->incremental && (type & LIBNBD_STATE_HOLE))
    return S_SKIP;              /* change map: unchanged since the base */
  return S_DATA;                /* read it (a plain hole may hold data) */
}

/* A whole block from the states of its parts. */
static int
block_kind (const struct backup *b, int st)
{
  if (st == S_SKIP)
    return KIND_NONE;           /* unchanged: the parent has it */
  if (st == S_ZERO)             /* all of it reads as zero */
    return b->incremental ? KIND_ZERO : KIND_NONE;
  return KIND_DATA;             /* data, or changed and unchanged parts */
}

/* Each block gets the union of the states of the extents over it. */
int
classify (struct backup *b, const struct extent *v, size_t n)
{
  uint64_t cur = UINT64_MAX, first, last;
  int st = 0, ps;
  size_t i;

  for (i = 0; i < n; ++i) {
    if (v[i].length == 0)
      continue;
    ps = piece_state (b, v[i].type);
    first = v[i].offset / b->bs;
    last = (v[i].offset + v[i].length - 1) / b->bs;
    if (cur == first)
      st |= ps;
    else {
      if (cur != UINT64_MAX && add_run (b, cur, 1, block_kind (b, st)) == -1)
        return -1;
      cur = first;
      st = ps;
    }
    if (last > first) {
      /* The extent covers the rest of block first, all of the blocks in
       * between, and the beginning (or all) of block last.
       */
      if (add_run (b, cur, 1, block_kind (b, st)) == -1 ||
          add_run (b, first + 1, last - first - 1,
                   block_kind (b, ps)) == -1)
        return -1;
      cur = last;
      st = ps;
    }
  }
  if (cur != UINT64_MAX && add_run (b, cur, 1, block_kind (b, st)) == -1)
    return -1;
  return 0;
}

/* The zero runs were stored before (store_zero_runs). */
int
make_chunks (struct backup *b, uint64_t *total)
{
  uint64_t per = CHUNK_BYTES / b->bs, off;
  struct run *v = NULL;
  size_t n = 0, cap = 0, i;
  uint64_t k;

  if (per == 0)
    per = 1;
  *total = 0;
  for (i = 0; i < b->nruns; ++i) {
    if (b->runs[i].kind != KIND_DATA)
      continue;
    for (k = 0; k < b->runs[i].n; k += per) {
      if (n == cap) {
        struct run *nv;
        cap = cap ? cap * 2 : 1024;
        if ((nv = realloc (v, cap * sizeof *nv)) == NULL) {
          free (v);
          return -1;
        }
        v = nv;
      }
      v[n].block = b->runs[i].block + k;
      v[n].n = min64 (b->runs[i].n - k, per);
      v[n].kind = KIND_DATA;
      off = v[n].block * b->bs;
      *total += min64 (v[n].n * b->bs, b->size - off);
      n++;
    }
  }
  free (b->runs);
  b->runs = v;
  b->nruns = n;
  b->caprun = cap;
  return 0;
}
