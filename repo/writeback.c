/* nbdsnap repository: bounded page cache while writing large files. */
#include <config.h>

#include <fcntl.h>
#include <stdint.h>

#include "writeback.h"

void
writeback_after_write (int fd, uint64_t off, uint64_t len)
{
  const uint64_t w = WRITEBACK_WINDOW;
  uint64_t k;

  if (len == 0)
    return;
  /* Each window end crossed by this write (usually none or one). */
  for (k = off / w + 1; k * w <= off + len; ++k) {
#ifdef SYNC_FILE_RANGE_WRITE
    sync_file_range (fd, (k - 1) * w, w, SYNC_FILE_RANGE_WRITE);
    if (k > WRITEBACK_LAG) {
      uint64_t old = (k - 1 - WRITEBACK_LAG) * w;
      sync_file_range (fd, old, w, SYNC_FILE_RANGE_WAIT_BEFORE |
                       SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      posix_fadvise (fd, old, w, POSIX_FADV_DONTNEED);
    }
#else
    (void) fd;
#endif
  }
}
