/* nbdsnap snapshot filter: a layer's data, in one file or in segments
 * (ldata.h).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"
#include "filesize.h"
#include "layer.h"
#include "ldata.h"
#include "minmax.h"

struct ldata_layout ldata_layout = { .seg_shift = 0, .nseg = 1 };

int
ldata_set_layout (unsigned seg_shift, uint64_t disk_size)
{
  uint64_t n = 1;

  if (seg_shift) {
    if (seg_shift >= 63) {
      errno = EINVAL;
      return -1;
    }
    n = filesize_nseg (disk_size, seg_shift);
    if (n > LDATA_MAX_SEGS) {
      errno = EINVAL;
      return -1;
    }
  }
  ldata_layout.seg_shift = seg_shift;
  ldata_layout.nseg = n;
  return 0;
}

/* Open the probe file in dirfd (removed again by probe_close). */
static const char probe[] = ".nbdsnap-sizeprobe";

static int
probe_open (int dirfd)
{
  return openat (dirfd, probe, O_RDWR|O_CREAT|O_TRUNC|O_NOFOLLOW|O_CLOEXEC,
                 0600);
}

static void
probe_close (int dirfd, int fd)
{
  int e = errno;

  close (fd);
  unlinkat (dirfd, probe, 0);
  errno = e;
}

int
ldata_fits (int dirfd, uint64_t size)
{
  int fd = probe_open (dirfd), r;

  if (fd == -1)
    return -1;
  r = filesize_fits (fd, size);
  probe_close (dirfd, fd);
  return r;
}

/* The name of segment k of layer id's data. */
static void
seg_name (uint64_t id, unsigned k, char *buf, size_t len)
{
  if (k == 0)
    layer_data_name (id, buf, len);
  else
    snprintf (buf, len, "layer-%" PRIu64 ".data.%u", id, k);
}

int
ldata_open (int dirfd, struct layer *l, bool create, char *why,
            size_t whylen)
{
  int flags = O_RDWR|O_NOFOLLOW|O_CLOEXEC | (create ? O_CREAT|O_TRUNC : 0);
  unsigned k, n = ldata_layout.nseg;
  char name[64];

  l->fds = malloc (n * sizeof *l->fds);
  if (l->fds == NULL) {
    snprintf (why, whylen, "out of memory");
    errno = ENOMEM;
    return -1;
  }
  l->seg_shift = ldata_layout.seg_shift;
  for (k = 0; k < n; ++k) {
    seg_name (l->id, k, name, sizeof name);
    l->fds[k] = openat (dirfd, name, flags, 0600);
    if (l->fds[k] == -1) {
      int e = errno;
      snprintf (why, whylen, "%s: %s", name, strerror (e));
      l->nseg = k;
      ldata_close_quietly (l);
      errno = e;
      return -1;
    }
  }
  l->nseg = n;
  return 0;
}

enum op { OP_READ, OP_WRITE, OP_PUNCH };

/* Do op on [off, off+len) of l's data, segment by segment. */
static int
seg_io (const struct layer *l, enum op op, char *buf, uint64_t len,
        uint64_t off)
{
  while (len > 0) {
    uint64_t k = l->seg_shift ? off >> l->seg_shift : 0;
    uint64_t soff = off, n = len;
    int r;

    if (l->seg_shift) {
      uint64_t segsize = UINT64_C (1) << l->seg_shift;
      soff = off & (segsize - 1);
      n = min64 (len, segsize - soff);
    }
    if (k >= l->nseg) {
      errno = EIO;              /* past the disk: a bug */
      return -1;
    }
    switch (op) {
    case OP_READ:
      r = pread_sparse (l->fds[k], buf, n, soff);
      break;
    case OP_WRITE:
      r = pwrite_full (l->fds[k], buf, n, soff);
      break;
    default:
      r = fallocate (l->fds[k], FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE,
                     soff, n);
    }
    if (r == -1)
      return -1;
    if (buf)
      buf += n;
    off += n;
    len -= n;
  }
  return 0;
}

int
ldata_pread (const struct layer *l, void *buf, uint64_t len, uint64_t off)
{
  return seg_io (l, OP_READ, buf, len, off);
}

int
ldata_pwrite (const struct layer *l, const void *buf, uint64_t len,
              uint64_t off)
{
  return seg_io (l, OP_WRITE, (char *) buf, len, off);
}

