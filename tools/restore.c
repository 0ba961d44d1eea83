/* nbdsnap tool: nbdsnap restore REPO POINT -o FILE|DEVICE|URI
 *
 * Reads the point through its chain (repo_reader: every block's SHA-256
 * is verified as it is read) with N threads, and writes:
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
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#include "nbdsnap.h"
#include "repo.h"
#include "writeback.h"

#define DEFAULT_THREADS 4
#define CHUNK_BYTES (4u << 20)
#define ZERO_MAX (1ULL << 30)           /* bytes per zero request (max) */

enum target_kind { T_FILE, T_DEVICE, T_NBD };

struct item {                   /* a run of blocks: all zero, or to read */
  uint64_t block, n;
  bool zero;
};

struct restore {
  const char *repodir, *point, *target;
  struct repo *repo;
  struct repo_reader *rd;
  uint32_t bs;
  uint64_t size, nblocks;
  int threads;
  bool show_progress;

  enum target_kind kind;
  int fd;                       /* T_FILE, T_DEVICE */
  bool blkdev;
  char *tmpname;                /* T_FILE */
  char *realtarget;             /* T_FILE: target with links resolved */
  struct nbd_handle **h;        /* T_NBD: nh handles */
  int nh;
  bool can_zero;
  uint64_t maxreq;

  struct item *items;
  size_t nitems, next;
  struct progress *pg;

  uint64_t data_blocks, zero_blocks;
  pthread_mutex_t lock, wlock;
  bool failed;
  char err[ERRLEN];
};

