/* nbdsnap common: whole-buffer file I/O.
 *
 * read(2) and write(2) may transfer less than asked and may be
 * interrupted; these loop until the whole buffer is done.  They return 0,
 * or -1 with errno set (the file offset, or the part of the buffer
 * already transferred, is then unspecified).
 */
#ifndef NBDSNAP_FILEIO_H
#define NBDSNAP_FILEIO_H

#include <stddef.h>
#include <stdint.h>

/* Read exactly len bytes at off.  A file that ends first is an error
 * (EIO): use this where the bytes must exist (repository files).
 */
int pread_exact (int fd, void *buf, size_t len, uint64_t off)
  __attribute__ ((nonnull (2)));

/* Read len bytes at off of a sparse file whose end may not have been
 * written: bytes past the end of the file read as zeroes.
 */
int pread_sparse (int fd, void *buf, size_t len, uint64_t off)
  __attribute__ ((nonnull (2)));

/* Write all len bytes at off. */
int pwrite_full (int fd, const void *buf, size_t len, uint64_t off)
  __attribute__ ((nonnull (2)));

/* Write all len bytes at the file offset. */
int write_full (int fd, const void *buf, size_t len)
  __attribute__ ((nonnull (2)));

/* Close a file this process wrote: close(2) can report a write error
 * (NFS, quotas) that nothing else reported.  EINTR is not retried (on
 * Linux the descriptor is gone whatever close returns).  0 or -1.
 */
int close_written (int fd);

#endif /* NBDSNAP_FILEIO_H */
