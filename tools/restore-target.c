/* nbdsnap tool: restore: the target written.
 *
 *  - a regular file: a new temporary file next to it, sparse (blocks that
 *    read as zero stay holes), fsynced and renamed over FILE only when
 *    every block was read and verified: on damage FILE is not touched;
 *  - a block device (or another existing non-regular file): in place,
 *    zero blocks zeroed (BLKZEROOUT, or written);
 *  - an NBD URI: nbd_pwrite / nbd_zero (over N connections if the server
 *    allows multi-conn), then flush.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#include "fileio.h"
#include "lockscope.h"
#include "minmax.h"
#include "restore.h"
#include "writeback.h"

/* NBD: in requests the server takes; a file or device: one pwrite. */
int
write_data (struct restore *R, struct nbd_handle *h, const void *buf,
            uint64_t len, uint64_t off)
{
  uint64_t done, piece;

  if (R->kind == T_NBD) {
    for (done = 0; done < len; done += piece) {
      piece = min64 (len - done, R->maxreq);
      if (nbd_pwrite (h, (const char *) buf + done, piece, off + done,
                      0) == -1) {
        restore_fail (R, "writing %s at offset %" PRIu64 ": %s", R->target,
                      off + done, nbd_get_error ());
        return -1;
      }
    }
    return 0;
  }
  /* One writer at a time: buffered writes to one file serialize in the
   * kernel anyway (inode lock), and waiting here sleeps instead of
   * spinning on the CPUs the other threads need to verify blocks.
   */
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&R->wlock);
    if (pwrite_full (R->fd, buf, len, off) == -1) {
      restore_fail (R, "writing %s at offset %" PRIu64 ": %s", R->target, off,
                    strerror (errno));
      return -1;
    }
  }
  /* Write back as we go and keep the page cache small (as nbdcopy
   * does): the final fsync has little left to do.  A writeback error is
   * a write error: the final fsync would not report it again.
   */
  if (writeback_after_write (R->fd, off, len) == -1) {
    restore_fail (R, "writing %s (writeback of the range before offset %"
                  PRIu64 "): %s", R->target, off, strerror (errno));
    return -1;
  }
  return 0;
}

/* A new file: nothing (a hole already); NBD: zero requests if the
 * server can; a block device: BLKZEROOUT; else write zeroes.
 */
int
write_zero (struct restore *R, struct nbd_handle *h, uint64_t len,
            uint64_t off)
{
  static const char zeroes[1 << 16];
  uint64_t done, piece;

  if (len == 0)
    return 0;
  if (R->kind == T_FILE)
    return 0;                   /* a new sparse file: already a hole */
  if (R->kind == T_NBD && R->can_zero) {
    for (done = 0; done < len; done += piece) {
      piece = min64 (len - done, ZERO_MAX);
      if (nbd_zero (h, piece, off + done, 0) == -1) {
        restore_fail (R, "zeroing %s at offset %" PRIu64 ": %s", R->target,
                      off + done, nbd_get_error ());
        return -1;
      }
    }
    return 0;
  }
  if (R->kind == T_DEVICE && R->blkdev) {
    uint64_t range[2] = { off, len };
    if (ioctl (R->fd, BLKZEROOUT, range) == 0)
      return 0;
  }
  for (done = 0; done < len; done += piece) {
    piece = min64 (len - done, sizeof zeroes);
    if (write_data (R, h, zeroes, piece, off + done) == -1)
      return -1;
  }
  return 0;
}

/* "://" in it: an NBD URI (N connections if it allows multi-conn);
 * an existing non-regular file: in place; else a new temporary file.
 */
int
open_target (struct restore *R)
{
  char err[ERRLEN];
  struct stat st;

  if (strstr (R->target, "://")) {
    int64_t tsize;
    int i;

    R->kind = T_NBD;
    R->h = calloc (R->threads, sizeof *R->h);
    if (R->h == NULL)
      return fail (EXIT_FAILED, "out of memory");
    R->h[0] = connect_export (R->target, NULL, false, NULL, err,
                              sizeof err);
    if (R->h[0] == NULL)
      return fail (EXIT_USAGE, "cannot connect to %s: %s", R->target, err);
    R->nh = 1;
    if (nbd_is_read_only (R->h[0]) == 1)
      return fail (EXIT_FAILED, "%s is read-only", R->target);
    tsize = nbd_get_size (R->h[0]);
    if (tsize < 0)
      return fail (EXIT_FAILED, "%s: %s", R->target, nbd_get_error ());
    if ((uint64_t) tsize < R->size)
      return fail (EXIT_FAILED, "%s is too small: %" PRId64 " bytes, the "
                   "point's disk is %" PRIu64, R->target, tsize, R->size);
    if ((uint64_t) tsize > R->size)
      msg ("note: %s is larger (%" PRId64 " bytes) than the point's disk "
           "(%" PRIu64 "): the bytes after it are left as they are",
           R->target, tsize, R->size);
    R->can_zero = nbd_can_zero (R->h[0]) == 1;
    R->maxreq = CHUNK_BYTES;
    {
      int64_t mx = nbd_get_block_size (R->h[0], LIBNBD_SIZE_MAXIMUM);
      if (mx > 0 && (uint64_t) mx < R->maxreq)
        R->maxreq = mx;
    }
    if (nbd_can_multi_conn (R->h[0]) == 1) {
      for (i = 1; i < R->threads; ++i) {
        R->h[i] = connect_export (R->target, NULL, false, NULL, err,
                                  sizeof err);
        if (R->h[i] == NULL)
          return fail (EXIT_FAILED, "opening another connection to %s: %s",
                       R->target, err);
        R->nh++;
      }
    }
    return EXIT_OK;
  }

  if (stat (R->target, &st) == 0 && !S_ISREG (st.st_mode)) {
    /* A device (or /dev/null ...): write in place. */
    R->kind = T_DEVICE;
    R->blkdev = S_ISBLK (st.st_mode);
    R->fd = open (R->target, O_WRONLY | O_CLOEXEC);
    if (R->fd == -1)
      return fail (EXIT_FAILED, "%s: %s", R->target, strerror (errno));
    if (R->blkdev) {
      uint64_t dsize = 0;
      if (ioctl (R->fd, BLKGETSIZE64, &dsize) == 0 && dsize < R->size)
        return fail (EXIT_FAILED, "%s is too small: %" PRIu64 " bytes, the "
                     "point's disk is %" PRIu64, R->target, dsize, R->size);
    }
    return EXIT_OK;
  }

  /* A regular file: build it under a temporary name next to it (next to
   * the file a symbolic link points to: the link stays).
   */
  R->kind = T_FILE;
  {
    char *real = realpath (R->target, NULL);
    if (real)
      R->target = R->realtarget = real;
  }
  if (asprintf (&R->tmpname, "%s.nbdsnap-XXXXXX", R->target) == -1)
    return fail (EXIT_FAILED, "out of memory");
  R->fd = mkstemp (R->tmpname);
  if (R->fd == -1) {
    int e = errno;
    free (R->tmpname);
    R->tmpname = NULL;
    return fail (EXIT_FAILED, "cannot create a file next to %s: %s",
                 R->target, strerror (e));
  }
  {
    /* The mode of the file it replaces, else 0600: a new file holds a
     * disk's contents, which other users have no business reading
     * (whatever the umask; chmod it to share it).
     */
    mode_t m = stat (R->target, &st) == 0 ? (st.st_mode & 07777) : 0600;
    if (fchmod (R->fd, m) == -1 || ftruncate (R->fd, R->size) == -1)
      return fail (EXIT_FAILED, "%s: %s", R->tmpname, strerror (errno));
  }
  return EXIT_OK;
}

