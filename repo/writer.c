/* nbdsnap repository: writing a point (begin, put_*).
 *
 * A writer builds its point in points/.tmp-NAME-PID: the stored blocks
 * go to data as they come, from several threads at once; their index
 * entries are buffered and spilled, in arrival order, to index.unsorted.
 * commit.c turns that into a point (docs/repository-format.md, 10.1).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "lockscope.h"
#include "repo-internal.h"
#include "writeback.h"

/* The zstd level of compressed points. */
#define ZSTD_LEVEL 3

/* Write the stored bytes of records into [off, off + len) of the data
 * file.  Page-aligned writes from page-aligned memory bypass the page
 * cache (O_DIRECT): the bytes go from the caller's buffer to the disk,
 * with no copy and no dirty pages to write back later, which is most of
 * what a backup costs besides reading and hashing.  Anything else, or a
 * file system without O_DIRECT, is written through the page cache.
 * Either way the commit's fsync makes the data durable.
 */
#define DIRECT_ALIGN 4096
#define DIRECT_MIN (256u << 10)
/* How far ahead writer_reserve allocates the data file. */
#define PREALLOC (64u << 20)

/* writer_fail with w->lock held. */
static void __attribute__ ((format (printf, 2, 0)))
writer_vfail (struct repo_writer *w, const char *fmt, va_list ap)
{
  if (!w->failed) {
    vsnprintf (w->err, sizeof w->err, fmt, ap);
    w->failed = true;
  }
}

/* writer_fail with w->lock held. */
static void __attribute__ ((format (printf, 2, 3)))
writer_fail_locked (struct repo_writer *w, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  writer_vfail (w, fmt, ap);
  va_end (ap);
}

/* Record the first error of w (later ones are dropped). */
static void __attribute__ ((format (printf, 2, 3)))
writer_fail (struct repo_writer *w, const char *fmt, ...)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&w->lock);
  va_list ap;

  va_start (ap, fmt);
  writer_vfail (w, fmt, ap);
  va_end (ap);
}

uint64_t
repo_writer_stored_bytes (struct repo_writer *w)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&w->lock);

  return w->data_end - DATA_HDR;
}

const char *
repo_writer_error (struct repo_writer *w)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&w->lock);

  return w->failed ? w->err : NULL;
}

void
writer_free (struct repo_writer *w)
{
  if (w->datafd >= 0) close (w->datafd);
  if (w->directfd >= 0) close (w->directfd);
  if (w->spillfd >= 0) close (w->spillfd);
  if (w->dirfd >= 0) close (w->dirfd);
  if (w->parentfd >= 0) close (w->parentfd);    /* the hold goes */
  if (w->tmpname[0])
    remove_flat_dir (w->r->pointsfd, w->tmpname);
  pool_destroy (&w->pool);
  pthread_mutex_destroy (&w->lock);
  free (w->spill);
  free (w->pairs);
  free (w);
}

