/* nbdsnap common: packed 2-bit block state arrays. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"

int
bstate_init (struct bstate *bs, uint64_t nblocks)
{
  bs->nblocks = nblocks;
  bs->nwords = (nblocks + 31) / 32;
  bs->words = calloc (bs->nwords ? bs->nwords : 1, sizeof (uint64_t));
  if (bs->words == NULL) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

void
bstate_free (struct bstate *bs)
{
  free (bs->words);
  bs->words = NULL;
  bs->nwords = 0;
  bs->nblocks = 0;
}

unsigned
bstate_set (struct bstate *bs, uint64_t blk, unsigned v)
{
  return bstate_word_set (&bs->words[blk >> 5], blk, v);
}

bool
bstate_any (const struct bstate *bs, uint64_t first, uint64_t n)
{
  uint64_t i = first, end = first + n;

  while (i < end) {
    if ((i & 31) == 0 && end - i >= 32) {
      if (__atomic_load_n (&bs->words[i >> 5], __ATOMIC_ACQUIRE))
        return true;
      i += 32;
    }
    else {
      if (bstate_get (bs, i) != BSTATE_ABSENT)
        return true;
      i++;
    }
  }
  return false;
}

uint64_t
bstate_count (const struct bstate *bs)
{
  uint64_t n = 0;
  size_t i;

  for (i = 0; i < bs->nwords; ++i)
    n += __builtin_popcountll
      (bstate_presence (__atomic_load_n (&bs->words[i], __ATOMIC_RELAXED)));
  return n;
}

int
bitset_init (struct bitset *b, uint64_t nbits)
{
  b->nbits = nbits;
  b->words = calloc ((nbits + 63) / 64 + 1, sizeof (uint64_t));
  if (b->words == NULL) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

void
bitset_free (struct bitset *b)
{
  free (b->words);
  b->words = NULL;
  b->nbits = 0;
}

uint64_t
bitset_count (const struct bitset *b)
{
  uint64_t n = 0, i;

  for (i = 0; i < (b->nbits + 63) / 64; ++i)
    n += __builtin_popcountll (__atomic_load_n (&b->words[i],
                                                __ATOMIC_RELAXED));
  return n;
}

int
bitset_resize (struct bitset *b, uint64_t nbits)
{
  size_t oldw = (b->nbits + 63) / 64 + 1, neww = (nbits + 63) / 64 + 1;
  uint64_t *p;

  if (neww > oldw) {
    p = realloc (b->words, neww * sizeof *p);
    if (p == NULL) {
      errno = ENOMEM;
      return -1;
    }
    memset (p + oldw, 0, (neww - oldw) * sizeof *p);
    b->words = p;
  }
  b->nbits = nbits;
  return 0;
}
