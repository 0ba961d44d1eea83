/* nbdsnap snapshot filter: sparse two-level block maps (sparse.h). */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "sparse.h"

/* The top arrays come from calloc: a large one is mapped by the C
 * library and its pages cost memory only once a pointer in them is set,
 * whatever the size of the disk.  (Not mmap of our own: LeakSanitizer
 * does not look inside such a mapping, and would take every leaf as
 * lost when a start that fails leaves the maps to exit.)
 */
static void *
top_alloc (size_t n)
{
  return calloc (n ? n : 1, sizeof (void *));
}

static void
top_free (void *p, size_t n)
{
  (void) n;
  free (p);
}

size_t
sparse_next_before (const uint64_t *present, size_t nleaves, size_t i,
                    size_t limit)
{
  size_t w = i / 64;
  uint64_t bits;

  if (limit > nleaves)
    limit = nleaves;
  if (i >= limit)
    return limit;
  bits = __atomic_load_n (&present[w], __ATOMIC_ACQUIRE) &
    (~UINT64_C (0) << (i % 64));
  while (bits == 0) {
    if (++w * 64 >= limit)
      return limit;
    bits = __atomic_load_n (&present[w], __ATOMIC_ACQUIRE);
  }
  i = w * 64 + __builtin_ctzll (bits);
  return i < limit ? i : limit;
}

size_t
sparse_next (const uint64_t *present, size_t nleaves, size_t i)
{
  return sparse_next_before (present, nleaves, i, nleaves);
}

/* The present bits of n leaves (zeroed), or NULL. */
static uint64_t *
present_alloc (size_t n)
{
  return calloc ((n + 63) / 64 + 1, sizeof (uint64_t));
}

/* Allocate a zeroed leaf of size bytes into leaf i of slots unless one
 * is there, and set its present bit; the leaf in place, or NULL on
 * ENOMEM.
 */