struct repo_writer *
writer_start (struct repo *r, const struct manifest *m, char *err,
              size_t errlen)
{
  struct repo_writer *w;
  uint8_t hdr[DATA_HDR] = { 0 };      /* zero after the first 16 bytes */

  w = calloc (1, sizeof *w);
  if (w == NULL) {
    seterr (err, errlen, "out of memory");
    return NULL;
  }
  w->r = r;
  w->m = *m;
  w->m.block_size = r->block_size;
  w->dirfd = w->datafd = w->spillfd = w->directfd = w->parentfd = -1;
  geom_init (&w->g, m->disk_size, r->block_size);
  pthread_mutex_init (&w->lock, NULL);
  pool_init (&w->pool, r->block_size);
  w->spill = malloc (IOBUF);
  if (w->spill == NULL) {
    seterr (err, errlen, "out of memory");
    goto fail;
  }
  snprintf (w->tmpname, sizeof w->tmpname, ".tmp-%s-%ld", m->name,
            (long) getpid ());
  remove_flat_dir (r->pointsfd, w->tmpname);
  if (mkdirat (r->pointsfd, w->tmpname, 0700) == -1) {
    seterr (err, errlen, "cannot create %s/points/%s: %m", r->dir,
            w->tmpname);
    w->tmpname[0] = '\0';
    goto fail;
  }
  w->dirfd = openat (r->pointsfd, w->tmpname,
                     O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (w->dirfd == -1)
    goto ioerr;
  w->datafd = openat (w->dirfd, "data",
                      O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600);
  if (w->datafd == -1)
    goto ioerr;
  w->spillfd = openat (w->dirfd, "index.unsorted",
                       O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600);
  if (w->spillfd == -1)
    goto ioerr;
  memcpy (hdr, DATA_MAGIC, 8);
  put_le32 (hdr + 8, DATA_VERSION);
  put_le32 (hdr + 12, r->block_size);
  if (write_full (w->datafd, hdr, DATA_HDR) == -1)
    goto ioerr;
  w->data_end = DATA_HDR;
  /* A second descriptor for direct writes (see writer_store); file
   * systems without O_DIRECT refuse it here or on the first write.
   */
  w->directfd = openat (w->dirfd, "data", O_WRONLY|O_DIRECT|O_CLOEXEC);
  if (w->directfd == -1 && errno != EINVAL && errno != EOPNOTSUPP)
    goto ioerr;                 /* not "unsupported": an error */
  return w;

 ioerr:
  seterr (err, errlen, "cannot create files in %s/points/%s: %m", r->dir,
          w->tmpname);
 fail:
  writer_free (w);
  return NULL;
}

struct repo_writer *
repo_writer_begin (struct repo *r, const char *name, const char *parent,
                   const char *since, uint64_t disk_size, bool compress,
                   char *err, size_t errlen)
{
  struct manifest m, pm;
  struct repo_writer *w;
  char why[128];
  int parentfd = -1;

  memset (&m, 0, sizeof m);
  if (!repo_name_valid (name, why, sizeof why)) {
    seterr (err, errlen, "invalid restore point name '%s': %s", name, why);
    errno = EINVAL;
    return NULL;
  }
  if (since && !repo_name_valid (since, why, sizeof why)) {
    seterr (err, errlen, "invalid checkpoint name '%s': %s", since, why);
    errno = EINVAL;
    return NULL;
  }
  if (disk_size > INT64_MAX) {
    seterr (err, errlen, "disk size %" PRIu64 " is too large", disk_size);
    errno = EINVAL;
    return NULL;
  }
  if (faccessat (r->pointsfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
    seterr (err, errlen, "a restore point named %s already exists in %s "
            "(choose another name or delete it first)", name, r->dir);
    errno = EEXIST;
    return NULL;
  }
  if (parent) {
    /* Under the points/ lock: the parent exists now, and is held from
     * now on, so that no delete or merge removes it under this backup.
     */
    POINTS_LOCKED struct repo *locked = points_lock (r, err, errlen);

    if (locked == NULL)
      return NULL;
    if (manifest_read (r, parent, &pm, err, errlen) == -1)
      return NULL;
    if (pm.block_size != r->block_size) {
      seterr (err, errlen, "parent point %s has block size %" PRIu32
              " but the repository has %" PRIu32 "", parent, pm.block_size,
              r->block_size);
      errno = EINVAL;
      return NULL;
    }
    if (point_hold (r, parent, &parentfd, err, errlen) == -1)
      return NULL;
    strcpy (m.parent, parent);
  }
  strcpy (m.name, name);
  strcpy (m.checkpoint, name);
  if (since)
    strcpy (m.since, since);
  m.full = parent == NULL;
  strcpy (m.kind, m.full ? "full" : "incremental");
  m.disk_size = disk_size;
  m.compressed = compress;
  m.created = time (NULL);
  w = writer_start (r, &m, err, errlen);
  if (w == NULL) {
    if (parentfd >= 0)
      close (parentfd);
    return NULL;
  }
  w->parentfd = parentfd;
  return w;
}

/* Write len stored bytes from buf at off of the data file (see above).
 * -1 (errno EIO) and w failed on error.
 */
static int
writer_store (struct repo_writer *w, uint64_t off, const void *buf,
              uint64_t len)
{
  int fd = w->datafd;
  uint64_t done;

  if (w->directfd >= 0 && !__atomic_load_n (&w->no_direct, __ATOMIC_RELAXED) &&
      len >= DIRECT_MIN &&
      off % DIRECT_ALIGN == 0 && len % DIRECT_ALIGN == 0 &&
      (uintptr_t) buf % DIRECT_ALIGN == 0)
    fd = w->directfd;
  for (done = 0; done < len; ) {
    ssize_t n = pwrite (fd, (const char *) buf + done, len - done,
                        off + done);
    if (n > 0) {
      done += n;
      continue;
    }
    if (n == -1 && errno == EINTR)
      continue;
    if (n == -1 && errno == EINVAL && fd != w->datafd) {
      /* The file system refuses direct I/O after all: page cache. */
      __atomic_store_n (&w->no_direct, true, __ATOMIC_RELAXED);
      fd = w->datafd;
      continue;
    }
    if (n == 0)
      errno = ENOSPC;
    writer_fail (w, "cannot write %s/points/%s/data: %s", w->r->dir,
                 w->tmpname, strerror (errno));
    errno = EIO;
    return -1;
  }
  /* Writeback errors are write errors: the commit's fsync would not
   * see them again (writeback.h).
   */
  if (fd == w->datafd && writeback_after_write (fd, off, len) == -1) {
    writer_fail (w, "cannot write back %s/points/%s/data: %s", w->r->dir,
                 w->tmpname, strerror (errno));
    errno = EIO;
    return -1;
  }
  return 0;
}

/* Under w->lock: give the n records their places in the data file
 * (*off: where the first one's stored bytes go, *total: all of them)
 * and append their index entries.  -1 if w failed.
 */
static int
writer_reserve (struct repo_writer *w, const struct rec *recs, size_t n,
                uint64_t *off, uint64_t *total)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&w->lock);
  uint64_t off0 = w->data_end, sum = 0;
  size_t i;

  if (w->failed)
    return -1;
  if (w->npairs + n > w->cappairs) {
    size_t ncap = w->cappairs ? 2 * w->cappairs : 1024;
    struct pair *np;
    while (ncap < w->npairs + n)
      ncap *= 2;
    np = realloc (w->pairs, ncap * sizeof *np);
    if (np == NULL) {
      writer_fail_locked (w, "out of memory");
      return -1;
    }
    w->pairs = np;
    w->cappairs = ncap;
  }
  for (i = 0; i < n; ++i) {
    uint8_t *e;
    if (w->spill_len + ENTRY_SIZE > IOBUF) {
      if (write_full (w->spillfd, w->spill, w->spill_len) == -1) {
        writer_fail_locked (w, "cannot write %s/points/%s/index.unsorted: "
                            "%m", w->r->dir, w->tmpname);
        return -1;
      }
      w->spill_len = 0;
    }
    e = w->spill + w->spill_len;
    put_le64 (e + ENTRY_BLOCK, recs[i].block);
    e[ENTRY_KIND] = recs[i].kind;
    put_le32 (e + ENTRY_SLEN, recs[i].slen);
    put_le64 (e + ENTRY_OFF, recs[i].slen ? off0 + sum : 0);
    if (recs[i].kind == KIND_DATA)
      memcpy (e + ENTRY_SHA, recs[i].sha, SHA256_LEN);
    else
      memset (e + ENTRY_SHA, 0, SHA256_LEN);
    w->spill_len += ENTRY_SIZE;
    w->pairs[w->npairs].block = recs[i].block;
    w->pairs[w->npairs].rec = w->nrecords++;
    w->npairs++;
    sum += recs[i].slen;
  }
  w->data_end += sum;
  /* Allocate the file ahead of the writes: ext4 (and others) serialize
   * direct writes that extend a file or fill holes, but not those into
   * allocated space.  The commit cuts the file back to data_end.
   */
  if (w->data_end > w->alloc_end && !w->no_alloc) {
    uint64_t to = (w->data_end + PREALLOC) / PREALLOC * PREALLOC;
    if (fallocate (w->datafd, 0, w->alloc_end, to - w->alloc_end) == 0)
      w->alloc_end = to;
    else if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
      w->no_alloc = true;       /* not supported: write without */
    else {
      /* ENOSPC, EIO...: the writes would fail too, or worse. */
      writer_fail_locked (w, "cannot allocate space in %s/points/%s/data: "
                          "%m", w->r->dir, w->tmpname);
      return -1;
    }
  }
  *off = off0;
  *total = sum;
  return 0;
}

