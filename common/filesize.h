/* nbdsnap common: how large a file can be where we keep data.
 *
 * Data kept at its offset on the disk needs a file as large as the
 * disk.  Some file systems hold less (ext4 with 4 KiB blocks: 16 TiB -
 * 4 KiB), and a file size limit (RLIMIT_FSIZE, ulimit -f) has the same
 * effect.  These probe it by growing an empty file of ours (no data is
 * written) and shrinking it back.
 */
#ifndef NBDSNAP_FILESIZE_H
#define NBDSNAP_FILESIZE_H

#include <stdint.h>

/* At most this many segment files per layer or scratch area (each is an
 * open descriptor).
 */
#define FILESIZE_MAX_SEGS 1024
#define FILESIZE_STR_(x) #x
#define FILESIZE_STR(x) FILESIZE_STR_ (x)

/* Ignore SIGXFSZ (in a filter's .load): a write past a file size limit
 * must fail with EFBIG, which is reported, not kill nbdkit.
 */
void filesize_ignore_sigxfsz (void);

/* Can the file open on fd (empty, ours; left empty) be size bytes long?
 * A size over RLIMIT_FSIZE counts as no without being tried (trying
 * would raise SIGXFSZ).  1 yes, 0 no, -1 and errno if it cannot tell.
 */
int filesize_fits (int fd, uint64_t size);

/* Data of size bytes, kept at their offsets in files like fd: *shift = 0
 * if one file holds it all; otherwise the largest k (min_shift <= k < 63,
 * 2^k < size) such that a file of 2^k bytes fits, to cut the data into
 * segments of 2^k bytes.  0 done; 1 not even 2^min_shift fits; -1 and
 * errno if it cannot tell.  fd is left empty.
 */
int filesize_segments (int fd, uint64_t size, unsigned min_shift,
                       unsigned *shift);

/* How many segments of 2^shift bytes cover size bytes (1 if shift is 0:
 * one file; at least 1).
 */
uint64_t filesize_nseg (uint64_t size, unsigned shift);

#endif /* NBDSNAP_FILESIZE_H */
