/* nbdsnap snapshot filter: a layer's data, in one file or in segments.
 *
 * The bytes of block N of a layer are those at disk offset N * bs of
 * its data.  When snapshot-dir's file system can hold a file as large
 * as the disk, the data is one sparse file, layer-ID.data, at the same
 * offsets.  When it cannot (ext4 with 4 KiB blocks holds at most
 * 16 TiB - 4 KiB: the last block of a 16 TiB disk would not fit), the
 * disk is cut into segments of 2^seg_shift bytes, a power of two no
 * smaller than the block size (so that no block straddles two), and
 * segment k is a file of its own: layer-ID.data for k = 0,
 * layer-ID.data.k after it, holding disk offset o at o - (k << seg_shift).
 * The choice is made when a snapshot-dir is created (ldata_fits) and
 * recorded in its state file; see docs/snapshot-format.md, section 7.
 */
#ifndef NBDSNAP_SNAPSHOT_LDATA_H
#define NBDSNAP_SNAPSHOT_LDATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "filesize.h"

struct layer;

/* At most this many segments per layer (each is an open descriptor). */
#define LDATA_MAX_SEGS FILESIZE_MAX_SEGS

/* The segment size of every layer opened from now on: 2^seg_shift bytes,
 * or 0 for one file per layer; nseg segments cover the disk.
 */
struct ldata_layout {
  unsigned seg_shift;
  unsigned nseg;
};
extern struct ldata_layout ldata_layout;

/* Set ldata_layout for a disk of disk_size bytes: seg_shift 0 (one file)
 * or a segment size of 2^seg_shift.  -1 (EINVAL) if that takes more than
 * LDATA_MAX_SEGS segments.
 */
int ldata_set_layout (unsigned seg_shift, uint64_t disk_size);

/* Can the file system of dirfd hold a file of size bytes?  Tried by
 * growing an empty probe file to that size (no data is written; sizes
 * over RLIMIT_FSIZE count as not fitting, without trying: trying would
 * raise SIGXFSZ).  1 yes, 0 no, -1 (errno) if the probe could not be
 * made at all.
 */
int ldata_fits (int dirfd, uint64_t size);

/* For a new snapshot-dir (dirfd) on a disk of size bytes in blocks of
 * bs: the segment size to use, 2^*seg_shift, or *seg_shift = 0 for one
 * file per layer when the file system holds a file of size bytes.  -1
 * with errno and why (what is wrong and how to fix it) when it holds no
 * power of two of at least bs that cuts the disk into at most
 * LDATA_MAX_SEGS segments, or cannot be probed.
 */
int ldata_choose (int dirfd, uint64_t size, uint32_t bs,
                  unsigned *seg_shift, char *why, size_t whylen);

/* Describe the layout (after ldata_set_layout) for messages. */
void ldata_describe (uint64_t size, unsigned seg_shift, char *buf,
                     size_t len);

/* Open (create and truncate if create) the data files of l (l->id),
 * as ldata_layout says.  -1 with errno and a reason in why; the files
 * opened are closed again.
 */
int ldata_open (int dirfd, struct layer *l, bool create,
                char *why, size_t whylen);

/* I/O on a layer's data at disk offsets, across segments.  0, or -1 and
 * errno.  ldata_pread reads zeroes past the end of a file.
 */
int ldata_pread (const struct layer *l, void *buf, uint64_t len,
                 uint64_t off);
int ldata_pwrite (const struct layer *l, const void *buf, uint64_t len,
                  uint64_t off);
/* Punch a hole (FALLOC_FL_PUNCH_HOLE, keeping the size). */
int ldata_punch (const struct layer *l, uint64_t off, uint64_t len);
/* fdatasync every file of the layer; on failure (-1, errno) the name of
 * the file that failed is in name.
 */
int ldata_sync (const struct layer *l, char *name, size_t len);

/* Close every file: checked (close_written) or not. */
int ldata_close (struct layer *l);
void ldata_close_quietly (struct layer *l);

/* Remove the data files of layer id (every segment there is). */
void ldata_unlink (int dirfd, uint64_t id);

#endif /* NBDSNAP_SNAPSHOT_LDATA_H */