int
ldata_punch (const struct layer *l, uint64_t off, uint64_t len)
{
  return seg_io (l, OP_PUNCH, NULL, len, off);
}

int
ldata_sync (const struct layer *l, char *name, size_t len)
{
  unsigned k;

  for (k = 0; k < l->nseg; ++k)
    if (fdatasync (l->fds[k]) == -1) {
      int e = errno;

      seg_name (l->id, k, name, len);
      errno = e;
      return -1;
    }
  return 0;
}

int
ldata_close (struct layer *l)
{
  unsigned k;
  int r = 0, e = 0;

  for (k = 0; k < l->nseg; ++k)
    if (l->fds[k] >= 0 && close_written (l->fds[k]) == -1 && r == 0) {
      r = -1;
      e = errno;
    }
  free (l->fds);
  l->fds = NULL;
  l->nseg = 0;
  errno = e;
  return r;
}

void
ldata_close_quietly (struct layer *l)
{
  unsigned k;

  for (k = 0; k < l->nseg; ++k)
    if (l->fds[k] >= 0)
      close (l->fds[k]);
  free (l->fds);
  l->fds = NULL;
  l->nseg = 0;
}

void
ldata_unlink (int dirfd, uint64_t id)
{
  char name[64];
  unsigned k;

  layer_data_name (id, name, sizeof name);
  unlinkat (dirfd, name, 0);
  /* Every segment the layout has: a crash part-way through an earlier
   * unlink may have left gaps.
   */
  for (k = 1; k < ldata_layout.nseg; ++k) {
    seg_name (id, k, name, sizeof name);
    unlinkat (dirfd, name, 0);
  }
}

/* Human-readable size for messages: "16 TiB", or bytes. */
static void
human (uint64_t n, char *buf, size_t len)
{
  static const char *const unit[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
  int i = -1;

  while (i < 4 && n >= 1024 && n % 1024 == 0) {
    n /= 1024;
    i++;
  }
  if (i < 0)
    snprintf (buf, len, "%" PRIu64 " bytes", n);
  else
    snprintf (buf, len, "%" PRIu64 " %s", n, unit[i]);
}

int
ldata_choose (int dirfd, uint64_t size, uint32_t bs, unsigned *seg_shift,
              char *why, size_t whylen)
{
  char hs[32], hseg[32];
  unsigned k;
  int fd = probe_open (dirfd), r;
  uint64_t nseg;

  r = fd == -1 ? -1 : filesize_segments (fd, size, __builtin_ctz (bs), &k);
  if (fd >= 0)
    probe_close (dirfd, fd);
  if (r == 0 && k == 0) {
    *seg_shift = 0;
    return 0;
  }
  human (size, hs, sizeof hs);
  if (r == -1) {
    snprintf (why, whylen, "cannot find out how large a file it can hold "
              "(a probe file could not be made: %s)", strerror (errno));
    return -1;
  }
  if (r == 1) {
    snprintf (why, whylen, "its file system cannot hold a file of even "
              "one block (%" PRIu32 " bytes; is a file size limit, "
              "ulimit -f, set?); put snapshot-dir on another file system",
              bs);
    errno = EFBIG;
    return -1;
  }
  human (UINT64_C (1) << k, hseg, sizeof hseg);
  nseg = filesize_nseg (size, k);
  if (nseg > LDATA_MAX_SEGS) {
    snprintf (why, whylen, "its file system cannot hold a file as large as "
              "the disk (%s): the largest power of two it holds is %s, and "
              "the disk would need %" PRIu64 " data files per snapshot "
              "(at most %d). Put snapshot-dir on a file system that holds "
              "larger files (XFS, btrfs; ext4 holds 16 TiB - 4 KiB with "
              "4 KiB blocks), raise the file size limit (ulimit -f), or "
              "use a smaller disk", hs, hseg, nseg, LDATA_MAX_SEGS);
    errno = EFBIG;
    return -1;
  }
  *seg_shift = k;
  return 0;
}

void
ldata_describe (uint64_t size, unsigned seg_shift, char *buf, size_t len)
{
  char hs[32], hseg[32];

  human (size, hs, sizeof hs);
  if (seg_shift == 0)
    snprintf (buf, len, "one data file per layer for a disk of %s", hs);
  else {
    human (UINT64_C (1) << seg_shift, hseg, sizeof hseg);
    snprintf (buf, len, "data in files of %s (%u per layer) for a disk of "
              "%s", hseg, ldata_layout.nseg, hs);
  }
}
