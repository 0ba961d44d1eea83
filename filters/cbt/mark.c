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

/* fdatasync the active bitmap a after the n pages of this batch were
 * written; in strict mode the words they held are durable now.  -1 and
 * errno.
 */
static int
commit_batch (struct ckpt *a, size_t n)
{
  size_t nw = payload_words (T.g.nblocks), i, k;

  if (n == 0)
    return 0;
  if (fdatasync (a->fd) == -1)
    return -1;
  if (T.sync != CBT_SYNC_STRICT)
    return 0;
  for (i = 0; i < n; ++i) {
    size_t w0 = T.round_pages[i] * (PAGE_BYTES / 8);
    size_t nwp = min64 (PAGE_BYTES / 8, nw - w0);
    const uint8_t *buf = T.round_buf + i * PAGE_BYTES;
    for (k = 0; k < nwp; ++k)
      __atomic_fetch_or (&T.durable.words[w0 + k], get_le64 (buf + 8 * k),
                         __ATOMIC_ACQ_REL);
  }
  return 0;
}

/* Write the dirty pages of the active bitmap a in place and fdatasync.
 * In strict mode the words written become durable (T.durable) once the
 * fdatasync succeeded; a round of more than ROUND_PAGES pages syncs
 * once per ROUND_PAGES.  One round at a time (T.syncing), so the round
 * buffers of T, allocated at start, are ours: nothing here allocates.
 * -1 and errno: the caller enters the failed state, since pages may be
 * half written and Linux reports a writeback error only once.
 */
static int
write_dirty_pages (struct ckpt *a)
{
  uint64_t npages = T.dirty_pages.nbits, p;
  size_t nw = payload_words (T.g.nblocks), n = 0;
  bool strict = T.sync == CBT_SYNC_STRICT;

  for (p = 0; p < npages; ++p) {
    uint64_t m = UINT64_C (1) << (p & 63);
    size_t w0 = p * (PAGE_BYTES / 8), nwp, k;
    uint8_t *buf;

    if (!(__atomic_fetch_and (&T.dirty_pages.words[p >> 6], ~m,
                              __ATOMIC_ACQ_REL) & m))
      continue;
    /* Flush mode keeps no copy: every page goes through slot 0 and one
     * fdatasync ends the round.
     */
    buf = T.round_buf + (strict ? n : 0) * PAGE_BYTES;
    nwp = min64 (PAGE_BYTES / 8, nw - w0);
    for (k = 0; k < nwp; ++k)
      put_le64 (buf + 8 * k,
                __atomic_load_n (&a->bits.words[w0 + k], __ATOMIC_ACQUIRE));
    if (pwrite_full (a->fd, buf, nwp * 8, BINHDR_SIZE + w0 * 8) == -1) {
      int e = errno;
      __atomic_fetch_or (&T.dirty_pages.words[p >> 6], m, __ATOMIC_ACQ_REL);
      errno = e;
      return -1;
    }
    if (strict) {
      T.round_pages[n++] = p;
      if (n == ROUND_PAGES) {
        if (commit_batch (a, n) == -1)
          return -1;
        n = 0;
      }
    }
    else
      n = 1;                    /* something to fdatasync */
  }
  return commit_batch (a, n);
}

/* Return when every bit set before the call is on disk.  Concurrent
 * callers share one write + fdatasync.  A round that fails puts the
 * tracker into the failed state before its waiters wake, and every
 * waiter then fails (no later round may report success over the lost
 * pages).  -1 and errno.
 */
static int
sync_bits (struct ckpt *a)
{
  uint64_t my;
  int r = 0, e = 0;

  pthread_mutex_lock (&T.sync_lock);
  my = ++T.req_seq;
  while (T.done_seq < my) {
    if (failure_is_set (&T.fail)) {
      r = -1;
      e = EIO;
      break;
    }
    if (!T.syncing) {
      uint64_t target = T.req_seq;
      T.syncing = true;
      pthread_mutex_unlock (&T.sync_lock);
      r = write_dirty_pages (a);
      if (r == -1) {
        e = errno;
        tracker_fail (e, "cannot write the dirty bitmap of checkpoint "
                      "'%s' in place", a->name);
      }
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
  if (r == -1)
    errno = e;
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
 * strict mode, return only when they are on disk.  In the failed state
 * every write fails here, before it passes down.
 */
int
tracker_mark (uint64_t offset, uint64_t count, int *err)
{
  struct ckpt *a = active_ckpt ();
  uint64_t b, b0, b1;
  bool need_sync = false;

  if (failure_check (&T.fail, err) == -1)
    return -1;
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
    *err = EIO;
    return -1;
  }
  return 0;
}

/* Is the tracker failed?  0, or -1 with *err = EIO. */
int
tracker_check (int *err)
{
  return failure_check (&T.fail, err);
}

/* Write the marks of the active bitmap to disk and fdatasync.  In the
 * failed state a flush fails: an earlier failed round's pages may be
 * lost, and a new fdatasync would return 0 over them.
 */
int
tracker_flush (int *err)
{
  struct ckpt *a;
  int r = 0;

  if (failure_check (&T.fail, err) == -1)
    return -1;
  gate_enter (&T.gate);
  a = active_ckpt ();
  if (a && sync_bits (a) == -1) {
    *err = EIO;
    r = -1;
  }
  else if (failure_check (&T.fail, err) == -1)
    r = -1;                     /* failed meanwhile (a command) */
  gate_leave (&T.gate);
  return r;
}
