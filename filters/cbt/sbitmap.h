/* nbdsnap cbt filter: sparse bitmaps, one bit per block, two levels.
 *
 * A table of leaf pointers, one per LEAF_BITS blocks; a leaf (LEAF_BYTES,
 * 64-bit words) is allocated when its first bit is set, and an absent
 * leaf reads as all clear.  So memory follows the written blocks, not
 * the disk size: a 16 TiB disk at 64 KiB granularity has 8192 leaf
 * pointers (64 KiB) per bitmap and a 4 KiB leaf per 2 GiB region that
 * saw a write.  The leaf is also the unit of the bitmap files
 * (docs/cbt-format.md section 5) and of their in-place writes.
 *
 * Reads and sets are lock-free: a leaf is published with a
 * compare-and-swap, bits with an atomic OR; a bit already set costs an
 * atomic load of the leaf pointer and one of the word (no lock, no
 * allocation, no syscall).  Leaves are freed only by sbm_free and
 * sbm_clear, with no reader left.
 */
#ifndef NBDSNAP_CBT_SBITMAP_H
#define NBDSNAP_CBT_SBITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LEAF_BYTES 4096
#define LEAF_WORDS (LEAF_BYTES / 8)
#define LEAF_BITS (LEAF_BYTES * 8)

struct sbitmap {
  uint64_t **leaves;            /* nleaves pointers; NULL: all clear */
  uint64_t nbits;
  size_t nleaves;
};

/* Number of leaves of a bitmap of nbits bits. */
static inline size_t
sbm_nleaves (uint64_t nbits)
{
  return (nbits + LEAF_BITS - 1) / LEAF_BITS;
}

/* An all-clear bitmap of nbits bits.  -1 on ENOMEM. */
int sbm_init (struct sbitmap *s, uint64_t nbits)
  __attribute__ ((nonnull (1)));
/* Free the leaves and the table (a zeroed s: nothing). */
void sbm_free (struct sbitmap *s) __attribute__ ((nonnull (1)));
/* Free every leaf: all clear again (no reader may be active). */
void sbm_clear (struct sbitmap *s) __attribute__ ((nonnull (1)));

/* Leaf l, or NULL (all clear). */
static inline uint64_t *
sbm_leaf (const struct sbitmap *s, size_t l)
{
  return __atomic_load_n (&s->leaves[l], __ATOMIC_ACQUIRE);
}

/* Leaf l, allocated (all clear) if absent.  NULL on ENOMEM. */
uint64_t *sbm_leaf_alloc (struct sbitmap *s, size_t l)
  __attribute__ ((nonnull (1)));

/* Is bit b set? */
static inline bool
sbm_get (const struct sbitmap *s, uint64_t b)
{
  const uint64_t *leaf = sbm_leaf (s, b / LEAF_BITS);

  return leaf &&
    ((__atomic_load_n (&leaf[(b % LEAF_BITS) >> 6], __ATOMIC_ACQUIRE)
      >> (b & 63)) & 1);
}

/* Set bit b: 1 if it was clear, 0 if it was set already (no allocation
 * then), -1 on ENOMEM (nothing changed).
 */
static inline int
sbm_set (struct sbitmap *s, uint64_t b)
{
  uint64_t *leaf = sbm_leaf (s, b / LEAF_BITS);
  uint64_t m = UINT64_C (1) << (b & 63), *w;

  if (leaf == NULL && (leaf = sbm_leaf_alloc (s, b / LEAF_BITS)) == NULL)
    return -1;
  w = &leaf[(b % LEAF_BITS) >> 6];
  if (__atomic_load_n (w, __ATOMIC_ACQUIRE) & m)
    return 0;
  return !(__atomic_fetch_or (w, m, __ATOMIC_ACQ_REL) & m);
}

/* Word i (64 bits from bit 64*i) of leaf l, 0 if absent. */
static inline uint64_t
sbm_word (const struct sbitmap *s, size_t l, size_t i)
{
  const uint64_t *leaf = sbm_leaf (s, l);

  return leaf ? __atomic_load_n (&leaf[i], __ATOMIC_ACQUIRE) : 0;
}

/* OR src into dst, allocating dst's leaves (alloc) or only into the
 * leaves dst has (!alloc: the caller made sure of them).  -1 on ENOMEM
 * (dst then has part of src: more bits, never fewer).
 */
int sbm_or (struct sbitmap *dst, const struct sbitmap *src, bool alloc)
  __attribute__ ((nonnull (1, 2)));
/* Allocate (all clear) the leaves of dst where src has a bit set, so
 * that a later sbm_or (dst, src, false) cannot fail.  -1 on ENOMEM.
 */
int sbm_reserve (struct sbitmap *dst, const struct sbitmap *src)
  __attribute__ ((nonnull (1, 2)));
/* Is leaf l absent or all clear? */
bool sbm_leaf_empty (const struct sbitmap *s, size_t l)
  __attribute__ ((nonnull (1)));
/* Number of set bits. */
uint64_t sbm_count (const struct sbitmap *s) __attribute__ ((nonnull (1)));
/* Number of allocated leaves. */
size_t sbm_leaves_used (const struct sbitmap *s)
  __attribute__ ((nonnull (1)));

#endif /* NBDSNAP_CBT_SBITMAP_H */
