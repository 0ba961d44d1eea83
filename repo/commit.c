/* nbdsnap repository: committing a point (index, manifest, rename).
 *
 * docs/repository-format.md, 10.1 step 4: the sorted index is written
 * from index.unsorted, the data file cut to its size and synced, the
 * manifest written under the points/ lock, and the temporary directory
 * renamed into place (or, for a merge, exchanged with the point it
 * replaces).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gnutls/crypto.h>

#include "fileio.h"
#include "repo-internal.h"

/* Order of the index: by block, then by arrival. */
static int
compare_pair (const void *av, const void *bv)
{
  const struct pair *a = av, *b = bv;

  if (a->block != b->block)
    return a->block < b->block ? -1 : 1;
  return a->rec < b->rec ? -1 : a->rec > b->rec;
}

/* Write the sorted index (last record of a block wins) and set
 * w->m.blocks and w->m.index_sha.  -1 and errno.
 */
static int
writer_write_index (struct repo_writer *w)
{
  uint8_t *recs = NULL, *out = NULL, hdr[INDEX_HDR];
  size_t outlen = 0, i;
  uint64_t count = 0, spill_size = w->nrecords * ENTRY_SIZE;
  gnutls_hash_hd_t h = NULL;
  int fd = -1, ret = -1, saved;

  if (write_full (w->spillfd, w->spill, w->spill_len) == -1)
    goto err;
  w->spill_len = 0;
  if (spill_size > 0) {
    recs = mmap (NULL, spill_size, PROT_READ, MAP_PRIVATE, w->spillfd, 0);
    if (recs == MAP_FAILED) {
      recs = NULL;
      goto err;
    }
  }
  if (w->npairs > 1)            /* pairs is NULL when there is none */
    qsort (w->pairs, w->npairs, sizeof *w->pairs, compare_pair);
  for (i = 0; i < w->npairs; ++i)
    if (i + 1 == w->npairs || w->pairs[i + 1].block != w->pairs[i].block)
      count++;
  out = malloc (IOBUF);
  if (out == NULL || gnutls_hash_init (&h, GNUTLS_DIG_SHA256) < 0)
    goto err;
  fd = openat (w->dirfd, "index", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600);
  if (fd == -1)
    goto err;
  memset (hdr, 0, sizeof hdr);
  memcpy (hdr, INDEX_MAGIC, 8);
  put_le32 (hdr + 8, INDEX_VERSION);
  put_le32 (hdr + 12, ENTRY_SIZE);
  put_le64 (hdr + 16, count);
  put_le32 (hdr + 24, w->g.block_size);
  memcpy (out, hdr, INDEX_HDR);
  outlen = INDEX_HDR;
  for (i = 0; i < w->npairs; ++i) {
    if (i + 1 < w->npairs && w->pairs[i + 1].block == w->pairs[i].block)
      continue;
    if (outlen + ENTRY_SIZE > IOBUF) {
      gnutls_hash (h, out, outlen);
      if (write_full (fd, out, outlen) == -1)
        goto err;
      outlen = 0;
    }
    memcpy (out + outlen, recs + w->pairs[i].rec * ENTRY_SIZE, ENTRY_SIZE);
    outlen += ENTRY_SIZE;
  }
  gnutls_hash (h, out, outlen);
  gnutls_hash_deinit (h, w->m.index_sha);
  h = NULL;
  memcpy (out + outlen, w->m.index_sha, SHA256_LEN);
  outlen += SHA256_LEN;
  if (write_full (fd, out, outlen) == -1 || fsync (fd) == -1)
    goto err;
  ret = close_written (fd);
  fd = -1;
  if (ret == -1)
    goto err;
  w->m.blocks = count;
 err:
  if (ret == -1 && errno == 0)
    errno = ENOMEM;
  saved = errno;
  if (h)
    gnutls_hash_deinit (h, NULL);
  if (fd >= 0)
    close (fd);
  if (recs)
    munmap (recs, spill_size);
  free (out);
  errno = saved;
  return ret;
}

/* Write a file inside the temp dir (the directory rename is the commit,
 * so no temp name is needed here).  -1 and errno.
 */
static int
write_file_at (int dirfd, const char *name, const void *buf, size_t len)
{
  int fd = openat (dirfd, name, O_WRONLY|O_CREAT|O_TRUNC|O_NOFOLLOW|O_CLOEXEC,
                   0600);
  int saved;

  if (fd == -1)
    return -1;
  if (write_full (fd, buf, len) == -1 || fsync (fd) == -1) {
    saved = errno;
    close (fd);
    errno = saved;
    return -1;
  }
  return close_written (fd);
}

