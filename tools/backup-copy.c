/* nbdsnap tool: backup: copying the chunks of the view into the
 * repository.
 *
 * One worker thread per connection (the first uses b->h0, the others
 * open their own if the view allows multi-conn); each takes the next
 * chunk, reads it with libnbd's asynchronous API (several reads in
 * flight), and stores its blocks through the repository writer, which
 * hashes (SHA-256), compresses (zstd) and writes them.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "backup.h"
#include "minmax.h"

/* A worker thread and its connection. */
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
      : min64 (len - k * b->bs, b->bs);
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
      backup_fail (b, "writing block %" PRIu64 " to the repository: %s",
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

/* A read in flight, into its buffer. */
struct slot {
  unsigned char *buf;
  int64_t cookie;               /* 0: free */
  size_t chunk;
  uint64_t len;
};

/* Take chunks until none is left (or the backup stops), read them with
 * up to QUEUE in flight, store each as it arrives.
 */
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
    h = connect_export (b->uri, b->view, false, NULL, err, sizeof err);
    if (h == NULL) {
      backup_fail (b, "opening another connection to %s: %s", b->view, err);
      return NULL;
    }
  }
  /* Page-aligned: the repository can then write them with O_DIRECT. */
  for (i = 0; i < QUEUE; ++i)
    if (posix_memalign ((void **) &slot[i].buf, 4096, per * b->bs) != 0) {
      slot[i].buf = NULL;
      backup_fail (b, "out of memory");
      goto out;
    }

  for (;;) {
    /* Fill the queue. */
    for (i = 0; i < QUEUE && more && !backup_stopping (b); ++i) {
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
          piece = min64 (len - done, b->maxreq);
          if (nbd_pread (h, slot[i].buf + done, piece, off + done, 0) == -1) {
            backup_fail (b, "reading %s at offset %" PRIu64 ": %s", b->view,
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
        backup_fail (b, "reading %s at offset %" PRIu64 ": %s", b->view, off,
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
          backup_fail (b, "reading %s at offset %" PRIu64 ": %s", b->view,
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
        if (!backup_stopping (b) &&
            store_chunk (b, &b->runs[slot[done].chunk], slot[done].buf,
                         slot[done].len) == -1)
          goto out;
        break;
      }
      if (nbd_poll (h, -1) == -1) {
        backup_fail (b, "reading %s: %s", b->view, nbd_get_error ());
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

/* The runs of blocks that read as zero need no reading. */
int
store_zero_runs (struct backup *b)
{
  size_t i;
  uint64_t k;

  for (i = 0; i < b->nruns; ++i) {
    if (b->runs[i].kind != KIND_ZERO)
      continue;
    for (k = 0; k < b->runs[i].n; ++k)
      if (repo_writer_put_zero (b->w, b->runs[i].block + k) == -1) {
        const char *e = repo_writer_error (b->w);
        backup_fail (b, "writing to the repository: %s",
                     e ? e : strerror (errno));
        return -1;
      }
    b->zero_blocks += b->runs[i].n;
  }
  return 0;
}

/* One worker per connection; wait for all of them. */
void
copy_chunks (struct backup *b, int nconn)
{
  struct worker *wk;
  int i;

  wk = calloc (nconn, sizeof *wk);
  if (wk == NULL) {
    backup_fail (b, "out of memory");
    return;
  }
  for (i = 0; i < nconn; ++i) {
    wk[i].b = b;
    wk[i].h = i == 0 ? b->h0 : NULL;
    if (pthread_create (&wk[i].thread, NULL, worker_run, &wk[i]) != 0) {
      backup_fail (b, "cannot start a thread: %s", strerror (errno));
      nconn = i;
      break;
    }
  }
  for (i = 0; i < nconn; ++i)
    pthread_join (wk[i].thread, NULL);
  free (wk);
}
