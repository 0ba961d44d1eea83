/* nbdsnap common: how large a file can be (filesize.h). */
#include <config.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/resource.h>

#include "filesize.h"

int
filesize_fits (int fd, uint64_t size)
{
  struct rlimit rl;
  int r, e;

  if (getrlimit (RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      size > rl.rlim_cur)
    return 0;
  if (size > INT64_MAX)
    return 0;
  r = ftruncate (fd, (off_t) size);
  e = errno;
  if (r == 0 && ftruncate (fd, 0) == -1)
    return -1;
  if (r == 0)
    return 1;
  if (e == EFBIG || e == EINVAL)
    return 0;
  errno = e;
  return -1;
}

int
filesize_segments (int fd, uint64_t size, unsigned min_shift,
                   unsigned *shift)
{
  unsigned k;
  int r = filesize_fits (fd, size);

  if (r != 0) {
    *shift = 0;
    return r == 1 ? 0 : -1;
  }
  for (k = 62; k >= min_shift; --k) {
    if ((UINT64_C (1) << k) >= size)
      continue;
    r = filesize_fits (fd, UINT64_C (1) << k);
    if (r == -1)
      return -1;
    if (r == 1) {
      *shift = k;
      return 0;
    }
  }
  return 1;
}

uint64_t
filesize_nseg (uint64_t size, unsigned shift)
{
  uint64_t n;

  if (shift == 0)
    return 1;
  n = (size >> shift) + ((size & ((UINT64_C (1) << shift) - 1)) != 0);
  return n ? n : 1;
}

void
filesize_ignore_sigxfsz (void)
{
  signal (SIGXFSZ, SIG_IGN);
}