/* Close one of w's data descriptors after the data was synced: close
 * can report a write error nothing else did.  -1 and errno.
 */
static int
close_data (int *fd)
{
  int f = *fd;

  *fd = -1;
  return f >= 0 ? close_written (f) : 0;
}

/* The point is renamed into place (or, for a merge, exchanged with the
 * old one, which is now under w->tmpname), but points/ could not be
 * synced (errno e): take it out again, so that the operation fails as a
 * whole.  Returns -1 (undone: the repository is as before, although
 * after a crash the complete new point may still appear) or -2 (not
 * undone: the new point is in place but may not survive a crash), with
 * err set.
 */
static int
undo_rename (struct repo_writer *w, int e, char *err, size_t errlen)
{
  struct repo *r = w->r;
  char tmp[REPO_NAME_MAX + 32];
  int ok;

  snprintf (tmp, sizeof tmp, ".tmp-%s-%ld", w->m.name, (long) getpid ());
  if (!w->merge)
    ok = renameat (r->pointsfd, w->m.name, r->pointsfd, tmp) == 0;
  else
    ok = renameat2 (r->pointsfd, tmp, r->pointsfd, w->m.name,
                    RENAME_EXCHANGE) == 0;
  /* Either way, what is under the temporary name now (the new point,
   * or for a merge that was not undone the old one) is left to the
   * cleanup of a later run: removing its files now could reach the disk
   * before the renames, and leave a point without files after a crash.
   */
  w->tmpname[0] = '\0';
  if (ok) {
    seterr (err, errlen, "cannot sync %s/points after putting point %s in "
            "place: %s; the %s was undone (%s/points/%s is removed by the "
            "next backup or verify; after a crash the new point may still "
            "appear, complete)", r->dir, w->m.name, strerror (e),
            w->merge ? "merge" : "commit", r->dir, tmp);
    errno = e;
    return -1;
  }
  seterr (err, errlen, "point %s is in %s/points, but that directory "
          "cannot be synced (%s): the point may not survive a crash, and "
          "it could not be taken out again (%s); check the disk, then run "
          "'nbdsnap verify %s'", w->m.name, r->dir, strerror (e),
          strerror (errno), r->dir);
  errno = e;
  return -2;
}

/* Exchange the merged point (under w->tmpname) with the point it
 * replaces; the old one ends up under w->tmpname.  -1 and errno (the
 * old point is in place).
 */
static int
exchange_merged (struct repo_writer *w)
{
  struct repo *r = w->r;
  char old[REPO_NAME_MAX + 32];
  int saved;

  if (renameat2 (r->pointsfd, w->tmpname, r->pointsfd, w->m.name,
                 RENAME_EXCHANGE) == 0)
    return 0;
  if (errno != EINVAL && errno != ENOSYS)
    return -1;
  /* No RENAME_EXCHANGE: a crash between these two renames leaves
   * .old-NAME-PID, which repo_clean_tmp renames back.  Done in three
   * steps, the old point ends up under the temporary name like an
   * exchange leaves it.
   */
  snprintf (old, sizeof old, ".old-%s-%ld", w->m.name, (long) getpid ());
  if (renameat (r->pointsfd, w->m.name, r->pointsfd, old) == -1)
    return -1;
  if (renameat (r->pointsfd, w->tmpname, r->pointsfd, w->m.name) == -1)
    goto back;
  if (renameat (r->pointsfd, old, r->pointsfd, w->tmpname) == -1) {
    /* The merged point is in place; the old one stays .old-NAME-PID,
     * which the cleanup removes (NAME exists).
     */
    w->tmpname[0] = '\0';
  }
  return 0;

 back:
  saved = errno;
  if (renameat (r->pointsfd, old, r->pointsfd, w->m.name) == -1)
    w->tmpname[0] = '\0';       /* leave both to the cleanup */
  errno = saved;
  return -1;
}