static void
set_fail (struct restore *R, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
set_fail (struct restore *R, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock (&R->lock);
  if (!R->failed) {
    va_start (ap, fmt);
    vsnprintf (R->err, sizeof R->err, fmt, ap);
    va_end (ap);
    __atomic_store_n (&R->failed, true, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock (&R->lock);
}

static bool
stopping (struct restore *R)
{
  return __atomic_load_n (&R->failed, __ATOMIC_ACQUIRE) || interrupted;
}

/*------------------------------------------------------------- writing --*/

static int
write_data (struct restore *R, struct nbd_handle *h, const void *buf,
            uint64_t len, uint64_t off)
{
  uint64_t done, piece;

  if (R->kind == T_NBD) {
    for (done = 0; done < len; done += piece) {
      piece = len - done < R->maxreq ? len - done : R->maxreq;
      if (nbd_pwrite (h, (const char *) buf + done, piece, off + done,
                      0) == -1) {
        set_fail (R, "writing %s at offset %" PRIu64 ": %s", R->target,
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
  pthread_mutex_lock (&R->wlock);
  for (done = 0; done < len; ) {
    ssize_t w = pwrite (R->fd, (const char *) buf + done, len - done,
                        off + done);
    if (w <= 0) {
      if (w == -1 && errno == EINTR)
        continue;
      pthread_mutex_unlock (&R->wlock);
      set_fail (R, "writing %s at offset %" PRIu64 ": %s", R->target,
                off + done, w == 0 ? "short write" : strerror (errno));
      return -1;
    }
    done += w;
  }
  pthread_mutex_unlock (&R->wlock);
  /* Write back as we go and keep the page cache small (as nbdcopy
   * does): the final fsync has little left to do.
   */
  writeback_after_write (R->fd, off, len);
  return 0;
}

static int
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
      piece = len - done < ZERO_MAX ? len - done : ZERO_MAX;
      if (nbd_zero (h, piece, off + done, 0) == -1) {
        set_fail (R, "zeroing %s at offset %" PRIu64 ": %s", R->target,
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
    piece = len - done < sizeof zeroes ? len - done : sizeof zeroes;
    if (write_data (R, h, zeroes, piece, off + done) == -1)
      return -1;
  }
  return 0;
}

/*-------------------------------------------------------------- workers --*/

struct worker {
  struct restore *R;
  struct nbd_handle *h;
  pthread_t thread;
};

static void *
worker_run (void *arg)
{
  struct worker *wk = arg;
  struct restore *R = wk->R;
  uint64_t per = CHUNK_BYTES / R->bs;
  unsigned char *buf;
  char err[ERRLEN];

  if (per == 0)
    per = 1;
  buf = malloc (per * R->bs);
  if (buf == NULL) {
    set_fail (R, "out of memory");
    return NULL;
  }
  while (!stopping (R)) {
    size_t i = __atomic_fetch_add (&R->next, 1, __ATOMIC_RELAXED);
    const struct item *it;
    uint64_t off, len, k, run_start = 0, run_len = 0, zrun_start = 0,
      zrun_len = 0;

    if (i >= R->nitems)
      break;
    it = &R->items[i];
    off = it->block * R->bs;
    len = it->n * R->bs;
    if (len > R->size - off)
      len = R->size - off;
    if (it->zero) {
      if (write_zero (R, wk->h, len, off) == -1)
        break;
      __atomic_fetch_add (&R->zero_blocks, it->n, __ATOMIC_RELAXED);
      progress_add (R->pg, len);
      continue;
    }
    /* Read every block (verified), then write the data runs and zero
     * the blocks that read as zero, each run in one request.
     */
    for (k = 0; k < it->n; ++k) {
      uint64_t b = it->block + k, boff = b * R->bs;
      uint64_t blen = R->size - boff < R->bs ? R->size - boff : R->bs;
      unsigned char *p = buf + k * R->bs;
      bool z;

      if (repo_reader_kind (R->rd, b) == REPO_BLOCK_ZERO)
        z = true;
      else {
        if (repo_reader_read (R->rd, b, p, err, sizeof err) == -1) {
          set_fail (R, "%s", err);
          goto out;
        }
        z = is_zero (p, blen);
      }
      if (z) {
        if (run_len && write_data (R, wk->h, buf + (run_start - off),
                                   run_len, run_start) == -1)
          goto out;
        run_len = 0;
        if (zrun_len == 0)
          zrun_start = boff;
        zrun_len += blen;
        __atomic_fetch_add (&R->zero_blocks, 1, __ATOMIC_RELAXED);
      }
      else {
        if (zrun_len && write_zero (R, wk->h, zrun_len, zrun_start) == -1)
          goto out;
        zrun_len = 0;
        if (run_len == 0)
          run_start = boff;
        run_len += blen;
        __atomic_fetch_add (&R->data_blocks, 1, __ATOMIC_RELAXED);
      }
    }
    if (run_len && write_data (R, wk->h, buf + (run_start - off), run_len,
                               run_start) == -1)
      break;
    if (zrun_len && write_zero (R, wk->h, zrun_len, zrun_start) == -1)
      break;
    progress_add (R->pg, len);
  }
 out:
  free (buf);
  return NULL;
}

/* Runs of zero blocks (up to ZERO_MAX) and of blocks to read (up to
 * CHUNK_BYTES), in disk order.
 */
static int
make_items (struct restore *R)
{
  uint64_t per = CHUNK_BYTES / R->bs, zper = ZERO_MAX / R->bs, b;
  size_t cap = 0;

  if (per == 0) per = 1;
  if (zper == 0) zper = 1;
  for (b = 0; b < R->nblocks; ++b) {
    bool z = repo_reader_kind (R->rd, b) == REPO_BLOCK_ZERO;
    struct item *last = R->nitems ? &R->items[R->nitems - 1] : NULL;
    if (last && last->zero == z && last->n < (z ? zper : per)) {
      last->n++;
      continue;
    }
    if (R->nitems == cap) {
      struct item *v;
      cap = cap ? cap * 2 : 1024;
      if ((v = realloc (R->items, cap * sizeof *v)) == NULL)
        return -1;
      R->items = v;
    }
    R->items[R->nitems++] = (struct item) { b, 1, z };
  }
  return 0;
}

/*-------------------------------------------------------------- targets --*/

static int
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
    R->h[0] = connect_export (R->target, NULL, false, err, sizeof err);
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
        R->h[i] = connect_export (R->target, NULL, false, err, sizeof err);
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
    /* The mode of the file it replaces, else 0666 less the umask. */
    mode_t m = umask (0);
    umask (m);
    m = stat (R->target, &st) == 0 ? (st.st_mode & 07777) : (0666 & ~m);
    if (fchmod (R->fd, m) == -1 || ftruncate (R->fd, R->size) == -1)
      return fail (EXIT_FAILED, "%s: %s", R->tmpname, strerror (errno));
  }
  return EXIT_OK;
}

/* Make the written target durable; for a file, put it in place. */
static int
finish_target (struct restore *R)
{
  int i;

  if (R->kind == T_NBD) {
    for (i = 0; i < R->nh; ++i)
      if (nbd_can_flush (R->h[i]) == 1 && nbd_flush (R->h[i], 0) == -1)
        return fail (EXIT_FAILED, "flushing %s: %s", R->target,
                     nbd_get_error ());
    return EXIT_OK;
  }
  if (fsync (R->fd) == -1 && R->kind == T_FILE)
    return fail (EXIT_FAILED, "fsync %s: %s", R->tmpname, strerror (errno));
  if (R->kind == T_FILE) {
    char *d, *dir;
    int dfd;

    if (rename (R->tmpname, R->target) == -1)
      return fail (EXIT_FAILED, "rename %s to %s: %s", R->tmpname,
                   R->target, strerror (errno));
    free (R->tmpname);
    R->tmpname = NULL;
    if ((d = strdup (R->target)) != NULL) {
      dir = dirname (d);
      dfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd >= 0) {
        fsync (dfd);
        close (dfd);
      }
      free (d);
    }
  }
  return EXIT_OK;
}

static void
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
    unlink (R->tmpname);
    free (R->tmpname);
    R->tmpname = NULL;
  }
}

/*---------------------------------------------------------------- main --*/

static int
do_restore (struct restore *R)
{
  char err[ERRLEN];
  struct worker *wk;
  int i, r, nthreads;
  double t0 = now_seconds (), el;

  R->repo = open_repo (R->repodir);
  if (R->repo == NULL)
    return EXIT_FAILED;
  R->rd = repo_reader_open (R->repo, R->point, err, sizeof err);
  if (R->rd == NULL)
    return fail (EXIT_FAILED, "%s", err);
  R->bs = repo_reader_block_size (R->rd);
  R->size = repo_reader_size (R->rd);
  R->nblocks = repo_reader_blocks (R->rd);
  if (make_items (R) == -1)
    return fail (EXIT_FAILED, "out of memory");

  if ((r = open_target (R)) != EXIT_OK)
    return r;

  nthreads = R->threads;
  if ((size_t) nthreads > R->nitems)
    nthreads = R->nitems ? R->nitems : 1;
  wk = calloc (nthreads, sizeof *wk);
  if (wk == NULL)
    return fail (EXIT_FAILED, "out of memory");
  R->pg = progress_start (R->show_progress, "restore", R->size);
  for (i = 0; i < nthreads; ++i) {
    wk[i].R = R;
    wk[i].h = R->kind == T_NBD ? R->h[i % R->nh] : NULL;
    if (pthread_create (&wk[i].thread, NULL, worker_run, &wk[i]) != 0) {
      set_fail (R, "cannot start a thread: %s", strerror (errno));
      nthreads = i;
      break;
    }
  }
  for (i = 0; i < nthreads; ++i)
    pthread_join (wk[i].thread, NULL);
  free (wk);
  progress_stop (R->pg, !stopping (R));
  R->pg = NULL;
  if (interrupted && !R->failed)
    set_fail (R, "interrupted by signal %d", (int) interrupted);
  if (R->failed) {
    const char *what =
      R->kind == T_FILE ? "is unchanged" : "was partly written";
    return fail (EXIT_FAILED, "restore of '%s' failed: %s; %s %s",
                 R->point, R->err, R->target, what);
  }
  verbose ("read, verified and written in %.2fs", now_seconds () - t0);
  if ((r = finish_target (R)) != EXIT_OK)
    return r;
  el = now_seconds () - t0;
  verbose ("flushed and in place at %.2fs", el);
  if (opt_json) {
    printf ("{\"ok\":true,\"point\":");
    json_str (stdout, R->point);
    printf (",\"target\":");
    json_str (stdout, R->target);
    printf (",\"disk_size\":%" PRIu64 ",\"data_blocks\":%" PRIu64
            ",\"zero_blocks\":%" PRIu64 ",\"seconds\":%.3f}\n", R->size,
            R->data_blocks, R->zero_blocks, el);
  }
  else {
    char a[32], b[32];
    printf ("restored '%s' to %s: %s, %" PRIu64 " data block(s), %" PRIu64
            " zero, %.1fs (%s/s)\n", R->point, R->target,
            human_size (R->size, a, sizeof a), R->data_blocks,
            R->zero_blocks, el,
            human_size (el > 0 ? (uint64_t) (R->size / el) : 0, b,
                        sizeof b));
  }
  return EXIT_OK;
}

int
cmd_restore (int argc, char **argv)
{
  static const struct option long_opts[] = {
    { "output", required_argument, NULL, 'o' },
    { "connections", required_argument, NULL, 'C' },
    { "threads", required_argument, NULL, 'C' },
    { "progress", no_argument, NULL, 'p' },
    { "no-progress", no_argument, NULL, 'P' },
    { "json", no_argument, NULL, 'j' },
    { "verbose", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  struct restore R;
  char *pos[2];
  int c, n = 0, progress_opt = -1, r;
  uint64_t v;

  memset (&R, 0, sizeof R);
  R.fd = -1;
  R.threads = DEFAULT_THREADS;
  pthread_mutex_init (&R.lock, NULL);
  pthread_mutex_init (&R.wlock, NULL);
  optind = 0;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "o:v", long_opts, NULL)) != -1) {
    switch (c) {
    case 'o': R.target = optarg; break;
    case 'C':
      if (!parse_size (optarg, &v) || v < 1 || v > 64)
        usage_error ("restore: --connections must be 1 to 64");
      R.threads = v;
      break;
    case 'p': progress_opt = 1; break;
    case 'P': progress_opt = 0; break;
    case 'j': opt_json = true; break;
    case 'v': opt_verbose++; break;
    default:
      usage_error ("restore: unknown option '%s'", argv[optind - 1]);
    }
  }
  for (; optind < argc; optind++) {
    if (n == 2)
      usage_error ("restore: too many arguments ('%s')", argv[optind]);
    pos[n++] = argv[optind];
  }
  if (n != 2 || R.target == NULL)
    usage_error ("usage: nbdsnap restore REPO POINT -o FILE|DEVICE|URI "
                 "[--connections N] [--progress | --no-progress]");
  R.repodir = pos[0];
  R.point = pos[1];
  if (strstr (R.target, "://")) {
    char *u = uri_with_export (R.target, "");
    if (u == NULL)
      usage_error ("'%s' is not an NBD URI", R.target);
    free (u);
  }
  R.show_progress = progress_wanted (progress_opt) && !opt_json;

  install_signal_handlers ();
  r = do_restore (&R);
  close_target (&R);
  free (R.items);
  free (R.realtarget);
  if (R.rd)
    repo_reader_close (R.rd);
  if (R.repo)
    repo_close (R.repo);
  pthread_mutex_destroy (&R.lock);
  pthread_mutex_destroy (&R.wlock);
  return r;
}