static void *
leaf_make (void **slots, uint64_t *present, size_t i, size_t size)
{
  void **slot = &slots[i];
  void *lf = __atomic_load_n (slot, __ATOMIC_ACQUIRE), *expect = NULL;

  if (lf)
    return lf;
  lf = calloc (1, size);
  if (lf == NULL)
    return NULL;
  if (!__atomic_compare_exchange_n (slot, &expect, lf, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    free (lf);                  /* another thread put one first */
    return expect;
  }
  __atomic_fetch_or (&present[i / 64], UINT64_C (1) << (i % 64),
                     __ATOMIC_RELEASE);
  return lf;
}

static void
out_of_memory (const char *what)
{
  nbdkit_error ("snapshot: out of memory for a leaf of %s; aborting "
                "(the state last made durable is kept)", what);
  abort ();
}

/* The top level of a map of nleaves leaves (all empty): returned, with
 * *present; NULL (ENOMEM) with *present NULL.
 */
static void *
tables_alloc (uint64_t **present, size_t nleaves)
{
  void *top = top_alloc (nleaves);

  *present = present_alloc (nleaves);
  if (top == NULL || *present == NULL) {
    top_free (top, nleaves);
    free (*present);
    *present = NULL;
    errno = ENOMEM;
    return NULL;
  }
  return top;
}

/* Free a map's leaves and its top level (leaf, present: as allocated). */
static void
tables_free (void **leaf, uint64_t *present, size_t nleaves)
{
  size_t i;

  if (leaf && present)
    for (i = sparse_next (present, nleaves, 0); i < nleaves;
         i = sparse_next (present, nleaves, i + 1))
      free (leaf[i]);
  top_free (leaf, nleaves);
  free (present);
}

int
smap_init (struct smap *m, uint64_t nblocks)
{
  m->nblocks = nblocks;
  m->nleaves = sparse_nleaves (nblocks);
  m->leaf = tables_alloc (&m->present, m->nleaves);
  return m->leaf ? 0 : -1;
}

void
smap_free (struct smap *m)
{
  tables_free ((void **) m->leaf, m->present, m->nleaves);
  m->leaf = NULL;
  m->present = NULL;
}

uint64_t *
smap_leaf_make (struct smap *m, size_t i)
{
  return leaf_make ((void **) m->leaf, m->present, i,
                    LEAF_WORDS * sizeof (uint64_t));
}

unsigned
smap_set (struct smap *m, uint64_t b, unsigned v)
{
  uint64_t *lf = smap_leaf (m, b >> LEAF_SHIFT);

  if (lf == NULL) {
    if (v == BSTATE_ABSENT)
      return BSTATE_ABSENT;
    lf = smap_leaf_make (m, b >> LEAF_SHIFT);
    if (lf == NULL)
      out_of_memory ("a layer map");
  }
  return bstate_word_set (&lf[(b & (LEAF_BLOCKS - 1)) >> 5], b, v);
}

bool
smap_cas (struct smap *m, uint64_t b, unsigned expect, unsigned v)
{
  uint64_t *lf = smap_leaf (m, b >> LEAF_SHIFT), *p, old, new;
  unsigned shift = (b & 31) * 2;

  if (lf == NULL) {
    if (expect != BSTATE_ABSENT)
      return false;
    lf = smap_leaf_make (m, b >> LEAF_SHIFT);
    if (lf == NULL)
      out_of_memory ("a layer map");
  }
  p = &lf[(b & (LEAF_BLOCKS - 1)) >> 5];
  old = __atomic_load_n (p, __ATOMIC_RELAXED);
  do {
    if (((old >> shift) & 3) != expect)
      return false;
    new = (old & ~(UINT64_C (3) << shift)) | ((uint64_t) (v & 3) << shift);
  } while (!__atomic_compare_exchange_n (p, &old, new, true,
                                         __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
  return true;
}

uint64_t
smap_count (const struct smap *m)
{
  uint64_t n = 0;
  size_t i, w;

  for (i = sparse_next (m->present, m->nleaves, 0); i < m->nleaves;
       i = sparse_next (m->present, m->nleaves, i + 1)) {
    const uint64_t *lf = smap_leaf (m, i);
    for (w = 0; w < LEAF_WORDS; ++w)
      n += __builtin_popcountll (bstate_presence (lf[w]));
  }
  return n;
}

int
omap_init (struct omap *m, uint64_t nblocks)
{
  m->nleaves = sparse_nleaves (nblocks);
  m->leaf = tables_alloc (&m->present, m->nleaves);
  return m->leaf ? 0 : -1;
}

void
omap_free (struct omap *m)
{
  tables_free ((void **) m->leaf, m->present, m->nleaves);
  m->leaf = NULL;
  m->present = NULL;
}

uint16_t *
omap_leaf_make (struct omap *m, size_t i)
{
  return leaf_make ((void **) m->leaf, m->present, i,
                    LEAF_BLOCKS * sizeof (uint16_t));
}

void
omap_set (struct omap *m, uint64_t b, uint16_t v)
{
  uint16_t *lf = __atomic_load_n (&m->leaf[b >> LEAF_SHIFT],
                                  __ATOMIC_ACQUIRE);

  if (lf == NULL) {
    if (v == 0)
      return;
    lf = omap_leaf_make (m, b >> LEAF_SHIFT);
    if (lf == NULL)
      out_of_memory ("the owner map");
  }
  __atomic_store_n (&lf[b & (LEAF_BLOCKS - 1)], v, __ATOMIC_RELEASE);
}

void
omap_cas (struct omap *m, uint64_t b, uint16_t expect, uint16_t v)
{
  uint16_t *lf = __atomic_load_n (&m->leaf[b >> LEAF_SHIFT],
                                  __ATOMIC_ACQUIRE);

  if (lf == NULL) {
    if (expect != 0)
      return;                   /* every owner in the leaf is 0 */
    lf = omap_leaf_make (m, b >> LEAF_SHIFT);
    if (lf == NULL)
      out_of_memory ("the owner map");
  }
  __atomic_compare_exchange_n (&lf[b & (LEAF_BLOCKS - 1)], &expect, v, false,
                               __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

uint16_t
omap_or (struct omap *m, uint64_t b, uint16_t bits)
{
  uint16_t *lf = __atomic_load_n (&m->leaf[b >> LEAF_SHIFT],
                                  __ATOMIC_ACQUIRE);

  if (lf == NULL) {
    lf = omap_leaf_make (m, b >> LEAF_SHIFT);
    if (lf == NULL)
      out_of_memory ("a sector mask map");
  }
  return __atomic_or_fetch (&lf[b & (LEAF_BLOCKS - 1)], bits,
                            __ATOMIC_ACQ_REL);
}
