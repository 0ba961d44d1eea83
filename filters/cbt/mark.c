/* nbdsnap cbt filter: the data path.
 *
 * Every write, zero and trim of the live disk marks its blocks in the
 * active bitmap before it passes down; a block whose bit is set already
 * (durably, in strict mode) costs two atomic loads: no lock, no
 * allocation, no syscall.  The marks reach the open bitmap file leaf by
 * leaf, in place or appended (docs/cbt-format.md section 5.4): in
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

/* fdatasync the active bitmap a after the n records of this batch were
 * written; in strict mode the leaves they held are durable now (added to
 * T.durable, whose leaves tracker_mark allocated: nothing here
 * allocates).  -1 and errno.
 */
static int
commit_batch (struct ckpt *a, size_t n)
{
  size_t i, k;

  if (n == 0)
    return 0;
  if (fdatasync (a->fd) == -1)
    return -1;
  if (T.sync != CBT_SYNC_STRICT)
    return 0;
  for (i = 0; i < n; ++i) {
    const uint8_t *buf = T.round_buf + i * REC_BYTES + 8;
    uint64_t *leaf = sbm_leaf (&T.durable, T.round_pages[i]);

    for (k = 0; leaf && k < LEAF_WORDS; ++k)
      __atomic_fetch_or (&leaf[k], get_le64 (buf + 8 * k), __ATOMIC_ACQ_REL);
  }
  return 0;
}

/* Write the dirty leaves of the active bitmap a to its file and
 * fdatasync: in place where the file has the leaf's record, else as a
 * new record appended at a->fend (docs/cbt-format.md section 5.4).  In
 * strict mode the leaves written become durable (T.durable) once the
 * fdatasync succeeded; a round of more than ROUND_PAGES leaves syncs
 * once per ROUND_PAGES.  One round at a time (T.syncing), so the round
 * buffers of T, allocated at start, and a->foff and a->fend are ours.
 * -1 and errno: the caller enters the failed state, since records may
 * be half written and Linux reports a writeback error only once.
 */
static int
write_dirty_pages (struct ckpt *a)
{
  uint64_t npages = T.dirty_pages.nbits, p;
  size_t n = 0;
  bool strict = T.sync == CBT_SYNC_STRICT;

  for (p = 0; p < npages; ++p) {
    uint64_t m = UINT64_C (1) << (p & 63), off;
    size_t k, wlen;
    uint8_t *buf;
    bool append;

    if ((p & 63) == 0 &&
        __atomic_load_n (&T.dirty_pages.words[p >> 6], __ATOMIC_ACQUIRE)
        == 0) {
      p += 63;                  /* 64 clean leaves */
      continue;
    }
    if (!(__atomic_fetch_and (&T.dirty_pages.words[p >> 6], ~m,
                              __ATOMIC_ACQ_REL) & m))
      continue;
    /* Flush mode keeps no copy: every record goes through slot 0 and
     * one fdatasync ends the round.
     */
    buf = T.round_buf + (strict ? n : 0) * REC_BYTES;
    put_le64 (buf, p + 1);
    for (k = 0; k < LEAF_WORDS; ++k)
      put_le64 (buf + 8 + 8 * k, sbm_word (&a->bits, p, k));
    append = a->foff[p] == 0;
    off = append ? a->fend : a->foff[p];
    wlen = append ? REC_BYTES : LEAF_BYTES;
    if (pwrite_full (a->fd, append ? buf : buf + 8, wlen,
                     append ? off : off + 8) == -1) {
      int e = errno;
      __atomic_fetch_or (&T.dirty_pages.words[p >> 6], m, __ATOMIC_ACQ_REL);
      errno = e;
      return -1;
    }
    if (append) {
      a->foff[p] = off;
      a->fend += REC_BYTES;
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
    int r;

    if (T.sync == CBT_SYNC_STRICT) {
      if (sbm_get (&T.durable, b))
        continue;               /* already durably dirty: free */
      /* Set or not by us, it is not on disk yet: make sure the leaf is
       * written by the round we are going to wait for (which records it
       * in T.durable: its leaf is allocated here, where an error can
       * still fail the write).
       */
      if (sbm_leaf_alloc (&T.durable, b / LEAF_BITS) == NULL ||
          sbm_set (&a->bits, b) == -1) {
        *err = ENOMEM;          /* the write does not pass down */
        return -1;
      }
      bitset_set_atomic (&T.dirty_pages, b / PAGE_BITS);
      need_sync = true;
    }
    else if ((r = sbm_set (&a->bits, b)) == 1)
      bitset_set_atomic (&T.dirty_pages, b / PAGE_BITS);
    else if (r == -1) {
      *err = ENOMEM;
      return -1;
    }
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
