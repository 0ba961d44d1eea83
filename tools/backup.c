/* nbdsnap tool: nbdsnap backup URI REPO [--full | --incremental [--since P]]
 *                              [--until CHECKPOINT]
 *
 *  1. repository checks (exists / initialize, point name free, base point)
 *     (backup-repo.c)
 *  2. server checks (a freeze filter; incremental: the base checkpoint
 *     exists and is consistent, from @cbt:list) (backup-server.c)
 *  3. @freeze:begin/NAME: checkpoint NAME + disk frozen at that instant
 *  4. the view @freeze/NAME (full) or @freeze:diff/BASE/NAME (incremental):
 *     its base:allocation extents say which blocks to copy
 *     (backup-plan.c); the data blocks are read over N connections (if
 *     the view allows multi-conn) and stored through the repository
 *     writer (SHA-256, zstd) (backup-copy.c)
 *  5. @freeze:end/NAME, then commit (fsync + rename): the point exists
 *  6. the older checkpoints the repository no longer needs are deleted
 *     (prune.c; --keep-checkpoints)
 *
 * With --freeze-cmd/--thaw-cmd (quiesce.c) the freeze command runs right
 * before step 3 and the thaw command right after it returned.
 *
 * On any failure (also SIGINT/SIGTERM/SIGHUP): the temporary point is
 * removed, the frozen point is ended, and the checkpoint NAME made by
 * begin is deleted (cleanup).  The repository keeps exactly its previous
 * points.
 *
 * --until CHECKPOINT replaces steps 3 to 5's server side: the bytes are
 * read from snapshot CHECKPOINT, made at that checkpoint's instant
 * (backup-until.c).
 */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "backup.h"
#include "exportname.h"
#include "lockscope.h"

#define DEFAULT_CONNECTIONS 4
#define MAX_CONNECTIONS 64

/* The first failure wins. */
void
backup_fail (struct backup *b, const char *fmt, ...)
{
  va_list ap;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&b->lock);

  if (!b->failed) {
    va_start (ap, fmt);
    vsnprintf (b->err, sizeof b->err, fmt, ap);
    va_end (ap);
    __atomic_store_n (&b->failed, true, __ATOMIC_RELEASE);
  }
}

/* Failed, or a signal came. */
bool
backup_stopping (struct backup *b)
{
  return __atomic_load_n (&b->failed, __ATOMIC_ACQUIRE) || interrupted;
}

/* Open the view to read (b->h0): its size, the server's largest
 * request.  Returns the number of connections to use, or -1.
 */
static int
open_view (struct backup *b)
{
  char err[ERRLEN];
  int64_t size, mx;

  if (b->until[0])
    snprintf (b->view, sizeof b->view, "@snapshot/%s", b->until);
  else if (b->incremental)
    snprintf (b->view, sizeof b->view, "@freeze:diff/%s/%s", b->since,
              b->name);
  else
    snprintf (b->view, sizeof b->view, "@freeze/%s", b->name);
  b->h0 = connect_export (b->uri, b->view, true, NULL, err, sizeof err);
  if (b->h0 == NULL) {
    if (b->until[0])
      backup_fail (b, "cannot open the snapshot view %s: %s", b->view, err);
    else if (b->incremental)
      backup_fail (b, "cannot read the changes since checkpoint '%s' (%s); "
                   "see the server's log; a full backup is needed (nbdsnap "
                   "backup --full)", b->since, err);
    else
      backup_fail (b, "cannot open the frozen view %s: %s", b->view, err);
    return -1;
  }
  size = nbd_get_size (b->h0);
  if (size < 0) {
    backup_fail (b, "%s: %s", b->view, nbd_get_error ());
    return -1;
  }
  b->size = size;
  b->maxreq = CHUNK_BYTES;
  mx = nbd_get_block_size (b->h0, LIBNBD_SIZE_MAXIMUM);
  if (mx > 0 && (uint64_t) mx < b->maxreq)
    b->maxreq = mx;
  return nbd_can_multi_conn (b->h0) == 1 ? b->connections : 1;
}

/* Start the new point in the repository, store its zero blocks, and
 * plan the reads of its data blocks (*total bytes).
 */