/* The places in the data file and the index entries are taken under the
 * lock; the bytes are written outside it, so the threads of a backup
 * write in parallel.  If the write fails the writer is failed, so a
 * range never written is never committed.
 */
int
writer_append (struct repo_writer *w, const struct rec *recs, size_t n,
               const void *stored)
{
  uint64_t off, total;

  if (writer_reserve (w, recs, n, &off, &total) == -1) {
    errno = EIO;
    return -1;
  }
  return total ? writer_store (w, off, stored, total) : 0;
}

/* Are len bytes from block on whole blocks of the disk (the last one
 * short only at the end of the disk)?  At most max_len bytes.  -1 and w
 * failed if not.
 */
static int
check_put (struct repo_writer *w, uint64_t block, size_t len, size_t max_len)
{
  uint32_t bs = w->g.block_size;
  uint64_t avail;

  if (block < w->g.nblocks) {
    avail = w->g.disk_size - geom_offset (&w->g, block);
    if (len > 0 && len <= max_len && len <= avail &&
        (len == avail || len % bs == 0))
      return 0;
  }
  writer_fail (w, "block %" PRIu64 " of %zu bytes is outside the disk "
               "(%" PRIu64 " bytes, block size %" PRIu32 ")", block, len,
               w->g.disk_size, bs);
  errno = EINVAL;
  return -1;
}

