/* nbdsnap common: a disk cut into blocks of a power-of-two size.
 *
 * Every component divides the disk the same way: block b covers bytes
 * [b * block_size, (b + 1) * block_size), and the last block is short
 * when the disk size is not a multiple of the block size.
 */
#ifndef NBDSNAP_GEOM_H
#define NBDSNAP_GEOM_H

#include <stdbool.h>
#include <stdint.h>

#include "minmax.h"

struct geom {
  uint64_t disk_size;           /* bytes */
  uint32_t block_size;          /* a power of two */
  unsigned shift;               /* log2 (block_size) */
  uint64_t nblocks;             /* blocks, the last one maybe short */
};

/* Is bs a power of two in [4 KiB, 16 MiB] (every block size we take)? */
static inline bool
geom_block_size_ok (uint64_t bs)
{
  return bs >= 4096 && bs <= 16 * 1024 * 1024 && (bs & (bs - 1)) == 0;
}

/* Fill g for a disk of disk_size bytes in blocks of block_size (a power
 * of two: see geom_block_size_ok).
 */
static inline void
geom_init (struct geom *g, uint64_t disk_size, uint32_t block_size)
{
  g->disk_size = disk_size;
  g->block_size = block_size;
  g->shift = __builtin_ctz (block_size);
  g->nblocks = (disk_size >> g->shift) + ((disk_size & (block_size - 1)) != 0);
}

/* Number of blocks of a disk of size bytes. */
static inline uint64_t
geom_blocks (uint64_t size, uint32_t block_size)
{
  return size / block_size + (size % block_size != 0);
}

/* Byte offset of block b. */
static inline uint64_t
geom_offset (const struct geom *g, uint64_t b)
{
  return b << g->shift;
}

/* Block holding byte offset. */
static inline uint64_t
geom_block (const struct geom *g, uint64_t offset)
{
  return offset >> g->shift;
}

/* Byte length of block b (0 past the end; the last block may be short). */
static inline uint64_t
geom_block_len (const struct geom *g, uint64_t b)
{
  uint64_t start = b << g->shift;

  return start >= g->disk_size ? 0 : min64 (g->block_size,
                                             g->disk_size - start);
}

#endif /* NBDSNAP_GEOM_H */