/* NBD: flush every connection; a file: fsync, close, rename, fsync the
 * directory; a device: fsync, close.  Every one of these is checked: a
 * restore whose data may not be on the target never says it is done.
 */
int
finish_target (struct restore *R)
{
  const char *what = R->kind == T_FILE ? R->tmpname : R->target;
  int i, fd;

  if (R->kind == T_NBD) {
    for (i = 0; i < R->nh; ++i)
      if (nbd_can_flush (R->h[i]) == 1 && nbd_flush (R->h[i], 0) == -1)
        return fail (EXIT_FAILED, "restore of '%s' failed: flushing %s: %s",
                     R->point, R->target, nbd_get_error ());
    return EXIT_OK;
  }
  if (fsync (R->fd) == -1) {
    /* A character device such as /dev/null has nothing to make
     * durable (EINVAL); a block device or a file always does.
     */
    if (!(R->kind == T_DEVICE && !R->blkdev && errno == EINVAL))
      return fail (EXIT_FAILED, "restore of '%s' failed: fsync %s: %s; %s",
                   R->point, what, strerror (errno),
                   R->kind == T_FILE ? "the target is unchanged"
                   : "the data written may not be on the device");
  }
  fd = R->fd;
  R->fd = -1;
  if (close_written (fd) == -1)
    return fail (EXIT_FAILED, "restore of '%s' failed: close %s: %s; %s",
                 R->point, what, strerror (errno),
                 R->kind == T_FILE ? "the target is unchanged"
                 : "the data written may not be on the device");
  if (R->kind == T_FILE) {
    char *d;
    int dfd, e = 0;

    /* Everything the directory fsync needs comes before the rename:
     * afterwards nothing can be undone.
     */
    d = strdup (R->target);
    if (d == NULL)
      return fail (EXIT_FAILED, "restore of '%s' failed: out of memory; "
                   "the target is unchanged", R->point);
    dfd = open (dirname (d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    e = errno;
    free (d);
    if (dfd == -1)
      return fail (EXIT_FAILED, "restore of '%s' failed: cannot open the "
                   "directory of %s: %s; the target is unchanged", R->point,
                   R->target, strerror (e));
    if (rename (R->tmpname, R->target) == -1) {
      e = errno;
      close (dfd);
      return fail (EXIT_FAILED, "restore of '%s' failed: rename %s to %s: "
                   "%s; the target is unchanged", R->point, R->tmpname,
                   R->target, strerror (e));
    }
    free (R->tmpname);
    R->tmpname = NULL;
    /* The new file is in place (the old one is gone): if its directory
     * entry cannot be made durable, say so.
     */
    e = fsync (dfd) == -1 ? errno : 0;
    close (dfd);
    if (e)
      return fail (EXIT_FAILED, "restore of '%s': %s is in place, but its "
                   "directory could not be synced (%s): it may not survive "
                   "a crash", R->point, R->target, strerror (e));
  }
  return EXIT_OK;
}

/* Disconnect or close. */
void
close_target (struct restore *R)
{
  int i;

  if (R->kind == T_NBD) {
    for (i = 0; i < R->nh; ++i)
      disconnect (R->h[i]);
    free (R->h);
    R->h = NULL;
    R->nh = 0;
  }
  else if (R->fd >= 0) {
    close (R->fd);
    R->fd = -1;
  }
  if (R->tmpname) {             /* not renamed: remove it */
    if (unlink (R->tmpname) == -1 && errno != ENOENT)
      msg ("warning: could not remove the temporary file %s: %s; remove "
           "it by hand", R->tmpname, strerror (errno));
    free (R->tmpname);
    R->tmpname = NULL;
  }
}
