/* nbdsnap tool: nbdsnap backup URI REPO [--full | --incremental [--since P]]
 *
 *  1. repository checks (exists / initialize, point name free, base point)
 *  2. server checks (incremental: the base checkpoint exists and is
 *     consistent, from @cbt:list)
 *  3. @freeze:begin/NAME: checkpoint NAME + disk frozen at that instant
 *  4. the view @freeze/NAME (full) or @freeze:diff/BASE/NAME (incremental):
 *     its base:allocation extents say which blocks to copy; the data
 *     blocks are read over N connections (if the view allows multi-conn)
 *     and stored through the repository writer (SHA-256, zstd)
 *  5. @freeze:end/NAME, then commit (fsync + rename): the point exists
 *
 * On any failure (also SIGINT/SIGTERM/SIGHUP): the temporary point is
 * removed, the frozen point is ended, and the checkpoint NAME made by
 * begin is deleted (its changes go back to the previous checkpoint, so
 * the next incremental since the newest point in the repository still
 * sees them).  The repository keeps exactly its previous points.
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
#include <sys/stat.h>
#include <dirent.h>
#include <time.h>

#include <libnbd.h>

#include "nbdsnap.h"
#include "repo.h"

#define DEFAULT_CONNECTIONS 4
#define MAX_CONNECTIONS 64
#define CHUNK_BYTES (1u << 20)          /* bytes per read request (max) */

enum { KIND_NONE, KIND_ZERO, KIND_DATA };

struct run {                    /* a run of repository blocks */
  uint64_t block, n;
  int kind;
};

struct backup {
  /* options */
  const char *uri, *repodir;
  char name[REPO_NAME_MAX + 1], since[REPO_NAME_MAX + 1];
  bool incremental, compress;
  int connections;
  bool show_progress;

  /* state */
  struct repo *repo;
  struct repo_writer *w;
  uint32_t bs;
  uint64_t size;
  bool begun, checkpoint;
  bool need_init;
  bool made_repo;               /* this run created the repository */
  bool dir_was_missing;         /* ... and its directory */
  uint32_t init_bs;
  char view[256];
  struct nbd_handle *h0;
  uint64_t maxreq;

  /* work: data chunks to read */
  struct run *runs;
  size_t nruns, caprun;
  size_t next;                          /* atomic: next chunk */
  struct progress *pg;

  /* results */
  uint64_t data_blocks, zero_blocks, bytes_read;  /* atomic */
  pthread_mutex_t lock;
  bool failed;
  char err[ERRLEN];
};