int
repo_writer_put_data (struct repo_writer *w, uint64_t block, const void *buf,
                      size_t len)
{
  struct rec rec = { .block = block, .kind = KIND_DATA, .slen = len };
  struct scratch *s = NULL;
  const void *stored = buf;
  int ret;

  if (check_put (w, block, len, w->g.block_size) == -1)
    return -1;
  if (sha256_buf (buf, len, rec.sha) == -1) {
    writer_fail (w, "SHA-256 failed (gnutls)");
    return -1;
  }
  if (w->m.compressed) {
    size_t c;
    s = pool_get (&w->pool);
    if (s == NULL) {
      writer_fail (w, "out of memory");
      errno = ENOMEM;
      return -1;
    }
    if (s->cctx == NULL)
      s->cctx = ZSTD_createCCtx ();
    if (s->cctx != NULL) {
      c = ZSTD_compressCCtx (s->cctx, s->a, w->pool.size, buf, len,
                             ZSTD_LEVEL);
      if (!ZSTD_isError (c) && c < len) {
        stored = s->a;
        rec.slen = c;
      }
    }
  }
  ret = writer_append (w, &rec, 1, stored);
  if (s)
    pool_put (&w->pool, s);
  return ret;
}

int
repo_writer_put_data_run (struct repo_writer *w, uint64_t block,
                          const void *buf, size_t len)
{
  uint32_t bs = w->g.block_size;
  size_t n = geom_blocks (len, bs), i;
  struct rec stack[16], *recs = stack;
  int ret;

  if (check_put (w, block, len, SIZE_MAX) == -1)
    return -1;
  if (w->m.compressed || n == 1) {
    for (i = 0; i < n; ++i) {
      size_t l = min64 (len - i * bs, bs);
      if (repo_writer_put_data (w, block + i, (const char *) buf + i * bs,
                                l) == -1)
        return -1;
    }
    return 0;
  }
  if (n > sizeof stack / sizeof stack[0] &&
      (recs = malloc (n * sizeof *recs)) == NULL) {
    writer_fail (w, "out of memory");
    errno = ENOMEM;
    return -1;
  }
  for (i = 0; i < n; ++i) {
    recs[i].block = block + i;
    recs[i].kind = KIND_DATA;
    recs[i].slen = min64 (len - i * bs, bs);
    if (sha256_buf ((const char *) buf + i * bs, recs[i].slen,
                    recs[i].sha) == -1) {
      writer_fail (w, "SHA-256 failed (gnutls)");
      ret = -1;
      goto out;
    }
  }
  ret = writer_append (w, recs, n, buf);
 out:
  if (recs != stack)
    free (recs);
  return ret;
}

int
repo_writer_put_zero (struct repo_writer *w, uint64_t block)
{
  struct rec rec = { .block = block, .kind = KIND_ZERO };

  if (block >= w->g.nblocks) {
    writer_fail (w, "block %" PRIu64 " is outside the disk (%" PRIu64
                 " bytes)", block, w->g.disk_size);
    errno = EINVAL;
    return -1;
  }
  return writer_append (w, &rec, 1, NULL);
}
