/* nbdsnap repository: bounded page cache while writing large files.
 *
 * writeback.h says why; the one rule here: a failed sync_file_range is
 * a write error of the file, reported to the caller (Linux hands a
 * writeback error to the first caller that waits for it, and only once).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>

#include "writeback.h"

/* Is this errno "the file cannot take the hint" rather than an error
 * of the data?
 */
static int
unsupported (int e)
{
  return e == ESPIPE || e == ENOSYS || e == EINVAL;
}

int
writeback_after_write (int fd, uint64_t off, uint64_t len)
{
  const uint64_t w = WRITEBACK_WINDOW;
  uint64_t k;

  if (len == 0)
    return 0;
  /* Each window end crossed by this write (usually none or one). */
  for (k = off / w + 1; k * w <= off + len; ++k) {
#ifdef SYNC_FILE_RANGE_WRITE
    if (sync_file_range (fd, (k - 1) * w, w, SYNC_FILE_RANGE_WRITE) == -1) {
      if (unsupported (errno))
        return 0;
      return -1;
    }
    if (k > WRITEBACK_LAG) {
      uint64_t old = (k - 1 - WRITEBACK_LAG) * w;
      if (sync_file_range (fd, old, w, SYNC_FILE_RANGE_WAIT_BEFORE |
                           SYNC_FILE_RANGE_WRITE |
                           SYNC_FILE_RANGE_WAIT_AFTER) == -1) {
        if (unsupported (errno))
          return 0;
        return -1;
      }
      /* Only a hint: it reports no error of the data (EBADF, EINVAL,
       * ESPIPE at most) and consumes none.
       */
      (void) posix_fadvise (fd, old, w, POSIX_FADV_DONTNEED);
    }
#else
    (void) fd;
#endif
  }
  return 0;
}