static void
set_fail (struct backup *b, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static void
set_fail (struct backup *b, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock (&b->lock);
  if (!b->failed) {
    va_start (ap, fmt);
    vsnprintf (b->err, sizeof b->err, fmt, ap);
    va_end (ap);
    __atomic_store_n (&b->failed, true, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock (&b->lock);
}

static bool
stopping (struct backup *b)
{
  return __atomic_load_n (&b->failed, __ATOMIC_ACQUIRE) || interrupted;
}

/*---------------------------------------------------------------- runs --*/

static int
add_run (struct backup *b, uint64_t block, uint64_t n, int kind)
{
  struct run *last;

  if (kind == KIND_NONE || n == 0)
    return 0;
  last = b->nruns ? &b->runs[b->nruns - 1] : NULL;
  if (last && last->kind == kind && last->block + last->n == block) {
    last->n += n;
    return 0;
  }
  if (b->nruns == b->caprun) {
    size_t cap = b->caprun ? b->caprun * 2 : 1024;
    struct run *v = realloc (b->runs, cap * sizeof *v);
    if (v == NULL)
      return -1;
    b->runs = v;
    b->caprun = cap;
  }
  b->runs[b->nruns++] = (struct run) { block, n, kind };
  return 0;
}

/* What the extents of part of a block say about it. */
enum { S_SKIP = 1, S_ZERO = 2, S_DATA = 4 };

static int
piece_state (const struct backup *b, uint32_t type)
{
  if (type & LIBNBD_STATE_ZERO)
    return S_ZERO;              /* reads as zeroes (changed, if a diff) */
  if (b->incremental && (type & LIBNBD_STATE_HOLE))
    return S_SKIP;              /* change map: unchanged since the base */
  return S_DATA;                /* read it (a plain hole may hold data) */
}

/* A whole block from the states of its parts. */
static int
block_kind (const struct backup *b, int st)
{
  if (st == S_SKIP)
    return KIND_NONE;           /* unchanged: the parent has it */
  if (st == S_ZERO)             /* all of it reads as zero */
    return b->incremental ? KIND_ZERO : KIND_NONE;
  return KIND_DATA;             /* data, or changed and unchanged parts */
}

/* Turn the view's extents into runs of repository blocks. */
static int
classify (struct backup *b, const struct extent *v, size_t n)
{
  uint64_t cur = UINT64_MAX, first, last;
  int st = 0, ps;
  size_t i;

  for (i = 0; i < n; ++i) {
    if (v[i].length == 0)
      continue;
    ps = piece_state (b, v[i].type);
    first = v[i].offset / b->bs;
    last = (v[i].offset + v[i].length - 1) / b->bs;
    if (cur == first)
      st |= ps;
    else {
      if (cur != UINT64_MAX && add_run (b, cur, 1, block_kind (b, st)) == -1)
        return -1;
      cur = first;
      st = ps;
    }
    if (last > first) {
      /* The extent covers the rest of block first, all of the blocks in
       * between, and the beginning (or all) of block last.
       */
      if (add_run (b, cur, 1, block_kind (b, st)) == -1 ||
          add_run (b, first + 1, last - first - 1,
                   block_kind (b, ps)) == -1)
        return -1;
      cur = last;
      st = ps;
    }
  }
  if (cur != UINT64_MAX && add_run (b, cur, 1, block_kind (b, st)) == -1)
    return -1;
  return 0;
}

/* Split the data runs into chunks of at most CHUNK_BYTES (one block at
 * least), dropping the zero runs (recorded by the caller).
 */
static int
make_chunks (struct backup *b, uint64_t *total)
{
  uint64_t per = CHUNK_BYTES / b->bs, off;
  struct run *v = NULL;
  size_t n = 0, cap = 0, i;
  uint64_t k;

  if (per == 0)
    per = 1;
  *total = 0;
  for (i = 0; i < b->nruns; ++i) {
    if (b->runs[i].kind != KIND_DATA)
      continue;
    for (k = 0; k < b->runs[i].n; k += per) {
      if (n == cap) {
        struct run *nv;
        cap = cap ? cap * 2 : 1024;
        if ((nv = realloc (v, cap * sizeof *nv)) == NULL) {
          free (v);
          return -1;
        }
        v = nv;
      }
      v[n].block = b->runs[i].block + k;
      v[n].n = b->runs[i].n - k < per ? b->runs[i].n - k : per;
      v[n].kind = KIND_DATA;
      off = v[n].block * b->bs;
      *total += (v[n].n * b->bs > b->size - off) ? b->size - off
                                                 : v[n].n * b->bs;
      n++;
    }
  }
  free (b->runs);
  b->runs = v;
  b->nruns = n;
  return 0;
}

/*-------------------------------------------------------------- workers --*/

struct worker {
  struct backup *b;
  struct nbd_handle *h;         /* NULL: open our own connection */
  pthread_t thread;
};

/* Store the blocks of one chunk that was read into buf: each run of
 * data blocks in one call (one write to the repository), zero blocks
 * as zero entries.
 */
static int
store_chunk (struct backup *b, const struct run *c, const unsigned char *buf,
             uint64_t len)
{
  uint64_t k, run = 0;          /* data blocks pending before block k */

  for (k = 0; k <= c->n; ++k) {
    const unsigned char *p = buf + k * b->bs;
    uint64_t blen = k == c->n ? 0
      : len - k * b->bs < b->bs ? len - k * b->bs : b->bs;
    bool zero = k < c->n && is_zero (p, blen);
    int r = 0;

    if (k < c->n && !zero) {
      run++;
      continue;
    }
    if (run > 0) {              /* flush the pending data blocks */
      uint64_t first = k - run;
      r = repo_writer_put_data_run (b->w, c->block + first,
                                    buf + first * b->bs,
                                    (k == c->n ? len : k * b->bs)
                                    - first * b->bs);
      __atomic_fetch_add (&b->data_blocks, run, __ATOMIC_RELAXED);
      if (r == -1)
        k = first;              /* for the message */
      run = 0;
    }
    if (r == 0 && zero) {
      /* A full backup needs no entry for a zero block. */
      r = b->incremental ? repo_writer_put_zero (b->w, c->block + k) : 0;
      __atomic_fetch_add (&b->zero_blocks, 1, __ATOMIC_RELAXED);
    }
    if (r == -1) {
      const char *e = repo_writer_error (b->w);
      set_fail (b, "writing block %" PRIu64 " to the repository: %s",
                c->block + k, e ? e : strerror (errno));
      return -1;
    }
  }
  __atomic_fetch_add (&b->bytes_read, len, __ATOMIC_RELAXED);
  progress_add (b->pg, len);
  return 0;
}

/* Each worker owns one connection and keeps up to QUEUE reads in flight
 * on it (libnbd's asynchronous API): while it hashes and stores one chunk,
 * the server is already reading the next ones.  This matters most for
 * incremental backups, whose changed blocks are many small reads.
 */
#define QUEUE 8

struct slot {
  unsigned char *buf;
  int64_t cookie;               /* 0: free */
  size_t chunk;
  uint64_t len;
};

static void *
worker_run (void *arg)
{
  struct worker *wk = arg;
  struct backup *b = wk->b;
  struct nbd_handle *h = wk->h;
  char err[ERRLEN];
  struct slot slot[QUEUE];
  uint64_t per = CHUNK_BYTES / b->bs;
  int i, inflight = 0;
  bool more = true;

  if (per == 0)
    per = 1;
  memset (slot, 0, sizeof slot);
  if (h == NULL) {
    h = connect_export (b->uri, b->view, false, err, sizeof err);
    if (h == NULL) {
      set_fail (b, "opening another connection to %s: %s", b->view, err);
      return NULL;
    }
  }
  /* Page-aligned: the repository can then write them with O_DIRECT. */
  for (i = 0; i < QUEUE; ++i)
    if (posix_memalign ((void **) &slot[i].buf, 4096, per * b->bs) != 0) {
      slot[i].buf = NULL;
      set_fail (b, "out of memory");
      goto out;
    }

  for (;;) {
    /* Fill the queue. */
    for (i = 0; i < QUEUE && more && !stopping (b); ++i) {
      const struct run *c;
      size_t n;
      uint64_t off, len;

      if (slot[i].cookie)
        continue;
      n = __atomic_fetch_add (&b->next, 1, __ATOMIC_RELAXED);
      if (n >= b->nruns) {
        more = false;
        break;
      }
      c = &b->runs[n];
      off = c->block * b->bs;
      len = c->n * b->bs;
      if (len > b->size - off)
        len = b->size - off;
      if (len > b->maxreq) {
        /* The server limits requests: read this one synchronously. */
        uint64_t done, piece;
        for (done = 0; done < len; done += piece) {
          piece = len - done < b->maxreq ? len - done : b->maxreq;
          if (nbd_pread (h, slot[i].buf + done, piece, off + done, 0) == -1) {
            set_fail (b, "reading %s at offset %" PRIu64 ": %s", b->view,
                      off + done, nbd_get_error ());
            goto out;
          }
        }
        if (store_chunk (b, c, slot[i].buf, len) == -1)
          goto out;
        i--;                    /* the slot is free again */
        continue;
      }
      slot[i].cookie = nbd_aio_pread (h, slot[i].buf, len, off,
                                      NBD_NULL_COMPLETION, 0);
      if (slot[i].cookie == -1) {
        slot[i].cookie = 0;
        set_fail (b, "reading %s at offset %" PRIu64 ": %s", b->view, off,
                  nbd_get_error ());
        goto out;
      }
      slot[i].chunk = n;
      slot[i].len = len;
      inflight++;
    }
    if (inflight == 0)
      break;

    /* Wait for one read, then store it. */
    for (;;) {
      int done = -1, r;
      for (i = 0; i < QUEUE; ++i) {
        if (slot[i].cookie == 0)
          continue;
        r = nbd_aio_command_completed (h, slot[i].cookie);
        if (r == -1) {
          const struct run *c = &b->runs[slot[i].chunk];
          slot[i].cookie = 0;
          inflight--;
          set_fail (b, "reading %s at offset %" PRIu64 ": %s", b->view,
                    c->block * b->bs, nbd_get_error ());
          goto out;
        }
        if (r == 1) {
          done = i;
          break;
        }
      }
      if (done >= 0) {
        slot[done].cookie = 0;
        inflight--;
        if (!stopping (b) &&
            store_chunk (b, &b->runs[slot[done].chunk], slot[done].buf,
                         slot[done].len) == -1)
          goto out;
        break;
      }
      if (nbd_poll (h, -1) == -1) {
        set_fail (b, "reading %s: %s", b->view, nbd_get_error ());
        goto out;
      }
    }
  }

 out:
  /* Requests still in flight must finish before their buffers go. */
  while (inflight > 0) {
    for (i = 0; i < QUEUE; ++i)
      if (slot[i].cookie &&
          nbd_aio_command_completed (h, slot[i].cookie) != 0) {
        slot[i].cookie = 0;
        inflight--;
      }
    if (inflight > 0 && nbd_poll (h, -1) == -1)
      break;                    /* connection dead: nothing will arrive */
  }
  if (h != wk->h)
    disconnect (h);
  else if (inflight > 0) {      /* close h0 now, before the buffers go */
    nbd_close (h);
    b->h0 = NULL;
  }
  for (i = 0; i < QUEUE; ++i)
    free (slot[i].buf);
  return NULL;
}

/*------------------------------------------------------ server commands --*/

/* Run a freeze/cbt command during the backup.  Returns the result if
 * "ok":true, else NULL with err set (*conn = could not even connect).
 */
static char *
command_ok (struct backup *b, const char *exportname, char *err,
            size_t errlen, bool *refused)
{
  char *doc;
  char e[ERRLEN];

  doc = run_command (b->uri, exportname, refused, e, sizeof e);
  if (doc == NULL) {
    snprintf (err, errlen, "%s", e);
    return NULL;
  }
  if (!jok (doc)) {
    jerror (doc, err, errlen);
    *refused = true;
    free (doc);
    return NULL;
  }
  return doc;
}

/* Undo what the failed backup did on the server and in the repository. */
static void
cleanup (struct backup *b)
{
  char ex[256], err[ERRLEN];
  char *doc;
  bool refused;

  if (b->h0) {
    disconnect (b->h0);
    b->h0 = NULL;
  }
  if (b->w) {
    repo_writer_abort (b->w);
    b->w = NULL;
  }
  if (b->begun) {
    snprintf (ex, sizeof ex, "@freeze:end/%s", b->name);
    doc = command_ok (b, ex, err, sizeof err, &refused);
    if (doc == NULL)
      msg ("warning: could not release frozen point '%s' (%s); release it "
           "with: nbdsnap freeze end '%s' %s", b->name, err, b->uri,
           b->name);
    else {
      /* Say why reads failed if the server aborted the point. */
      bool aborted = false;
      char why[ERRLEN] = "";
      jbool (jget (jget (doc, "point"), "aborted"), &aborted);
      jstr (jget (jget (doc, "point"), "error"), why, sizeof why, NULL);
      if (aborted)
        msg ("the server had aborted frozen point '%s': %s", b->name,
             why[0] ? why : "(no reason given)");
    }
    free (doc);
    b->begun = false;
  }
  if (b->checkpoint) {
    snprintf (ex, sizeof ex, "@cbt:delete/%s", b->name);
    doc = command_ok (b, ex, err, sizeof err, &refused);
    if (doc == NULL)
      msg ("warning: could not delete checkpoint '%s' made for this backup "
           "(%s); delete it with: nbdsnap checkpoint delete '%s' %s",
           b->name, err, b->uri, b->name);
    free (doc);
    b->checkpoint = false;
  }
}

/* Incremental: the base checkpoint must exist and be consistent. */
static int
check_base_checkpoint (struct backup *b)
{
  char err[ERRLEN], name[80];
  const char *it = NULL, *c;
  bool refused, consistent = false, found = false;
  char *doc;

  doc = command_ok (b, "@cbt:list", err, sizeof err, &refused);
  if (doc == NULL) {
    if (!refused)
      return fail (EXIT_USAGE, "cannot connect to %s: %s", b->uri, err);
    return fail (EXIT_FAILED, "cannot list the server's checkpoints (%s): "
                 "incremental backups need the cbt filter below the freeze "
                 "filter; a full backup is needed (nbdsnap backup --full)",
                 err);
  }
  while ((c = jnext (jget (doc, "checkpoints"), &it)) != NULL) {
    jstr (jget (c, "name"), name, sizeof name, NULL);
    if (strcmp (name, b->since) == 0) {
      found = true;
      jbool (jget (c, "consistent"), &consistent);
    }
  }
  free (doc);
  if (!found)
    return fail (EXIT_FAILED, "the server has no checkpoint '%s' (the base "
                 "of this incremental backup): the changes since then are "
                 "unknown; a full backup is needed (nbdsnap backup --full)",
                 b->since);
  if (!consistent)
    return fail (EXIT_FAILED, "checkpoint '%s' is not consistent: writes "
                 "since then may not all be tracked (the server stopped "
                 "uncleanly with cbt-sync=flush); a full backup is needed "
                 "(nbdsnap backup --full)", b->since);
  return EXIT_OK;
}

/*---------------------------------------------------------- repository --*/

static bool
dir_missing_or_empty (const char *dir)
{
  DIR *d;
  struct dirent *e;
  bool empty = true;

  d = opendir (dir);
  if (d == NULL)
    return errno == ENOENT;
  while ((e = readdir (d)) != NULL)
    if (strcmp (e->d_name, ".") && strcmp (e->d_name, "..")) {
      empty = false;
      break;
    }
  closedir (d);
  return empty;
}

static int open_existing (struct backup *b, int mode);

/* mode -1: full wanted, 1: incremental wanted, 0: automatic. */
static int
open_backup_repo (struct backup *b, int mode, uint32_t init_bs)
{

  if (dir_missing_or_empty (b->repodir)) {
    if (mode == 1)
      return fail (EXIT_FAILED, "%s: no repository there: a full backup "
                   "is needed (nbdsnap backup --full)", b->repodir);
    /* Initialized by do_backup once the server has answered, so that a
     * backup that cannot even start leaves nothing behind.
     */
    b->need_init = true;
    b->dir_was_missing = access (b->repodir, F_OK) == -1;
    b->init_bs = init_bs;
    b->incremental = false;
    return EXIT_OK;
  }
  if (init_bs)
    msg ("note: --block-size is ignored: %s exists", b->repodir);
  return open_existing (b, mode);
}

static int
init_repo_now (struct backup *b)
{
  char err[ERRLEN];

  if (repo_init (b->repodir, b->init_bs, err, sizeof err) == -1)
    return fail (EXIT_FAILED, "%s", err);
  verbose ("initialized repository %s", b->repodir);
  b->need_init = false;
  b->made_repo = true;
  return open_existing (b, -1);
}

static int
open_existing (struct backup *b, int mode)
{
  char err[ERRLEN];
  struct repo_point_info *pts = NULL, info;
  size_t n = 0;
  int r;

  b->repo = open_repo (b->repodir);
  if (b->repo == NULL)
    return EXIT_FAILED;
  b->bs = repo_block_size (b->repo);
  r = repo_clean_tmp (b->repo, err, sizeof err);
  if (r > 0)
    verbose ("removed %d leftover temporary point(s)", r);
  else if (r < 0)
    msg ("warning: %s", err);

  if (repo_point_get (b->repo, b->name, &info, err, sizeof err) == 0)
    return fail (EXIT_FAILED, "%s: a point named '%s' already exists "
                 "(choose another --name)", b->repodir, b->name);
  if (repo_list (b->repo, &pts, &n, err, sizeof err) == -1)
    return fail (EXIT_FAILED, "%s", err);
  if (mode == 0)
    mode = n ? 1 : -1;
  b->incremental = mode == 1;
  if (b->incremental) {
    if (b->since[0] == '\0') {
      if (n == 0) {
        free (pts);
        return fail (EXIT_FAILED, "%s has no restore point to base an "
                     "incremental backup on: a full backup is needed "
                     "(nbdsnap backup --full)", b->repodir);
      }
      snprintf (b->since, sizeof b->since, "%s", pts[n - 1].name);
    }
    else if (repo_point_get (b->repo, b->since, &info, err,
                             sizeof err) == -1) {
      free (pts);
      return fail (EXIT_FAILED, "%s has no restore point '%s' to base the "
                   "incremental backup on (%s): a full backup is needed "
                   "(nbdsnap backup --full)", b->repodir, b->since, err);
    }
  }
  free (pts);
  return EXIT_OK;
}

/*---------------------------------------------------------------- main --*/

static int
do_backup (struct backup *b)
{
  char ex[256], err[ERRLEN];
  char *doc;
  bool refused, aborted = false;
  struct extent *ext = NULL;
  size_t next_ext = 0, i;
  int64_t size;
  int nconn, r;
  struct worker *wk = NULL;
  uint64_t total;
  double t0 = now_seconds ();
  struct repo_point_info info;

  /* Is the server there, with a freeze filter? (@freeze:list is
   * read-only and always allowed.)
   */
  doc = run_command (b->uri, "@freeze:list", &refused, err, sizeof err);
  if (doc == NULL) {
    if (!refused)
      return fail (EXIT_USAGE, "cannot connect to %s: %s", b->uri, err);
    return fail (EXIT_FAILED, "the server has no freeze filter (a backup "
                 "needs nbdkit --filter=freeze, and --filter=cbt below it "
                 "for incrementals): %s", err);
  }
  free (doc);
  if (b->incremental && (r = check_base_checkpoint (b)) != EXIT_OK)
    return r;
  if (interrupted)
    return fail (EXIT_FAILED, "interrupted");
  if (b->need_init && (r = init_repo_now (b)) != EXIT_OK)
    return r;

  /* The instant of the backup. */
  snprintf (ex, sizeof ex, "@freeze:begin/%s", b->name);
  doc = command_ok (b, ex, err, sizeof err, &refused);
  if (doc == NULL) {
    if (!refused)
      return fail (EXIT_USAGE, "cannot connect to %s: %s", b->uri, err);
  {
    /* The freeze filter quotes the cbt filter's result: show its error. */
    const char *inner = strchr (err, '{');
    char e2[ERRLEN];
    if (inner && jget (inner, "error")) {
      jerror (inner, e2, sizeof e2);
      snprintf (err, sizeof err, "%s", e2);
    }
    return fail (EXIT_FAILED, "the server refused to begin backup '%s': %s",
                 b->name, err);
  }
  }
  b->begun = true;
  jbool (jget (jget (doc, "point"), "checkpoint"), &b->checkpoint);
  free (doc);
  if (!b->checkpoint)
    msg ("note: the server has no cbt filter: no checkpoint was made, so "
         "the next backup of this disk must be full as well");
  verbose ("frozen point '%s' begun", b->name);

  if (b->incremental)
    snprintf (b->view, sizeof b->view, "@freeze:diff/%s/%s", b->since,
              b->name);
  else
    snprintf (b->view, sizeof b->view, "@freeze/%s", b->name);
  b->h0 = connect_export (b->uri, b->view, true, err, sizeof err);
  if (b->h0 == NULL) {
    if (b->incremental)
      set_fail (b, "cannot read the changes since checkpoint '%s' (%s); "
                "see the server's log; a full backup is needed (nbdsnap "
                "backup --full)", b->since, err);
    else
      set_fail (b, "cannot open the frozen view %s: %s", b->view, err);
    goto failed;
  }
  size = nbd_get_size (b->h0);
  if (size < 0) {
    set_fail (b, "%s: %s", b->view, nbd_get_error ());
    goto failed;
  }
  b->size = size;
  b->maxreq = CHUNK_BYTES;
  {
    int64_t mx = nbd_get_block_size (b->h0, LIBNBD_SIZE_MAXIMUM);
    if (mx > 0 && (uint64_t) mx < b->maxreq)
      b->maxreq = mx;
  }
  nconn = nbd_can_multi_conn (b->h0) == 1 ? b->connections : 1;

  b->w = repo_writer_begin (b->repo, b->name,
                            b->incremental ? b->since : NULL,
                            b->incremental ? b->since : NULL,
                            b->size, b->compress, err, sizeof err);
  if (b->w == NULL) {
    set_fail (b, "%s", err);
    goto failed;
  }

  /* Which blocks to copy. */
  if (nbd_can_meta_context (b->h0, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1) {
    if (get_extents (b->h0, b->size, &ext, &next_ext, err,
                     sizeof err) == -1) {
      set_fail (b, "%s: %s", b->view, err);
      goto failed;
    }
  }
  else if (b->incremental) {
    set_fail (b, "%s: the server sends no change map (base:allocation)",
              b->view);
    goto failed;
  }
  else if (b->size) {           /* no extents: everything is data */
    ext = malloc (sizeof *ext);
    if (ext == NULL) {
      set_fail (b, "out of memory");
      goto failed;
    }
    ext[0] = (struct extent) { 0, b->size, 0 };
    next_ext = 1;
  }
  if (classify (b, ext, next_ext) == -1) {
    set_fail (b, "out of memory");
    goto failed;
  }
  free (ext);
  ext = NULL;
  /* Blocks that changed to zeroes need no reading. */
  for (i = 0; i < b->nruns; ++i) {
    uint64_t k;
    if (b->runs[i].kind != KIND_ZERO)
      continue;
    for (k = 0; k < b->runs[i].n; ++k)
      if (repo_writer_put_zero (b->w, b->runs[i].block + k) == -1) {
        const char *e = repo_writer_error (b->w);
        set_fail (b, "writing to the repository: %s",
                  e ? e : strerror (errno));
        goto failed;
      }
    b->zero_blocks += b->runs[i].n;
  }
  verbose ("change map read and classified at %.2fs", now_seconds () - t0);
  if (make_chunks (b, &total) == -1) {
    set_fail (b, "out of memory");
    goto failed;
  }
  if ((size_t) nconn > b->nruns)
    nconn = b->nruns ? b->nruns : 1;
  verbose ("%s: %" PRIu64 " bytes to read in %zu requests over %d "
           "connection(s)", b->view, total, b->nruns, nconn);

  /* Copy. */
  b->pg = progress_start (b->show_progress, "backup", total);
  wk = calloc (nconn, sizeof *wk);
  if (wk == NULL) {
    set_fail (b, "out of memory");
    goto failed;
  }
  for (i = 0; i < (size_t) nconn; ++i) {
    wk[i].b = b;
    wk[i].h = i == 0 ? b->h0 : NULL;
    if (pthread_create (&wk[i].thread, NULL, worker_run, &wk[i]) != 0) {
      set_fail (b, "cannot start a thread: %s", strerror (errno));
      nconn = i;
      break;
    }
  }
  for (i = 0; i < (size_t) nconn; ++i)
    pthread_join (wk[i].thread, NULL);
  free (wk);
  wk = NULL;
  progress_stop (b->pg, !stopping (b));
  b->pg = NULL;
  verbose ("copied %" PRIu64 " bytes in %.2fs", b->bytes_read,
           now_seconds () - t0);
  if (interrupted && !b->failed)
    set_fail (b, "interrupted by signal %d", (int) interrupted);
  if (b->failed)
    goto failed;
  disconnect (b->h0);
  b->h0 = NULL;

  /* Release the frozen point; it must not have been aborted (scratch
   * space exhausted) while we read it.
   */
  snprintf (ex, sizeof ex, "@freeze:end/%s", b->name);
  doc = command_ok (b, ex, err, sizeof err, &refused);
  if (doc == NULL) {
    set_fail (b, "could not end frozen point '%s': %s", b->name, err);
    goto failed;
  }
  b->begun = false;
  jbool (jget (jget (doc, "point"), "aborted"), &aborted);
  if (aborted) {
    char why[ERRLEN] = "";
    jstr (jget (jget (doc, "point"), "error"), why, sizeof why, NULL);
    free (doc);
    set_fail (b, "the server aborted frozen point '%s' during the backup: "
              "%s", b->name, why);
    goto failed;
  }
  free (doc);

  /* The point exists after this. */
  verbose ("frozen point ended at %.2fs; committing", now_seconds () - t0);
  r = repo_writer_commit (b->w, err, sizeof err);
  verbose ("committed at %.2fs", now_seconds () - t0);
  b->w = NULL;
  if (r == -1) {
    set_fail (b, "%s", err);
    goto failed;
  }
  b->checkpoint = false;        /* kept: the next incremental's base */

  memset (&info, 0, sizeof info);
  repo_point_get (b->repo, b->name, &info, err, sizeof err);
  {
    double el = now_seconds () - t0;
    char a[32], c[32], d[32];
    if (opt_json) {
      printf ("{\"ok\":true,\"point\":");
      json_str (stdout, b->name);
      printf (",\"kind\":\"%s\",\"parent\":",
              b->incremental ? "incremental" : "full");
      json_str (stdout, b->incremental ? b->since : NULL);
      printf (",\"disk_size\":%" PRIu64 ",\"block_size\":%u"
              ",\"data_blocks\":%" PRIu64 ",\"zero_blocks\":%" PRIu64
              ",\"bytes_read\":%" PRIu64 ",\"stored_bytes\":%" PRIu64
              ",\"connections\":%d,\"seconds\":%.3f}\n",
              b->size, b->bs, b->data_blocks, b->zero_blocks, b->bytes_read,
              info.stored_bytes, nconn, el);
    }
    else {
      printf ("backup '%s' (%s%s): %" PRIu64 " data block(s), %" PRIu64
              " zero, %s read, %s stored, %.1fs (%s/s)\n", b->name,
              b->incremental ? "incremental since " : "full",
              b->incremental ? b->since : "",
              b->data_blocks, b->zero_blocks,
              human_size (b->bytes_read, a, sizeof a),
              human_size (info.stored_bytes, c, sizeof c), el,
              human_size (el > 0 ? (uint64_t) (b->bytes_read / el) : 0, d,
                          sizeof d));
    }
  }
  return EXIT_OK;

 failed:
  free (ext);
  if (b->pg) {
    progress_stop (b->pg, false);
    b->pg = NULL;
  }
  cleanup (b);
  return fail (EXIT_FAILED, "backup '%s' failed: %s; the repository is "
               "unchanged", b->name, b->err);
}

int
cmd_backup (int argc, char **argv)
{
  static const struct option long_opts[] = {
    { "full", no_argument, NULL, 'F' },
    { "incremental", no_argument, NULL, 'I' },
    { "since", required_argument, NULL, 's' },
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
    case 'n':
      if (!repo_name_valid (optarg, why, sizeof why) ||
          !filter_name_ok (optarg))
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
                 "[--since POINT]] [--name NAME] [--compress] "
                 "[--connections N] [--progress | --no-progress]");
  b.uri = pos[0];
  b.repodir = pos[1];
  {
    char *u = uri_with_export (b.uri, "");
    if (u == NULL)
      usage_error ("'%s' is not an NBD URI (nbd://HOST[:PORT]/, "
                   "nbd+unix:///?socket=PATH, nbds://...)", b.uri);
    free (u);
  }
  if (b.name[0] == '\0') {
    time_t t = time (NULL);
    struct tm tm;
    gmtime_r (&t, &tm);
    strftime (b.name, sizeof b.name, "b-%Y%m%dT%H%M%SZ", &tm);
  }
  b.show_progress = progress_wanted (progress_opt) && !opt_json;

  install_signal_handlers ();
  r = open_backup_repo (&b, mode, (uint32_t) init_bs);
  if (r == EXIT_OK)
    r = do_backup (&b);
  if (r != EXIT_OK && b.made_repo && b.repo) {
    /* The first backup failed: leave the directory as it was. */
    char err[ERRLEN];
    if (repo_remove_empty (b.repo, b.dir_was_missing, err, sizeof err) == 0)
      msg ("removed the repository %s this backup had created",
           b.repodir);
    else
      msg ("warning: %s", err);
  }
  free (b.runs);
  if (b.repo)
    repo_close (b.repo);
  pthread_mutex_destroy (&b.lock);
  return r;
}
