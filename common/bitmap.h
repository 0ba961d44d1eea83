/* nbdsnap common: packed arrays of 2-bit block states, updated atomically.
 *
 * A block state array holds one 2-bit value per block, 32 per 64-bit
 * word.  Reads and updates are lock-free (C11-style __atomic builtins),
 * so many connections can mark blocks at once.
 */
#ifndef NBDSNAP_BITMAP_H
#define NBDSNAP_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BSTATE_ABSENT 0   /* block not held by this layer */
#define BSTATE_DATA   1   /* block held, data in the layer's data file */
#define BSTATE_ZERO   2   /* block held, reads as zeroes */
#define BSTATE_PARTIAL 3  /* snapshot layers: some sectors held (partial.h) */

struct bstate {
  uint64_t *words;        /* 32 states per word */
  uint64_t nblocks;
  size_t nwords;
};

/* Allocate an all-ABSENT array for nblocks blocks.  Returns -1 on ENOMEM. */
int bstate_init (struct bstate *bs, uint64_t nblocks)
  __attribute__ ((nonnull (1)));

/* Free the array. */
void bstate_free (struct bstate *bs) __attribute__ ((nonnull (1)));

/* Read the state of block blk (atomic, acquire). */
static inline unsigned
bstate_get (const struct bstate *bs, uint64_t blk)
{
  uint64_t w = __atomic_load_n (&bs->words[blk >> 5], __ATOMIC_ACQUIRE);
  return (w >> ((blk & 31) * 2)) & 3;
}

/* Set the 2-bit state of block blk (only its low 5 bits count) in the
 * word at p to v, atomically; the previous state.  Shared by the dense
 * maps here and the sparse ones of the snapshot filter.
 */
static inline unsigned
bstate_word_set (uint64_t *p, uint64_t blk, unsigned v)
{
  unsigned shift = (blk & 31) * 2;
  uint64_t mask = UINT64_C (3) << shift;
  uint64_t old = __atomic_load_n (p, __ATOMIC_RELAXED), new;

  do {
    new = (old & ~mask) | ((uint64_t) (v & 3) << shift);
    if (new == old)
      break;
  } while (!__atomic_compare_exchange_n (p, &old, new, true,
                                         __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
  return (old >> shift) & 3;
}

/* Set the state of block blk, returning the previous state (atomic). */
unsigned bstate_set (struct bstate *bs, uint64_t blk, unsigned v)
  __attribute__ ((nonnull (1)));

/* True if any block in [first, first+n) is not ABSENT. */
bool bstate_any (const struct bstate *bs, uint64_t first, uint64_t n)
  __attribute__ ((nonnull (1)));

/* Number of blocks that are not ABSENT. */
uint64_t bstate_count (const struct bstate *bs) __attribute__ ((nonnull (1)));

/* Presence mask of a word: bit pair set to 01 for every non-ABSENT block,
 * i.e. (w | w >> 1) & 0x5555...  Used to OR presence of many layers.
 */
static inline uint64_t
bstate_presence (uint64_t w)
{
  return (w | (w >> 1)) & UINT64_C (0x5555555555555555);
}

/* A plain (non-atomic) bit set, one bit per block. */
struct bitset {
  uint64_t *words;
  uint64_t nbits;
};

int bitset_init (struct bitset *b, uint64_t nbits) __attribute__ ((nonnull (1)));
void bitset_free (struct bitset *b) __attribute__ ((nonnull (1)));
static inline bool
bitset_get (const struct bitset *b, uint64_t i)
{
  return (b->words[i >> 6] >> (i & 63)) & 1;
}
static inline void
bitset_set (struct bitset *b, uint64_t i)
{
  b->words[i >> 6] |= UINT64_C (1) << (i & 63);
}

/* Set bit i atomically; returns true if it was clear before. */
static inline bool
bitset_set_atomic (struct bitset *b, uint64_t i)
{
  uint64_t m = UINT64_C (1) << (i & 63);
  return !(__atomic_fetch_or (&b->words[i >> 6], m, __ATOMIC_ACQ_REL) & m);
}
static inline bool
bitset_get_atomic (const struct bitset *b, uint64_t i)
{
  return (__atomic_load_n (&b->words[i >> 6], __ATOMIC_ACQUIRE) >> (i & 63)) & 1;
}
/* Number of set bits. */
uint64_t bitset_count (const struct bitset *b) __attribute__ ((nonnull (1)));
/* Grow to nbits (new bits clear).  -1 on ENOMEM. */
int bitset_resize (struct bitset *b, uint64_t nbits)
  __attribute__ ((nonnull (1)));

#endif /* NBDSNAP_BITMAP_H */
