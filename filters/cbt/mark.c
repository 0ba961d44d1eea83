/* nbdsnap cbt filter: the data path.
 *
 * Every write, zero and trim of the live disk marks its blocks in the
 * active bitmap before it passes down.  The marks reach the open bitmap
 * file in place, page by page (docs/cbt-format.md section 5.4): in
 * strict mode before the write passes down, in flush mode at each NBD
 * flush.  Concurrent writers share one round of page writes and one
 * fdatasync (group commit).
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "binhdr.h"
#include "fileio.h"
#include "minmax.h"
#include "statefile.h"
#include "tracker-internal.h"

/* Write the dirty pages of the active bitmap a in place and fdatasync.
 * In strict mode the words written become durable (T.durable) once the
 * fdatasync succeeded.  -1 and errno.
 */
static int
write_dirty_pages (struct ckpt *a)
{
  uint64_t npages = T.dirty_pages.nbits, p;
  size_t nw = payload_words (T.g.nblocks);
  uint8_t *buf = malloc (PAGE_BYTES);
  uint64_t *copy = malloc (PAGE_BYTES);
  struct { uint64_t page; uint64_t *words; } *done = NULL;
  size_t ndone = 0, i;
  int r = 0;

  if (buf == NULL || copy == NULL) {
    free (buf); free (copy);
    errno = ENOMEM;
    return -1;
  }
  for (p = 0; p < npages && r == 0; ++p) {
    uint64_t m = UINT64_C (1) << (p & 63);
    size_t w0 = p * (PAGE_BYTES / 8), nwp, k;

    if (!(__atomic_fetch_and (&T.dirty_pages.words[p >> 6], ~m,
                              __ATOMIC_ACQ_REL) & m))
      continue;
    nwp = min64 (PAGE_BYTES / 8, nw - w0);
    for (k = 0; k < nwp; ++k) {
      copy[k] = __atomic_load_n (&a->bits.words[w0 + k], __ATOMIC_ACQUIRE);
      put_le64 (buf + 8 * k, copy[k]);
    }
    if (pwrite_full (a->fd, buf, nwp * 8, BINHDR_SIZE + w0 * 8) == -1) {
      __atomic_fetch_or (&T.dirty_pages.words[p >> 6], m, __ATOMIC_ACQ_REL);
      r = -1;
      break;
    }
    if (T.sync == CBT_SYNC_STRICT) {
      void *np = realloc (done, (ndone + 1) * sizeof *done);
      uint64_t *cw = malloc (nwp * 8);
      if (np == NULL || cw == NULL) { free (cw); r = -1; break; }
      done = np;
      memcpy (cw, copy, nwp * 8);
      done[ndone].page = p;
      done[ndone++].words = cw;
    }
  }
  if (r == 0 && fdatasync (a->fd) == -1)
    r = -1;
  for (i = 0; i < ndone; ++i) {
    size_t w0 = done[i].page * (PAGE_BYTES / 8);
    size_t nwp = min64 (PAGE_BYTES / 8, nw - w0), k;
    if (r == 0)
      for (k = 0; k < nwp; ++k)
        __atomic_fetch_or (&T.durable.words[w0 + k], done[i].words[k],
                           __ATOMIC_ACQ_REL);
    free (done[i].words);
  }
  free (done);
  free (buf);
  free (copy);
  return r;
}

/* Return when every bit set before the call is on disk.  Concurrent
 * callers share one write + fdatasync.  -1 and errno.
 */
static int
sync_bits (struct ckpt *a)
{
  uint64_t my;
  int r = 0;

  pthread_mutex_lock (&T.sync_lock);
  my = ++T.req_seq;
  while (T.done_seq < my) {
    if (!T.syncing) {
      uint64_t target = T.req_seq;
      T.syncing = true;
      pthread_mutex_unlock (&T.sync_lock);
      r = write_dirty_pages (a);
      pthread_mutex_lock (&T.sync_lock);
      T.syncing = false;
      if (r == 0 && target > T.done_seq)
        T.done_seq = target;
      pthread_cond_broadcast (&T.sync_cond);
      if (r == -1)
        break;
    }
    else
      pthread_cond_wait (&T.sync_cond, &T.sync_lock);
  }
  pthread_mutex_unlock (&T.sync_lock);
  return r;
}

/* Enter the gate before a write. */
void
tracker_enter (void)
{
  gate_enter (&T.gate);
}

/* Leave the gate after a write. */
void
tracker_leave (void)
{
  gate_leave (&T.gate);
}

/* Mark the blocks of [offset, offset+count) in the active bitmap; in
 * strict mode, return only when they are on disk.
 */
int
tracker_mark (uint64_t offset, uint64_t count, int *err)
{
  struct ckpt *a = active_ckpt ();
  uint64_t b, b0, b1;
  bool need_sync = false;

  if (a == NULL || count == 0)
    return 0;
  b0 = geom_block (&T.g, offset);
  b1 = geom_block (&T.g, offset + count - 1);
  for (b = b0; b <= b1; ++b) {
    if (T.sync == CBT_SYNC_STRICT) {
      if (bitset_get_atomic (&T.durable, b))
        continue;               /* already durably dirty: free */
      /* Set or not by us, it is not on disk yet: make sure the page is
       * written by the round we are going to wait for.
       */
      bitset_set_atomic (&a->bits, b);
      bitset_set_atomic (&T.dirty_pages, b / PAGE_BITS);
      need_sync = true;
    }
    else if (!bitset_get_atomic (&a->bits, b) &&
             bitset_set_atomic (&a->bits, b))
      bitset_set_atomic (&T.dirty_pages, b / PAGE_BITS);
  }
  if (need_sync && sync_bits (a) == -1) {
    *err = errno ? errno : EIO;
    nbdkit_error ("cbt: cannot make the dirty bitmap durable: %m");
    return -1;
  }
  return 0;
}

/* Write the marks of the active bitmap to disk and fdatasync. */
int
tracker_flush (int *err)
{
  struct ckpt *a;
  int r = 0;

  gate_enter (&T.gate);
  a = active_ckpt ();
  if (a && sync_bits (a) == -1) {
    *err = errno ? errno : EIO;
    nbdkit_error ("cbt: flush: cannot write the dirty bitmap: %m");
    r = -1;
  }
  gate_leave (&T.gate);
  return r;
}
