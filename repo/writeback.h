/* nbdsnap repository: bounded page cache while writing large files. */
#ifndef NBDSNAP_WRITEBACK_H
#define NBDSNAP_WRITEBACK_H

#include <stdint.h>

/* Writes of backups and restores go to files nobody reads back soon.
 * Left alone, gigabytes of dirty page cache pile up, every write lands
 * on a newly allocated page (expensive, above all in a virtual machine
 * whose free memory the host reclaims), and the final fsync waits for
 * all of it at once.  Call this after writing [off, off+len) of fd, when
 * the writes of all threads advance roughly in file order (appends, or
 * chunks taken in order): each time a write crosses the end of a
 * WRITEBACK_WINDOW, writeback of that window starts, and the window
 * WRITEBACK_LAG windows behind is waited for and dropped from the cache.
 * The cache a writer holds stays near (WRITEBACK_LAG + 1) windows, the
 * same pages are reused, and the fsync at the end is short.
 *
 * Errors are NOT a hint: waiting for writeback (SYNC_FILE_RANGE_WAIT_*)
 * reports a writeback error of the file and, on Linux, consumes it, so
 * the final fsync would then return 0 over lost data.  Returns 0, or -1
 * with errno when writing back failed: the caller must treat the file
 * as failed for good (never fsync it and call it durable).  A file that
 * cannot take the hint at all (a pipe or character device: ESPIPE; a
 * kernel without sync_file_range: ENOSYS, EINVAL) is not an error; dirty
 * pages a slower thread is still writing are not dropped, and nothing is
 * lost whatever the order of the writes.
 */
#define WRITEBACK_WINDOW (8u << 20)
#define WRITEBACK_LAG 3

int writeback_after_write (int fd, uint64_t off, uint64_t len)
  __attribute__ ((warn_unused_result));

#endif /* NBDSNAP_WRITEBACK_H */
