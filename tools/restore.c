/* nbdsnap tool: nbdsnap restore REPO POINT -o FILE|DEVICE|URI
 *
 * Reads the point through its chain (repo_reader: every block's SHA-256
 * is verified as it is read) with N threads, and writes them to a file,
 * a device or an NBD export (restore-target.c).
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "lockscope.h"
#include "restore.h"

#define DEFAULT_THREADS 4

/* The first failure wins. */
void
restore_fail (struct restore *R, const char *fmt, ...)
{
  va_list ap;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&R->lock);

  if (!R->failed) {
    va_start (ap, fmt);
    vsnprintf (R->err, sizeof R->err, fmt, ap);
    va_end (ap);
    __atomic_store_n (&R->failed, true, __ATOMIC_RELEASE);
  }
}

/* Failed, or a signal came. */
static bool
stopping (struct restore *R)
{
  return __atomic_load_n (&R->failed, __ATOMIC_ACQUIRE) || interrupted;
}

/* A worker thread and its connection (T_NBD). */
struct worker {
  struct restore *R;
  struct nbd_handle *h;
  pthread_t thread;
};

/* Take items until none is left (or the restore stops): write zero
 * items as zeroes; read the blocks of the others (verified) and write
 * them, each run of data or zero blocks in one request.
 */
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
    restore_fail (R, "out of memory");
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
          restore_fail (R, "%s", err);
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

/* Open the point and the target, copy with N threads, finish the
 * target, report.
 */
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
  if (R->pg == NULL) {
    free (wk);
    return fail (EXIT_FAILED, "out of memory");
  }
  for (i = 0; i < nthreads; ++i) {
    wk[i].R = R;
    wk[i].h = R->kind == T_NBD ? R->h[i % R->nh] : NULL;
    if (pthread_create (&wk[i].thread, NULL, worker_run, &wk[i]) != 0) {
      restore_fail (R, "cannot start a thread: %s", strerror (errno));
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
    restore_fail (R, "interrupted by signal %d", (int) interrupted);
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

/* Options, then do_restore, then close everything. */
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
  if (strstr (R.target, "://"))
    check_uri (R.target);
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