static int
plan (struct backup *b, double t0, uint64_t *total)
{
  char err[ERRLEN];
  struct extent *ext = NULL;
  size_t n = 0;
  int r;

  b->w = repo_writer_begin (b->repo, b->name,
                            b->incremental ? b->since : NULL,
                            b->incremental ? b->since : NULL,
                            b->size, b->compress, err, sizeof err);
  if (b->w == NULL) {
    backup_fail (b, "%s", err);
    return -1;
  }

  /* Which blocks to copy. */
  if (b->until[0]) {
    if (until_extents (b, &ext, &n) == -1)
      return -1;
  }
  else if (nbd_can_meta_context (b->h0, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1) {
    if (get_extents (b->h0, b->size, &ext, &n, err, sizeof err) == -1) {
      backup_fail (b, "%s: %s", b->view, err);
      return -1;
    }
  }
  else if (b->incremental) {
    backup_fail (b, "%s: the server sends no change map (base:allocation)",
                 b->view);
    return -1;
  }
  else if (b->size) {           /* no extents: everything is data */
    ext = malloc (sizeof *ext);
    if (ext == NULL) {
      backup_fail (b, "out of memory");
      return -1;
    }
    ext[0] = (struct extent) { 0, b->size, 0 };
    n = 1;
  }
  r = classify (b, ext, n);
  free (ext);
  if (r == -1) {
    backup_fail (b, "out of memory");
    return -1;
  }
  /* Blocks that changed to zeroes need no reading. */
  if (store_zero_runs (b) == -1)
    return -1;
  verbose ("change map read and classified at %.2fs", now_seconds () - t0);
  if (make_chunks (b, total) == -1) {
    backup_fail (b, "out of memory");
    return -1;
  }
  return 0;
}

/* What the backup did: a line, or the --json document. */
static void
report (struct backup *b, int nconn, double t0)
{
  char a[32], c[32], d[32];
  double el = now_seconds () - t0;
  if (opt_json) {
    printf ("{\"ok\":true,\"point\":");
    json_str (stdout, b->name);
    printf (",\"kind\":\"%s\",\"parent\":",
            b->incremental ? "incremental" : "full");
    json_str (stdout, b->incremental ? b->since : NULL);
    printf (",\"disk_size\":%" PRIu64 ",\"block_size\":%u"
            ",\"data_blocks\":%" PRIu64 ",\"zero_blocks\":%" PRIu64
            ",\"bytes_read\":%" PRIu64 ",\"stored_bytes\":%" PRIu64
            ",\"connections\":%d,\"seconds\":%.3f"
            ",\"pruned_checkpoints\":[%s]}\n",
            b->size, b->bs, b->data_blocks, b->zero_blocks, b->bytes_read,
            b->stored, nconn, el, b->npruned > 0 ? b->pruned : "");
  }
  else {
    printf ("backup '%s' (%s%s): %" PRIu64 " data block(s), %" PRIu64
            " zero, %s read, %s stored, %.1fs (%s/s)\n", b->name,
            b->incremental ? "incremental since " : "full",
            b->incremental ? b->since : "",
            b->data_blocks, b->zero_blocks,
            human_size (b->bytes_read, a, sizeof a),
            human_size (b->stored, c, sizeof c), el,
            human_size (el > 0 ? (uint64_t) (b->bytes_read / el) : 0, d,
                        sizeof d));
    if (b->npruned > 0)
      printf ("pruned %d checkpoint(s) no longer needed: %s\n", b->npruned,
              b->pruned);
  }
}

/* Steps 2 to 5 (the repository is open, or noted for init). */
static int
do_backup (struct backup *b)
{
  char err[ERRLEN];
  int nconn, r;
  uint64_t total;
  double t0 = now_seconds ();

  r = b->until[0] ? until_check_server (b) : check_server (b);
  if (r != EXIT_OK)
    return r;
  if (interrupted)
    return fail (EXIT_FAILED, "interrupted");
  if (b->need_init && (r = init_repo_now (b)) != EXIT_OK)
    return r;
  /* --until: the instant is past, held by a snapshot: nothing is
   * begun, no hooks run.  Otherwise the quiesce hooks (quiesce.c): the
   * thaw right after the begin.
   */
  r = EXIT_OK;
  if (!b->until[0]) {
    if (quiesce_freeze (&b->q, err, sizeof err) == -1)
      return fail (EXIT_FAILED, "backup '%s' not begun: %s", b->name, err);
    r = begin_point (b);
    if (quiesce_thaw (&b->q, r == EXIT_OK, err, sizeof err) == -1) {
      if (r == EXIT_OK) {
        backup_fail (b, "%s (the file system may still be frozen)", err);
        goto failed;
      }
      msg ("%s (the file system may still be frozen)", err);
    }
  }
  if (r != EXIT_OK) {
    cleanup (b);                /* a begin that ran but was lost */
    return r;
  }

  if ((nconn = open_view (b)) == -1 || plan (b, t0, &total) == -1)
    goto failed;
  if ((size_t) nconn > b->nruns)
    nconn = b->nruns ? b->nruns : 1;
  verbose ("%s: %" PRIu64 " bytes to read in %zu requests over %d "
           "connection(s)", b->view, total, b->nruns, nconn);

  /* Copy. */
  b->pg = progress_start (b->show_progress, "backup", total);
  if (b->pg == NULL) {
    backup_fail (b, "out of memory");
    goto failed;
  }
  copy_chunks (b, nconn);
  progress_stop (b->pg, !backup_stopping (b));
  b->pg = NULL;
  verbose ("copied %" PRIu64 " bytes in %.2fs", b->bytes_read,
           now_seconds () - t0);
  if (interrupted && !b->failed)
    backup_fail (b, "interrupted by signal %d", (int) interrupted);
  if (b->failed)
    goto failed;
  disconnect (b->h0);
  b->h0 = NULL;

  if (!b->until[0] && end_point (b) == -1)
    goto failed;
  /* Which older checkpoints will go once the point is committed: decided
   * now (prune.c), so that a failure here is a failed backup like any.
   */
  if (b->checkpoint && b->keep_checkpoints &&
      prune_plan (b->repo, b->keep_checkpoints, b->name,
                  b->incremental ? b->since : "", &b->plan, err,
                  sizeof err) == -1) {
    backup_fail (b, "%s", err);
    goto failed;
  }

  /* The point exists after this. */
  verbose ("frozen point ended at %.2fs; committing", now_seconds () - t0);
  b->stored = repo_writer_stored_bytes (b->w);
  r = repo_writer_commit (b->w, err, sizeof err);
  verbose ("committed at %.2fs", now_seconds () - t0);
  b->w = NULL;
  if (r < 0) {
    backup_fail (b, "%s", err);
    b->point_left = r == -2;
    goto failed;
  }
  /* Kept: the next incremental's base.  The older ones the chain no
   * longer needs go (prune.c); if that fails, the point stays, and the
   * command fails saying so.
   */
  b->checkpoint = false;
  b->made_repo = false;
  b->npruned = prune_run (b->uri, &b->plan, false, true, b->pruned,
                          sizeof b->pruned, err, sizeof err);
  prune_plan_free (&b->plan);
  if (b->npruned < 0)
    return fail (EXIT_FAILED, "backup '%s' is committed, but deleting the "
                 "checkpoints it no longer needs failed: %s; run 'nbdsnap "
                 "prune %s %s' later", b->name, err, b->uri, b->repodir);
  report (b, nconn, t0);
  return EXIT_OK;

 failed:
  prune_plan_free (&b->plan);
  cleanup (b);
  if (b->point_left)            /* the error says what is in place */
    return fail (EXIT_FAILED, "backup '%s' failed: %s", b->name, b->err);
  return fail (EXIT_FAILED, "backup '%s' failed: %s; the repository is "
               "unchanged", b->name, b->err);
}

/* Options, then the repository, then do_backup. */
int
cmd_backup (int argc, char **argv)
{
  static const struct option long_opts[] = {
    { "full", no_argument, NULL, 'F' },
    { "incremental", no_argument, NULL, 'I' },
    { "since", required_argument, NULL, 's' },
    { "until", required_argument, NULL, 'u' },
    { "name", required_argument, NULL, 'n' },
    { "compress", no_argument, NULL, 'z' },
    { "connections", required_argument, NULL, 'C' },
    { "progress", no_argument, NULL, 'p' },
    { "no-progress", no_argument, NULL, 'P' },
    { "block-size", required_argument, NULL, 'b' },
    { "json", no_argument, NULL, 'j' },
    { "verbose", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  struct backup b;
  char *pos[2];
  int c, n = 0, mode = 0, progress_opt = -1, r;
  uint64_t init_bs = 0, v;
  char why[256];

  memset (&b, 0, sizeof b);
  pthread_mutex_init (&b.lock, NULL);
  b.connections = DEFAULT_CONNECTIONS;
  b.keep_checkpoints = DEFAULT_KEEP_CHECKPOINTS;
  quiesce_options (&argc, argv, &b.q, "backup");
  keep_option (&argc, argv, &b.keep_checkpoints);
  optind = 0;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "vn:z", long_opts, NULL)) != -1) {
    switch (c) {
    case 'F':
      if (mode == 1) usage_error ("backup: --full and --incremental/--since");
      mode = -1;
      break;
    case 'I':
      if (mode == -1) usage_error ("backup: --full and --incremental");
      mode = 1;
      break;
    case 's':
      if (mode == -1) usage_error ("backup: --full and --since");
      mode = 1;
      if (!repo_name_valid (optarg, why, sizeof why))
        usage_error ("backup: --since %s: %s", optarg, why);
      snprintf (b.since, sizeof b.since, "%s", optarg);
      break;
    case 'u':
      if (!repo_name_valid (optarg, why, sizeof why) ||
          !name_valid (optarg, why, sizeof why))
        usage_error ("backup: --until %s: not a valid checkpoint name",
                     optarg);
      snprintf (b.until, sizeof b.until, "%s", optarg);
      break;
    case 'n':
      if (!repo_name_valid (optarg, why, sizeof why) ||
          !name_valid (optarg, why, sizeof why))
        usage_error ("backup: invalid name '%s' (1 to 64 of A-Z a-z 0-9 . "
                     "_ -, not starting with '.', no '..')", optarg);
      snprintf (b.name, sizeof b.name, "%s", optarg);
      break;
    case 'z': b.compress = true; break;
    case 'C':
      if (!parse_size (optarg, &v) || v < 1 || v > MAX_CONNECTIONS)
        usage_error ("backup: --connections must be 1 to %d",
                     MAX_CONNECTIONS);
      b.connections = v;
      break;
    case 'p': progress_opt = 1; break;
    case 'P': progress_opt = 0; break;
    case 'b':
      if (!parse_size (optarg, &init_bs) || init_bs == 0 ||
          init_bs > UINT32_MAX)
        usage_error ("backup: bad --block-size '%s'", optarg);
      break;
    case 'j': opt_json = true; break;
    case 'v': opt_verbose++; break;
    default:
      usage_error ("backup: unknown option '%s'", argv[optind - 1]);
    }
  }
  for (; optind < argc; optind++) {
    if (n == 2)
      usage_error ("backup: too many arguments ('%s')", argv[optind]);
    pos[n++] = argv[optind];
  }
  if (n != 2)
    usage_error ("usage: nbdsnap backup URI REPO [--full | --incremental "
                 "[--since POINT]] [--until CHECKPOINT] [--name NAME] "
                 "[--compress] "
                 "[--connections N] [--progress | --no-progress] "
                 "[--freeze-cmd CMD] [--thaw-cmd CMD] [--quiesce-timeout S] "
                 "[--keep-checkpoints N]");
  b.uri = pos[0];
  b.repodir = pos[1];
  check_uri (b.uri);
  if (b.until[0]) {
    if (quiesce_wanted (&b.q))
      usage_error ("backup: --until reads an instant that is past: "
                   "--freeze-cmd/--thaw-cmd have nothing to quiesce");
    /* A point is named after its checkpoint. */
    if (b.name[0] && strcmp (b.name, b.until))
      usage_error ("backup: --until %s makes the point '%s' (a point is "
                   "named after its checkpoint): drop --name %s", b.until,
                   b.until, b.name);
    snprintf (b.name, sizeof b.name, "%s", b.until);
  }
  if (b.name[0] == '\0') {
    time_t t = time (NULL);
    struct tm tm;
    gmtime_r (&t, &tm);
    strftime (b.name, sizeof b.name, "b-%Y%m%dT%H%M%SZ", &tm);
    b.name_generated = true;
  }
  b.show_progress = progress_wanted (progress_opt) && !opt_json;
  b.q.uri = b.uri;
  b.q.point = b.name;

  install_signal_handlers ();
  r = open_backup_repo (&b, mode, (uint32_t) init_bs);
  if (r == EXIT_OK)
    r = do_backup (&b);
  if (r != EXIT_OK)
    remove_made_repo (&b);
  free (b.runs);
  if (b.repo)
    repo_close (b.repo);
  pthread_mutex_destroy (&b.lock);
  return r;
}
