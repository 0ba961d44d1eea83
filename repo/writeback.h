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
 * Only ever a hint: errors are ignored (the final fsync reports them),
 * dirty pages a slower thread is still writing are not dropped, and
 * nothing is lost whatever the order of the writes.
 */
#define WRITEBACK_WINDOW (8u << 20)
#define WRITEBACK_LAG 3

void writeback_after_write (int fd, uint64_t off, uint64_t len);

#endif /* NBDSNAP_WRITEBACK_H */
