/* nbdsnap common: the header of binary state files.
 *
 * The snapshot filter's layer maps and the cbt filter's bitmaps share
 * one 80-byte header (docs/snapshot-format.md, docs/cbt-format.md):
 *
 *   offset size
 *        0    8  magic ("NBDSNAPM" layer map, "NBDSNAPB" bitmap)
 *        8    4  format version, little-endian
 *       12    4  block size (granularity), little-endian
 *       16    8  id of the layer / checkpoint, little-endian
 *       24    8  number of blocks, little-endian
 *       32    8  disk size in bytes, little-endian
 *       40    8  payload length in bytes (the file is 80 + this)
 *       48   32  SHA-256 of the whole file with these 32 bytes zeroed;
 *                all zero: not sealed (a bitmap updated in place)
 *       80       payload
 */
#ifndef NBDSNAP_BINHDR_H
#define NBDSNAP_BINHDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BINHDR_SIZE 80
#define BINHDR_SUM_OFFSET 48

struct binhdr {
  char magic[8];
  uint32_t version;
  uint32_t block_size;
  uint64_t id;
  uint64_t nblocks;
  uint64_t disk_size;
  uint64_t payload_len;
};

/* Write h into the first BINHDR_SIZE bytes of buf, checksum zeroed. */
void binhdr_put (uint8_t *buf, const struct binhdr *h)
  __attribute__ ((nonnull (1, 2)));

/* Store the checksum of the whole file (len bytes, header first).  -1
 * if hashing failed.
 */
int binhdr_seal (uint8_t *file, size_t len) __attribute__ ((nonnull (1)));

/* Check a whole file read into memory (len bytes): its magic and
 * version, that its length is the header plus the payload length it
 * states, and its checksum.  An unsealed file (zero checksum) is
 * accepted only if allow_unsealed; *sealed (if not NULL) tells which it
 * was.  The checksum field is zeroed in file.  On success the fields go
 * to out; otherwise -1 with a reason in why, naming the file name and
 * what it is ("layer map", "bitmap").
 */
int binhdr_check (uint8_t *file, size_t len, const char *magic,
                  uint32_t version, bool allow_unsealed,
                  const char *name, const char *what,
                  struct binhdr *out, bool *sealed, char *why, size_t whylen)
  __attribute__ ((nonnull (1, 3, 6, 7, 8, 10)));

#endif /* NBDSNAP_BINHDR_H */
