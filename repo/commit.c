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
  w->m.blocks = count;
  ret = 0;
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
  int fd = openat (dirfd, name, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0600);
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

int
repo_writer_commit (struct repo_writer *w, char *err, size_t errlen)
{
  struct repo *r = w->r;
  POINTS_LOCKED struct repo *locked = NULL;
  char buf[MANIFEST_MAX];
  ssize_t len;
  const char *step;

  if (w->failed) {
    seterr (err, errlen, "%s", w->err);
    goto fail;
  }
  errno = 0;
  step = "write the index";
  if (writer_write_index (w) == -1)
    goto ioerr;
  close (w->spillfd);
  w->spillfd = -1;
  unlinkat (w->dirfd, "index.unsorted", 0);
  step = "cut the data file to its size";
  if (w->alloc_end > w->data_end && ftruncate (w->datafd, w->data_end) == -1)
    goto ioerr;
  step = "sync the data";
  if (fsync (w->datafd) == -1)
    goto ioerr;
  w->m.data_size = w->data_end;

  /* A merge holds the lock already, and keeps the child's sequence. */
  if (!w->merge) {
    if ((locked = points_lock (r, err, errlen)) == NULL)
      goto fail;
    w->m.sequence = next_sequence (r);
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
  else {
    /* Merge: swap the new combined point with the old one atomically;
     * the old one is then under the temp name and removed below.
     */
    if (renameat2 (r->pointsfd, w->tmpname, r->pointsfd, w->m.name,
                   RENAME_EXCHANGE) == -1) {
      char old[REPO_NAME_MAX + 32];
      if (errno != EINVAL && errno != ENOSYS)
        goto ioerr;
      /* No RENAME_EXCHANGE: a crash between these two renames leaves
       * .old-NAME-PID, which repo_clean_tmp renames back.
       */
      snprintf (old, sizeof old, ".old-%s-%ld", w->m.name, (long) getpid ());
      if (renameat (r->pointsfd, w->m.name, r->pointsfd, old) == -1)
        goto ioerr;
      if (renameat (r->pointsfd, w->tmpname, r->pointsfd, w->m.name) == -1) {
        int saved = errno;
        renameat (r->pointsfd, old, r->pointsfd, w->m.name);
        errno = saved;
        goto ioerr;
      }
      fsync (r->pointsfd);
      remove_flat_dir (r->pointsfd, old);
      w->tmpname[0] = '\0';
    }
  }
  /* The point exists now, whatever this fsync says. */
  (void) fsync (r->pointsfd);
  writer_free (w);              /* merge: removes the old point */
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
