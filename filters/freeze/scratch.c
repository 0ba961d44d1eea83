/* nbdsnap freeze filter: the scratch files of a point (points-internal.h,
 * scratch_open).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "fileio.h"
#include "filesize.h"
#include "points-internal.h"


/* A new unlinked file in freeze-dir. */
static int
tmpfile (void)
{
  return openat (P.dirfd, ".", O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
}

int
scratch_open (struct point *p)
{
  uint64_t size = P.g.disk_size, nseg;
  unsigned k;
  int fd0 = tmpfile ();

  if (fd0 == -1)
    return -1;
  if (!P.seg_known) {
    /* Once: can one file hold the disk?  Else, in segments of what? */
    unsigned shift;
    int r = filesize_segments (fd0, size, P.g.shift, &shift);
    if (r != 0) {
      int e = r == 1 ? EFBIG : errno;
      close (fd0);
      errno = e;
      return -1;
    }
    P.seg_shift = shift;
    P.seg_known = true;
    if (shift)
      nbdkit_debug ("freeze: freeze-dir cannot hold a file of %" PRIu64
                    " bytes: scratch in segments of 2^%u bytes", size,
                    shift);
  }
  nseg = filesize_nseg (size, P.seg_shift);
  if (nseg > FILESIZE_MAX_SEGS) {
    close (fd0);
    errno = EFBIG;
    return -1;
  }
  p->fds = malloc (nseg * sizeof *p->fds);
  if (p->fds == NULL) {
    close (fd0);
    errno = ENOMEM;
    return -1;
  }
  p->fds[0] = fd0;
  for (k = 1; k < nseg; ++k)
    if ((p->fds[k] = tmpfile ()) == -1) {
      int e = errno;
      p->nseg = k;
      errno = e;
      return -1;                /* point_free closes them */
    }
  p->nseg = nseg;
  return 0;
}

/* The file holding offset (a block never straddles two), and the offset
 * in it.
 */
static int
seg_fd (const struct point *p, uint64_t *offset)
{
  uint64_t k = 0;

  if (P.seg_shift) {
    k = *offset >> P.seg_shift;
    *offset &= (UINT64_C (1) << P.seg_shift) - 1;
  }
  return k < p->nseg ? p->fds[k] : -1;
}

int
scratch_pwrite (struct point *p, const void *buf, uint64_t n,
                uint64_t offset)
{
  int fd = seg_fd (p, &offset);

  if (fd == -1) {
    errno = EIO;
    return -1;
  }
  return pwrite_full (fd, buf, n, offset);
}

int
scratch_pread (struct point *p, void *buf, uint64_t n, uint64_t offset)
{
  int fd = seg_fd (p, &offset);

  if (fd == -1) {
    errno = EIO;
    return -1;
  }
  return pread_exact (fd, buf, n, offset);
}