int
repo_writer_commit (struct repo_writer *w, char *err, size_t errlen)
{
  struct repo *r = w->r;
  POINTS_LOCKED struct repo *locked = NULL;
  char buf[MANIFEST_MAX];
  ssize_t len;
  const char *step;
  int ret;

  if (w->failed) {
    seterr (err, errlen, "%s", w->err);
    goto fail;
  }
  errno = 0;
  step = "write the index";
  if (writer_write_index (w) == -1)
    goto ioerr;
  close (w->spillfd);           /* read back already; removed now */
  w->spillfd = -1;
  step = "remove index.unsorted";
  if (unlinkat (w->dirfd, "index.unsorted", 0) == -1)
    goto ioerr;
  step = "cut the data file to its size";
  if (w->alloc_end > w->data_end && ftruncate (w->datafd, w->data_end) == -1)
    goto ioerr;
  step = "sync the data";
  if (fsync (w->datafd) == -1)
    goto ioerr;
  step = "close the data file";
  if (close_data (&w->directfd) == -1 || close_data (&w->datafd) == -1)
    goto ioerr;
  w->m.data_size = w->data_end;

  /* A merge holds the lock already, and keeps the child's sequence. */
  if (!w->merge) {
    if ((locked = points_lock (r, err, errlen)) == NULL)
      goto fail;
    /* The last line of the parent's hold: a program that ignored it
     * (not nbdsnap) may have removed or replaced the parent.
     */
    if (w->parentfd >= 0) {
      int there = point_still_there (r, w->m.parent, w->parentfd);
      if (there != 1) {
        if (there == -1)
          seterr (err, errlen, "cannot check the parent point %s of point "
                  "%s in %s: %m", w->m.parent, w->m.name, r->dir);
        else
          seterr (err, errlen, "the parent point %s of point %s was removed "
                  "or replaced in %s while the backup ran (by something "
                  "that ignored its hold): the point cannot be committed",
                  w->m.parent, w->m.name, r->dir);
        goto fail;
      }
    }
    w->m.sequence = next_sequence (r, buf, sizeof buf);
    if (w->m.sequence == 0) {
      seterr (err, errlen, "cannot number point %s: %s", w->m.name, buf);
      goto fail;
    }
  }
  step = "write the manifest";
  len = manifest_format (&w->m, buf);
  if (len == -1 || write_file_at (w->dirfd, "manifest", buf, len) == -1)
    goto ioerr;
  step = "sync the point directory";
  if (fsync (w->dirfd) == -1)
    goto ioerr;
  step = "rename the point into place";
  if (!w->merge) {
    if (renameat2 (r->pointsfd, w->tmpname, r->pointsfd, w->m.name,
                   RENAME_NOREPLACE) == -1) {
      if (errno == EEXIST || errno == ENOTEMPTY) {
        seterr (err, errlen, "a restore point named %s already exists in %s "
                "(created while this backup ran)", w->m.name, r->dir);
        goto fail;
      }
      if (errno != EINVAL && errno != ENOSYS)
        goto ioerr;
      /* Filesystem without RENAME_NOREPLACE: we hold the lock. */
      if (faccessat (r->pointsfd, w->m.name, F_OK, AT_SYMLINK_NOFOLLOW)
          == 0) {
        seterr (err, errlen, "a restore point named %s already exists in %s",
                w->m.name, r->dir);
        goto fail;
      }
      if (renameat (r->pointsfd, w->tmpname, r->pointsfd, w->m.name) == -1)
        goto ioerr;
    }
    w->tmpname[0] = '\0';         /* nothing to remove any more */
  }
  else if (exchange_merged (w) == -1)
    goto ioerr;

  /* The point is in place; it exists for good once points/ is synced. */
  if (fsync_dirfd (r->pointsfd) == -1) {
    ret = undo_rename (w, errno, err, errlen);
    writer_free (w);
    return ret;
  }
  /* Merge: the old point, now under the temporary name, goes. */
  if (w->tmpname[0] && remove_flat_dir (r->pointsfd, w->tmpname) == -1) {
    seterr (err, errlen, "point %s is merged, but the old copy in "
            "%s/points/%s could not be removed (%m); the next backup or "
            "verify removes it", w->m.name, r->dir, w->tmpname);
    w->tmpname[0] = '\0';
    writer_free (w);
    errno = EIO;
    return -2;
  }
  w->tmpname[0] = '\0';
  writer_free (w);
  return 0;

 ioerr:
  seterr (err, errlen, "cannot %s of point %s in %s/points/%s: %s", step,
          w->m.name, r->dir, w->tmpname, strerror (errno ? errno : EIO));
 fail:
  writer_free (w);
  errno = EIO;
  return -1;
}

void
repo_writer_abort (struct repo_writer *w)
{
  if (w)
    writer_free (w);
}
