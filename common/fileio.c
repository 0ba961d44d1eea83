/* nbdsnap common: whole-buffer file I/O (see fileio.h). */
#include <config.h>

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"

/* Read up to len bytes; at end of file, zero the rest (zero_tail) or
 * fail with EIO.
 */
static int
pread_loop (int fd, char *p, size_t len, uint64_t off, int zero_tail)
{
  while (len > 0) {
    ssize_t r = pread (fd, p, len, off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {
      if (!zero_tail) {
        errno = EIO;
        return -1;
      }
      memset (p, 0, len);
      return 0;
    }
    p += r;
    len -= r;
    off += r;
  }
  return 0;
}

int
pread_exact (int fd, void *buf, size_t len, uint64_t off)
{
  return pread_loop (fd, buf, len, off, 0);
}

int
pread_sparse (int fd, void *buf, size_t len, uint64_t off)
{
  return pread_loop (fd, buf, len, off, 1);
}

int
pwrite_full (int fd, const void *buf, size_t len, uint64_t off)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t r = pwrite (fd, p, len, off);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {               /* no progress: never loop on it */
      errno = EIO;
      return -1;
    }
    p += r;
    len -= r;
    off += r;
  }
  return 0;
}

int
write_full (int fd, const void *buf, size_t len)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t r = write (fd, p, len);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0) {
      errno = EIO;
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

int
close_written (int fd)
{
  if (close (fd) == -1 && errno != EINTR)
    return -1;
  return 0;
}
