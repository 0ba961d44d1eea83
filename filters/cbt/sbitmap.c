/* nbdsnap cbt filter: sparse bitmaps (sbitmap.h). */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sbitmap.h"

int
sbm_init (struct sbitmap *s, uint64_t nbits)
{
  size_t n = sbm_nleaves (nbits);

  s->leaves = calloc (n ? n : 1, sizeof *s->leaves);
  if (s->leaves == NULL)
    return -1;
  s->nbits = nbits;
  s->nleaves = n;
  return 0;
}

void
sbm_clear (struct sbitmap *s)
{
  size_t l;

  for (l = 0; s->leaves && l < s->nleaves; ++l) {
    free (s->leaves[l]);
    s->leaves[l] = NULL;
  }
}

void
sbm_free (struct sbitmap *s)
{
  sbm_clear (s);
  free (s->leaves);
  s->leaves = NULL;
  s->nleaves = 0;
  s->nbits = 0;
}

uint64_t *
sbm_leaf_alloc (struct sbitmap *s, size_t l)
{
  uint64_t *leaf = sbm_leaf (s, l), *expected = NULL;

  if (leaf)
    return leaf;
  leaf = calloc (LEAF_WORDS, sizeof *leaf);
  if (leaf == NULL)
    return NULL;
  if (__atomic_compare_exchange_n (&s->leaves[l], &expected, leaf, false,
                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return leaf;
  free (leaf);                  /* another thread was first */
  return expected;
}

int
sbm_or (struct sbitmap *dst, const struct sbitmap *src, bool alloc)
{
  size_t l, i;

  for (l = 0; l < src->nleaves && l < dst->nleaves; ++l) {
    const uint64_t *sl = sbm_leaf (src, l);
    uint64_t *dl;

    if (sl == NULL || sbm_leaf_empty (src, l))
      continue;
    dl = alloc ? sbm_leaf_alloc (dst, l) : sbm_leaf (dst, l);
    if (dl == NULL)
      return -1;
    for (i = 0; i < LEAF_WORDS; ++i) {
      uint64_t w = __atomic_load_n (&sl[i], __ATOMIC_ACQUIRE);
      if (w)
        __atomic_fetch_or (&dl[i], w, __ATOMIC_ACQ_REL);
    }
  }
  return 0;
}

int
sbm_reserve (struct sbitmap *dst, const struct sbitmap *src)
{
  size_t l;

  for (l = 0; l < src->nleaves && l < dst->nleaves; ++l)
    if (!sbm_leaf_empty (src, l) && sbm_leaf_alloc (dst, l) == NULL)
      return -1;
  return 0;
}

bool
sbm_leaf_empty (const struct sbitmap *s, size_t l)
{
  const uint64_t *leaf = sbm_leaf (s, l);
  size_t i;

  if (leaf == NULL)
    return true;
  for (i = 0; i < LEAF_WORDS; ++i)
    if (__atomic_load_n (&leaf[i], __ATOMIC_RELAXED))
      return false;
  return true;
}

uint64_t
sbm_count (const struct sbitmap *s)
{
  uint64_t n = 0;
  size_t l, i;

  for (l = 0; l < s->nleaves; ++l) {
    const uint64_t *leaf = sbm_leaf (s, l);
    for (i = 0; leaf && i < LEAF_WORDS; ++i)
      n += __builtin_popcountll (__atomic_load_n (&leaf[i],
                                                  __ATOMIC_RELAXED));
  }
  return n;
}

size_t
sbm_leaves_used (const struct sbitmap *s)
{
  size_t l, n = 0;

  for (l = 0; l < s->nleaves; ++l)
    n += sbm_leaf (s, l) != NULL;
  return n;
}
