/* nbdsnap cbt filter: checkpoints and persistent dirty bitmaps.
 *
 * Files in cbt-dir (docs/cbt-format.md has the bytes):
 *   lock              flock'd while nbdkit runs
 *   state             text: geometry, checkpoints, clean/running status
 *   bitmap-ID.bits    one bit per block; frozen bitmaps carry a SHA-256,
 *                     the active one is "open" (updated in place) while
 *                     nbdkit runs and sealed with its checksum at shutdown
 *
 * Durability.  strict: before a write passes down, the bits for its blocks
 * are on disk (group commit: one fdatasync serves every writer waiting
 * for it; a block already durably dirty costs one atomic load).  flush:
 * bits are written at flush and clean shutdown; after an unclean stop the
 * active bitmap is marked inconsistent, and change maps that need it are
 * refused.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "command.h"
#include "exportname.h"
#include "gate.h"
#include "statedir.h"
#include "statefile.h"
#include "tracker.h"

#define STATE_NAME "state"
#define STATE_MAGIC "nbdsnap-cbt-state"
#define STATE_VERSION 1
#define BM_MAGIC "NBDSNAPB"
#define BM_VERSION 1
#define BM_HDR 80
#define PAGE_BYTES 4096                 /* unit of in-place bitmap writes */
#define PAGE_BITS (PAGE_BYTES * 8)

struct ckpt {
  uint64_t id;
  char name[NAME_MAX_LEN + 1];
  int64_t created;
  bool inconsistent;            /* may miss writes: see file comment */
  struct bitset bits;
  int fd;                       /* active bitmap: open for in-place writes */
};

static struct {
  char *dir;
  int dirfd, lockfd;
  uint32_t gran;
  unsigned shift;
  uint64_t size, nblocks;
  enum cbt_sync sync;
  uint64_t next_id;

  pthread_rwlock_t rw;          /* the checkpoint list (readers: views) */
  pthread_mutex_t cmd_lock;     /* serializes commands */
  struct ckpt **cps;            /* oldest first; cps[ncps-1] is active */
  size_t ncps;
  struct gate gate;             /* writes vs checkpoint creation */

  /* Persistence of the active bitmap. */
  struct bitset dirty_pages;    /* pages of it that differ from disk */
  struct bitset durable;        /* strict: bits known to be on disk */
  pthread_mutex_t sync_lock;
  pthread_cond_t sync_cond;
  uint64_t req_seq, done_seq;
  bool syncing;
} T = {
  .dirfd = -1, .lockfd = -1,
  .rw = PTHREAD_RWLOCK_INITIALIZER,
  .cmd_lock = PTHREAD_MUTEX_INITIALIZER,
  .gate = GATE_INIT,
  .sync_lock = PTHREAD_MUTEX_INITIALIZER,
  .sync_cond = PTHREAD_COND_INITIALIZER,
};

static inline uint64_t
min64 (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

uint64_t tracker_disk_size (void) { return T.size; }

static struct ckpt *
active (void)
{
  return T.ncps ? T.cps[T.ncps - 1] : NULL;
}

static void
bm_name (uint64_t id, char *buf, size_t len)
{
  snprintf (buf, len, "bitmap-%" PRIu64 ".bits", id);
}

static size_t
payload_words (uint64_t nblocks)
{
  return (nblocks + 63) / 64;
}

/*------------------------------------------------------ bitmap files --*/

/* Write checkpoint c's bitmap file atomically: sealed (with checksum) or
 * open (zero checksum, about to be updated in place).
 */
static int
bm_write (struct ckpt *c, bool sealed)
{
  size_t nw = payload_words (T.nblocks), i;
  size_t len = BM_HDR + nw * 8;
  uint8_t *buf = calloc (1, len);
  char name[64];
  int r;

  if (buf == NULL)
    return -1;
  memcpy (buf, BM_MAGIC, 8);
  put_le32 (buf + 8, BM_VERSION);
  put_le32 (buf + 12, T.gran);
  put_le64 (buf + 16, c->id);
  put_le64 (buf + 24, T.nblocks);
  put_le64 (buf + 32, T.size);
  put_le64 (buf + 40, nw * 8);
  for (i = 0; i < nw; ++i)
    put_le64 (buf + BM_HDR + 8 * i,
              __atomic_load_n (&c->bits.words[i], __ATOMIC_ACQUIRE));
  if (sealed && sha256_buf (buf, len, buf + 48) == -1) {
    free (buf);
    return -1;
  }
  bm_name (c->id, name, sizeof name);
  r = statefile_write (T.dirfd, name, buf, len);
  free (buf);
  return r;
}

/* Load checkpoint c's bitmap file.  open_ok: an unsealed file is allowed
 * (the active bitmap after a stop that did not seal it).
 */
static int
bm_load (struct ckpt *c, uint64_t old_nblocks, bool open_ok,
         char *why, size_t whylen)
{
  char name[64];
  char *buf = NULL;
  size_t len, i, nw;
  uint8_t sum[SHA256_LEN], zero[SHA256_LEN] = { 0 };
  uint64_t nb;
  const uint8_t *p;

  bm_name (c->id, name, sizeof name);
  if (statefile_read (T.dirfd, name, &buf, &len) == -1) {
    snprintf (why, whylen, "%s: %s", name, strerror (errno));
    return -1;
  }
  p = (const uint8_t *) buf;
  if (len < BM_HDR || memcmp (p, BM_MAGIC, 8) != 0) {
    snprintf (why, whylen, "%s: not an nbdsnap bitmap (bad magic)", name);
    goto err;
  }
  if (get_le32 (p + 8) != BM_VERSION) {
    snprintf (why, whylen, "%s: unsupported bitmap version %u", name,
              get_le32 (p + 8));
    goto err;
  }
  nb = get_le64 (p + 24);
  nw = payload_words (nb);
  if (get_le64 (p + 40) != nw * 8 || len != BM_HDR + nw * 8) {
    snprintf (why, whylen, "%s: truncated or wrong length", name);
    goto err;
  }
  memcpy (sum, p + 48, SHA256_LEN);
  if (memcmp (sum, zero, SHA256_LEN) == 0) {
    if (!open_ok) {
      snprintf (why, whylen, "%s: bitmap was never sealed (no checksum)",
                name);
      goto err;
    }
  }
  else {
    uint8_t calc[SHA256_LEN];
    memset ((uint8_t *) p + 48, 0, SHA256_LEN);
    if (sha256_buf (p, len, calc) == -1 || memcmp (calc, sum, SHA256_LEN)) {
      snprintf (why, whylen, "%s: checksum mismatch (file is corrupt)",
                name);
      goto err;
    }
  }
  if (get_le32 (p + 12) != T.gran) {
    snprintf (why, whylen, "%s: granularity %u differs from the state's %u",
              name, get_le32 (p + 12), T.gran);
    goto err;
  }
  if (get_le64 (p + 16) != c->id || nb < old_nblocks || nb > T.nblocks) {
    snprintf (why, whylen, "%s: belongs to another checkpoint or disk size",
              name);
    goto err;
  }
  if (bitset_init (&c->bits, T.nblocks) == -1) {
    snprintf (why, whylen, "out of memory");
    goto err;
  }
  for (i = 0; i < nw; ++i)
    c->bits.words[i] = get_le64 (p + BM_HDR + 8 * i);
  free (buf);
  return 0;
 err:
  free (buf);
  return -1;
}

/* Make c the active bitmap on disk: write it open and keep an fd. */
static int
bm_activate (struct ckpt *c)
{
  char name[64];

  if (bm_write (c, false) == -1)
    return -1;
  bm_name (c->id, name, sizeof name);
  c->fd = openat (T.dirfd, name, O_RDWR|O_CLOEXEC);
  if (c->fd == -1)
    return -1;
  memcpy (T.durable.words, c->bits.words,
          payload_words (T.nblocks) * sizeof (uint64_t));
  memset (T.dirty_pages.words, 0,
          ((T.dirty_pages.nbits + 63) / 64) * sizeof (uint64_t));
  return 0;
}

/* Seal c (it stops being active): checksum, close the in-place fd. */
static int
bm_seal (struct ckpt *c)
{
  if (bm_write (c, true) == -1)
    return -1;
  if (c->fd >= 0)
    close (c->fd);
  c->fd = -1;
  return 0;
}

static void
ckpt_free (struct ckpt *c)
{
  if (c == NULL)
    return;
  if (c->fd >= 0)
    close (c->fd);
  bitset_free (&c->bits);
  free (c);
}

/*------------------------------------------------------- group commit --*/

/* Write the dirty pages of the active bitmap in place and fdatasync. */
static int
write_dirty_pages (struct ckpt *a)
{
  uint64_t npages = T.dirty_pages.nbits, p;
  size_t nw = payload_words (T.nblocks);
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
    if (pwrite (a->fd, buf, nwp * 8, BM_HDR + w0 * 8) != (ssize_t) (nwp * 8)) {
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
 * callers share one write + fdatasync.
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

/*---------------------------------------------------------- data path --*/

void tracker_enter (void) { gate_enter (&T.gate); }
void tracker_leave (void) { gate_leave (&T.gate); }

int
tracker_mark (uint64_t offset, uint64_t count, int *err)
{
  struct ckpt *a = active ();
  uint64_t b, b0, b1;
  bool need_sync = false;

  if (a == NULL || count == 0)
    return 0;
  b0 = offset >> T.shift;
  b1 = (offset + count - 1) >> T.shift;
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
  if (T.sync == CBT_SYNC_STRICT && need_sync && sync_bits (a) == -1) {
    *err = errno ? errno : EIO;
    nbdkit_error ("cbt: cannot make the dirty bitmap durable: %m");
    return -1;
  }
  return 0;
}

int
tracker_flush (int *err)
{
  struct ckpt *a;
  int r = 0;

  gate_enter (&T.gate);
  a = active ();
  if (a && sync_bits (a) == -1) {
    *err = errno ? errno : EIO;
    nbdkit_error ("cbt: flush: cannot write the dirty bitmap: %m");
    r = -1;
  }
  gate_leave (&T.gate);
  return r;
}

/*-------------------------------------------------------------- state --*/

static int
save_state (bool running)
{
  struct jbuf j = { 0 };
  size_t i;
  int r;

  jb_printf (&j, "%s\nversion %d\ndisk-size %" PRIu64 "\ngranularity %u\n"
             "sync %s\nnext-id %" PRIu64 "\nstatus %s\n",
             STATE_MAGIC, STATE_VERSION, T.size, T.gran,
             T.sync == CBT_SYNC_STRICT ? "strict" : "flush", T.next_id,
             running ? "running" : "clean");
  for (i = 0; i < T.ncps; ++i)
    jb_printf (&j, "checkpoint %" PRIu64 " %" PRId64 " %s %s\n",
               T.cps[i]->id, T.cps[i]->created,
               T.cps[i]->inconsistent ? "inconsistent" : "consistent",
               T.cps[i]->name);
  if (j.oom) {
    jb_free (&j);
    errno = ENOMEM;
    return -1;
  }
  r = state_text_write (T.dirfd, STATE_NAME, j.p, j.len);
  jb_free (&j);
  return r;
}

static int
find (const char *name)
{
  size_t i;
  for (i = 0; i < T.ncps; ++i)
    if (strcmp (T.cps[i]->name, name) == 0)
      return i;
  return -1;
}

static const char *
errno_name (int e)
{
  switch (e) {
  case ENOSPC: case EDQUOT: return "ENOSPC";
  case EROFS: return "EROFS";
  case ENOMEM: return "ENOMEM";
  default: return "EIO";
  }
}

/*----------------------------------------------------------- commands --*/

#define FAIL(ename, ...) do {                                   \
    *err_name = (ename);                                        \
    snprintf (why, whylen, __VA_ARGS__);                        \
    goto out;                                                   \
  } while (0)

static void
json_ckpt (struct jbuf *j, size_t i)
{
  /* Blocks changed since checkpoint i: union of bitmaps i .. n-1. */
  uint64_t w, nw = payload_words (T.nblocks), blocks = 0, bytes;
  bool consistent = true;

  size_t k;

  for (k = i; k < T.ncps; ++k)
    if (T.cps[k]->inconsistent)
      consistent = false;
  for (w = 0; w < nw; ++w) {
    uint64_t v = 0;
    for (k = i; k < T.ncps; ++k)
      v |= __atomic_load_n (&T.cps[k]->bits.words[w], __ATOMIC_RELAXED);
    blocks += __builtin_popcountll (v);
  }
  bytes = blocks * T.gran;
  /* The last block may be short. */
  if (blocks && T.size % T.gran) {
    bool last = false;
    for (k = i; k < T.ncps; ++k)
      if (bitset_get_atomic (&T.cps[k]->bits, T.nblocks - 1))
        last = true;
    if (last)
      bytes -= T.gran - T.size % T.gran;
  }
  jb_printf (j, "{\"name\":");
  jb_str (j, T.cps[i]->name);
  jb_printf (j, ",\"created\":");
  jb_time (j, T.cps[i]->created);
  jb_printf (j, ",\"consistent\":%s,\"dirty_blocks\":%" PRIu64
             ",\"dirty_bytes\":%" PRIu64 "}",
             consistent ? "true" : "false", blocks, bytes);
}

int
tracker_cmd_create (const char *name, struct jbuf *j,
                    const char **err_name, char *why, size_t whylen)
{
  struct ckpt *c = NULL, *old, **np;
  char buf[256];
  int r = -1;

  if (!name_valid (name, buf, sizeof buf))
    { *err_name = "EINVAL"; snprintf (why, whylen, "%s", buf); return -1; }

  pthread_mutex_lock (&T.cmd_lock);
  if (find (name) >= 0)
    FAIL ("EEXIST", "checkpoint '%s' already exists", name);
  c = calloc (1, sizeof *c);
  if (c == NULL || bitset_init (&c->bits, T.nblocks) == -1)
    FAIL ("ENOMEM", "out of memory");
  c->fd = -1;
  c->id = T.next_id;
  c->created = time (NULL);
  snprintf (c->name, sizeof c->name, "%s", name);

  /* Every write lands wholly before or wholly after this instant. */
  gate_hold (&T.gate);
  pthread_rwlock_wrlock (&T.rw);
  /* The list moves: only with every writer and reader out. */
  np = realloc (T.cps, (T.ncps + 1) * sizeof *np);
  if (np == NULL) {
    pthread_rwlock_unlock (&T.rw);
    gate_release (&T.gate);
    FAIL ("ENOMEM", "out of memory");
  }
  T.cps = np;
  old = active ();
  if (old && bm_seal (old) == -1) {
    int e = errno;
    pthread_rwlock_unlock (&T.rw);
    gate_release (&T.gate);
    FAIL (errno_name (e), "cannot save the bitmap of '%s': %s", old->name,
          strerror (e));
  }
  if (bm_activate (c) == -1) {
    int e = errno;
    char nm[64];
    bm_name (c->id, nm, sizeof nm);
    unlinkat (T.dirfd, nm, 0);
    if (old) bm_activate (old);
    pthread_rwlock_unlock (&T.rw);
    gate_release (&T.gate);
    FAIL (errno_name (e), "cannot create the bitmap: %s", strerror (e));
  }
  T.cps[T.ncps++] = c;
  T.next_id++;
  if (save_state (true) == -1) {
    int e = errno;
    char nm[64];
    T.ncps--;
    bm_name (c->id, nm, sizeof nm);
    unlinkat (T.dirfd, nm, 0);
    if (old) bm_activate (old);
    pthread_rwlock_unlock (&T.rw);
    gate_release (&T.gate);
    FAIL (errno_name (e), "cannot write the state file: %s", strerror (e));
  }
  pthread_rwlock_unlock (&T.rw);
  gate_release (&T.gate);
  nbdkit_debug ("cbt: checkpoint '%s' created", name);
  jb_printf (j, ",\"checkpoint\":");
  pthread_rwlock_rdlock (&T.rw);
  json_ckpt (j, T.ncps - 1);
  pthread_rwlock_unlock (&T.rw);
  c = NULL;
  r = 0;
 out:
  ckpt_free (c);
  pthread_mutex_unlock (&T.cmd_lock);
  return r;
}

int
tracker_cmd_list (struct jbuf *j)
{
  size_t i;

  pthread_rwlock_rdlock (&T.rw);
  jb_printf (j, ",\"granularity\":%u,\"disk_size\":%" PRIu64
             ",\"sync\":\"%s\",\"checkpoints\":[", T.gran, T.size,
             T.sync == CBT_SYNC_STRICT ? "strict" : "flush");
  for (i = 0; i < T.ncps; ++i) {
    if (i) jb_printf (j, ",");
    json_ckpt (j, i);
  }
  jb_printf (j, "]");
  pthread_rwlock_unlock (&T.rw);
  return 0;
}

int
tracker_cmd_delete (const char *name, struct jbuf *j,
                    const char **err_name, char *why, size_t whylen)
{
  struct ckpt *c, *prev = NULL;
  char buf[256], nm[64];
  int i, r = -1;
  bool was_active;

  if (!name_valid (name, buf, sizeof buf))
    { *err_name = "EINVAL"; snprintf (why, whylen, "%s", buf); return -1; }

  pthread_mutex_lock (&T.cmd_lock);
  i = find (name);
  if (i < 0)
    FAIL ("ENOENT", "checkpoint '%s' does not exist", name);
  c = T.cps[i];
  was_active = (size_t) i == T.ncps - 1;

  gate_hold (&T.gate);
  pthread_rwlock_wrlock (&T.rw);
  if (i > 0) {
    /* Merge into the previous checkpoint's bitmap, so that "changed since"
     * it still covers every block c recorded.
     */
    size_t w, nw = payload_words (T.nblocks);
    prev = T.cps[i - 1];
    for (w = 0; w < nw; ++w)
      prev->bits.words[w] |= __atomic_load_n (&c->bits.words[w],
                                              __ATOMIC_ACQUIRE);
    prev->inconsistent |= c->inconsistent;
    if ((was_active ? bm_activate (prev) : bm_seal (prev)) == -1) {
      int e = errno;
      pthread_rwlock_unlock (&T.rw);
      gate_release (&T.gate);
      /* prev's in-memory bits are a superset: harmless until restart,
       * where the on-disk files (unchanged) are used again.
       */
      FAIL (errno_name (e), "cannot save the merged bitmap: %s",
            strerror (e));
    }
  }
  memmove (&T.cps[i], &T.cps[i + 1], (T.ncps - i - 1) * sizeof *T.cps);
  T.ncps--;
  if (save_state (true) == -1) {
    int e = errno;
    memmove (&T.cps[i + 1], &T.cps[i], (T.ncps - i) * sizeof *T.cps);
    T.cps[i] = c;
    T.ncps++;
    if (was_active && prev) {
      /* c stays the active bitmap: its file and the durable set again. */
      bm_seal (prev);
      bm_activate (c);
    }
    pthread_rwlock_unlock (&T.rw);
    gate_release (&T.gate);
    FAIL (errno_name (e), "cannot write the state file: %s", strerror (e));
  }
  bm_name (c->id, nm, sizeof nm);
  unlinkat (T.dirfd, nm, 0);
  ckpt_free (c);
  pthread_rwlock_unlock (&T.rw);
  gate_release (&T.gate);
  nbdkit_debug ("cbt: checkpoint '%s' deleted", name);
  jb_printf (j, ",\"checkpoint\":");
  jb_str (j, name);
  jb_printf (j, ",\"merged_into\":");
  jb_str (j, prev ? prev->name : NULL);
  r = 0;
 out:
  pthread_mutex_unlock (&T.cmd_lock);
  return r;
}

#undef FAIL

void
tracker_foreach (void (*fn) (const char *name, void *opaque), void *opaque)
{
  size_t i;

  pthread_rwlock_rdlock (&T.rw);
  for (i = 0; i < T.ncps; ++i)
    fn (T.cps[i]->name, opaque);
  pthread_rwlock_unlock (&T.rw);
}

/*------------------------------------------------------- change maps --*/

/* Indexes [*lo, *hi) of the bitmaps a change map uses (rw lock held). */
static int
range_of (const char *since, const char *until, int *lo, int *hi,
          const char **err_name, char *why, size_t whylen)
{
  int i;

  *lo = find (since);
  if (*lo < 0) {
    *err_name = "ENOENT";
    snprintf (why, whylen, "checkpoint '%s' does not exist", since);
    return -1;
  }
  *hi = T.ncps;
  if (until) {
    *hi = find (until);
    if (*hi < 0) {
      *err_name = "ENOENT";
      snprintf (why, whylen, "checkpoint '%s' does not exist", until);
      return -1;
    }
    if (*hi < *lo) {
      *err_name = "EINVAL";
      snprintf (why, whylen, "checkpoint '%s' is older than '%s'", until,
                since);
      return -1;
    }
  }
  for (i = *lo; i < *hi; ++i)
    if (T.cps[i]->inconsistent) {
      *err_name = "EIO";
      snprintf (why, whylen, "the bitmap of checkpoint '%s' may miss writes "
                "(nbdkit stopped uncleanly with cbt-sync=flush), so changes "
                "since '%s' are unknown: take a full backup and a new "
                "checkpoint", T.cps[i]->name, since);
      return -1;
    }
  return 0;
}

int
tracker_view_check (const char *since, const char *until,
                    const char **err_name, char *why, size_t whylen)
{
  char buf[256];
  int lo, hi, r;

  if (!name_valid (since, buf, sizeof buf) ||
      (until && !name_valid (until, buf, sizeof buf))) {
    *err_name = "EINVAL";
    snprintf (why, whylen, "%s", buf);
    return -1;
  }
  pthread_rwlock_rdlock (&T.rw);
  r = range_of (since, until, &lo, &hi, err_name, why, whylen);
  pthread_rwlock_unlock (&T.rw);
  return r;
}

static bool
changed (int lo, int hi, uint64_t b)
{
  int i;
  for (i = lo; i < hi; ++i)
    if (bitset_get_atomic (&T.cps[i]->bits, b))
      return true;
  return false;
}

int
tracker_extents (const char *since, const char *until, nbdkit_next *next,
                 uint32_t count, uint64_t offset, uint32_t flags,
                 struct nbdkit_extents *extents, int *err)
{
  const uint64_t end = offset + count;
  const char *ename;
  char why[512];
  int lo, hi, r = 0;

  pthread_rwlock_rdlock (&T.rw);
  if (range_of (since, until, &lo, &hi, &ename, why, sizeof why) == -1) {
    pthread_rwlock_unlock (&T.rw);
    nbdkit_error ("cbt: change map: %s", why);
    *err = EIO;
    return -1;
  }
  while (offset < end) {
    uint64_t b = offset >> T.shift;
    bool ch = changed (lo, hi, b);
    uint64_t run_end = min64 (end, (b + 1) << T.shift);

    while (run_end < end && changed (lo, hi, run_end >> T.shift) == ch)
      run_end = min64 (end, ((run_end >> T.shift) + 1) << T.shift);

    if (!ch) {
      if (nbdkit_add_extent (extents, offset, run_end - offset,
                             NBDKIT_EXTENT_HOLE) == -1) {
        *err = errno; r = -1; break;
      }
    }
    else {
      /* Changed: per block, zero if the disk below says all of the block
       * reads as zero, else data (block-aligned like the bitmap).
       */
      struct nbdkit_extents *pe;
      size_t i = 0, n;
      uint64_t pos = offset;

      pe = nbdkit_extents_full (next, run_end - offset, offset, 0, err);
      if (pe == NULL) { r = -1; break; }
      n = nbdkit_extents_count (pe);
      while (r == 0 && pos < run_end) {
        uint64_t bend = min64 (run_end, ((pos >> T.shift) + 1) << T.shift);
        bool zero = true;
        size_t k;

        while (i + 1 < n && nbdkit_get_extent (pe, i).offset +
               nbdkit_get_extent (pe, i).length <= pos)
          i++;
        for (k = i; k < n; ++k) {
          struct nbdkit_extent e = nbdkit_get_extent (pe, k);
          if (e.offset >= bend)
            break;
          if (!(e.type & NBDKIT_EXTENT_ZERO))
            zero = false;
        }
        if (nbdkit_add_extent (extents, pos, bend - pos,
                               zero ? NBDKIT_EXTENT_ZERO : 0) == -1) {
          *err = errno; r = -1;
        }
        pos = bend;
      }
      nbdkit_extents_free (pe);
      if (r == -1) break;
    }
    offset = run_end;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  pthread_rwlock_unlock (&T.rw);
  return r;
}

void tracker_commands_lock (void) { pthread_mutex_lock (&T.cmd_lock); }
void tracker_commands_unlock (void) { pthread_mutex_unlock (&T.cmd_lock); }

/* Mark the blocks a snapshot revert below us will change.  If the
 * snapshot filter cannot tell us (no such snapshot, say), every block is
 * marked: an incremental may then be larger, never incomplete.
 */
int
tracker_mark_revert (nbdkit_backend *backend, const char *snapshot)
{
  char name[NAME_MAX_LEN + 32];
  nbdkit_next *next;
  uint64_t off = 0;
  int64_t size = -1;
  int err = 0, r = -1;
  bool opened = false;

  if (active () == NULL)
    return 0;                   /* no checkpoint: nothing to track */
  snprintf (name, sizeof name, "@snapshot:diff/%s", snapshot);
  next = nbdkit_next_context_open (backend, 1, name, 1);
  if (next != NULL && next->prepare (next) == 0) {
    opened = true;
    size = next->get_size (next);
    if (size != (int64_t) T.size || next->can_extents (next) != 1)
      size = -1;
  }
  gate_enter (&T.gate);
  if (size == -1) {
    nbdkit_debug ("cbt: no change map for the revert to '%s': marking "
                  "every block", snapshot);
    r = tracker_mark (0, T.size, &err);
  }
  else {
    r = 0;
    while (r == 0 && off < (uint64_t) size) {
      uint32_t len = min64 (size - off, UINT32_C (1) << 30);
      struct nbdkit_extents *e = nbdkit_extents_full (next, len, off, 0,
                                                      &err);
      size_t i;

      if (e == NULL) {
        r = -1;
        break;
      }
      for (i = 0; r == 0 && i < nbdkit_extents_count (e); ++i) {
        struct nbdkit_extent x = nbdkit_get_extent (e, i);
        /* In a snapshot change map, HOLE alone means "unchanged". */
        if (x.type != NBDKIT_EXTENT_HOLE)
          r = tracker_mark (x.offset, x.length, &err);
      }
      nbdkit_extents_free (e);
      off += len;
    }
  }
  gate_leave (&T.gate);
  if (opened)
    next->finalize (next);
  if (next)
    nbdkit_next_context_close (next);
  return r;
}

/*----------------------------------------------------------- startup --*/

static int
probe_size (nbdkit_backend *backend)
{
  int64_t size = disk_below_size (backend, "cbt");

  if (size == -1)
    return -1;
  T.size = size;
  return 0;
}

#define BAD(...) do {                                                   \
    nbdkit_error ("cbt-dir %s: " __VA_ARGS__);                          \
    goto out;                                                           \
  } while (0)

static int
load_state (char *text, size_t len, const struct tracker_config *cfg,
            bool *was_running, enum cbt_sync *was_sync,
            uint64_t *old_size)
{
  char *line, *save = NULL;
  uint64_t disk_size = 0, next_id = 0;
  uint32_t gran = 0;
  int version = 0, r = -1;
  size_t k;
  char why[512], word[16] = "";
  const char *fix = "restore cbt-dir from a backup, or start with an empty "
    "cbt-dir (checkpoints are then lost: the next backup must be full)";

  *was_running = false;
  *was_sync = CBT_SYNC_FLUSH;
  if (state_text_check (text, len, why, sizeof why) == -1)
    BAD ("%s: %s; %s", T.dir, STATE_NAME, why, fix);

  for (line = strtok_r (text, "\n", &save), k = 0; line;
       line = strtok_r (NULL, "\n", &save), ++k) {
    if (k == 0) {
      if (strcmp (line, STATE_MAGIC) != 0)
        BAD ("%s: not an nbdsnap cbt state file", T.dir, STATE_NAME);
    }
    else if (sscanf (line, "version %d", &version) == 1) {
      if (version != STATE_VERSION)
        BAD ("%s: state version %d is not supported (supports %d)",
             T.dir, STATE_NAME, version, STATE_VERSION);
    }
    else if (sscanf (line, "disk-size %" SCNu64, &disk_size) == 1) ;
    else if (sscanf (line, "granularity %" SCNu32, &gran) == 1) ;
    else if (sscanf (line, "next-id %" SCNu64, &next_id) == 1) ;
    else if (sscanf (line, "sync %15s", word) == 1)
      *was_sync = strcmp (word, "strict") == 0
        ? CBT_SYNC_STRICT : CBT_SYNC_FLUSH;
    else if (sscanf (line, "status %15s", word) == 1)
      *was_running = strcmp (word, "running") == 0;
    else if (strncmp (line, "checkpoint ", 11) == 0) {
      struct ckpt *c = calloc (1, sizeof *c), **np;
      char cons[16];
      np = realloc (T.cps, (T.ncps + 1) * sizeof *np);
      if (c == NULL || np == NULL) {
        free (c);
        BAD ("out of memory", T.dir);
      }
      T.cps = np;
      c->fd = -1;
      int used = -1;
      if (sscanf (line, "checkpoint %" SCNu64 " %" SCNd64 " %15s %64s%n",
                  &c->id, &c->created, cons, c->name, &used) != 4 ||
          line[used] != '\0' ||
          (strcmp (cons, "consistent") && strcmp (cons, "inconsistent")) ||
          !name_valid (c->name, why, sizeof why) || find (c->name) >= 0 ||
          c->id == 0 || (T.ncps && c->id <= T.cps[T.ncps - 1]->id)) {
        free (c);
        BAD ("%s: bad checkpoint line '%s'; %s", T.dir, STATE_NAME, line,
             fix);
      }
      c->inconsistent = strcmp (cons, "inconsistent") == 0;
      T.cps[T.ncps++] = c;
    }
    else
      BAD ("%s: unknown line '%s'", T.dir, STATE_NAME, line);
  }
  if (version == 0 || gran == 0 || next_id == 0)
    BAD ("%s: incomplete state file; %s", T.dir, STATE_NAME, fix);
  if (cfg->granularity && cfg->granularity != gran)
    BAD ("tracks with cbt-granularity=%" PRIu32 ", not %" PRIu32 "; drop the "
         "parameter, or use a new cbt-dir (the next backup must be full)",
         T.dir, gran, cfg->granularity);
  if (gran < 4096 || gran > 16 * 1024 * 1024 || (gran & (gran - 1)))
    BAD ("%s: invalid granularity %" PRIu32, T.dir, STATE_NAME, gran);
  if (T.ncps && T.cps[T.ncps - 1]->id >= next_id)
    BAD ("%s: next-id is not above every checkpoint id", T.dir, STATE_NAME);
  T.gran = gran;
  T.shift = __builtin_ctz (gran);
  T.next_id = next_id;
  *old_size = disk_size;
  r = 0;
 out:
  return r;
}

static bool
known_bitmap (uint64_t id)
{
  size_t i;

  for (i = 0; i < T.ncps; ++i)
    if (T.cps[i]->id == id)
      return true;
  return false;
}

static void
remove_strays (void)
{
  static const char *const suffixes[] = { "bits", "bits.tmp", NULL };

  statedir_remove_strays (T.dirfd, STATE_NAME, "bitmap-", suffixes,
                          known_bitmap, "cbt");
}

static bool
any_bitmaps (void)
{
  DIR *d = statedir_open (T.dirfd);
  struct dirent *e;
  bool any = false;

  if (d == NULL)
    return false;
  while ((e = readdir (d)) != NULL)
    if (strncmp (e->d_name, "bitmap-", 7) == 0)
      any = true;
  closedir (d);
  return any;
}

static void
free_all (void)
{
  size_t i;
  for (i = 0; i < T.ncps; ++i)
    ckpt_free (T.cps[i]);
  free (T.cps);
  T.cps = NULL;
  T.ncps = 0;
}

int
tracker_start (const struct tracker_config *cfg, nbdkit_backend *backend)
{
  char *text = NULL;
  size_t len, i;
  char why[512];
  bool was_running = false;
  enum cbt_sync was_sync = cfg->sync;
  uint64_t old_size, old_nblocks;
  int r;

  T.dir = strdup (cfg->dir);
  T.sync = cfg->sync;
  if (mkdir (T.dir, 0755) == -1 && errno != EEXIST) {
    nbdkit_error ("cbt-dir %s: cannot create it: %m", T.dir);
    return -1;
  }
  T.dirfd = open (T.dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (T.dirfd == -1) {
    nbdkit_error ("cbt-dir %s: %m", T.dir);
    return -1;
  }
  T.lockfd = openat (T.dirfd, "lock", O_RDWR|O_CREAT|O_CLOEXEC, 0644);
  if (T.lockfd == -1) {
    nbdkit_error ("cbt-dir %s: not writable (%m): fix the permissions or "
                  "the mount", T.dir);
    return -1;
  }
  if (flock (T.lockfd, LOCK_EX|LOCK_NB) == -1) {
    nbdkit_error ("cbt-dir %s: in use by another nbdkit process (its lock "
                  "file is held); stop it first or use another directory",
                  T.dir);
    return -1;
  }
  if (dir_check_writable (T.dirfd) == -1) {
    nbdkit_error ("cbt-dir %s: not writable (%m): nbdkit needs to create, "
                  "rename and remove files there; fix the permissions, the "
                  "mount or the immutable attribute", T.dir);
    return -1;
  }
  if (probe_size (backend) == -1)
    return -1;

  if (statefile_read (T.dirfd, STATE_NAME, &text, &len) == 0) {
    r = load_state (text, len, cfg, &was_running, &was_sync, &old_size);
    free (text);
    if (r == -1)
      return -1;
    if (T.size < old_size) {
      if (!cfg->reset_on_shrink) {
        nbdkit_error ("cbt-dir %s: the disk shrank from %" PRIu64 " to %"
                      PRIu64 " bytes; the bitmaps cannot describe it.  Add "
                      "cbt-reset-on-shrink=true to drop every checkpoint "
                      "(the next backup must be full)", T.dir, old_size,
                      T.size);
        return -1;
      }
      nbdkit_debug ("cbt: disk shrank: dropping every checkpoint");
      for (i = 0; i < T.ncps; ++i) {
        char nm[64];
        bm_name (T.cps[i]->id, nm, sizeof nm);
        unlinkat (T.dirfd, nm, 0);
      }
      free_all ();
      old_size = T.size;
    }
  }
  else if (errno != ENOENT) {
    nbdkit_error ("cbt-dir %s: cannot read %s: %m", T.dir, STATE_NAME);
    return -1;
  }
  else {
    if (any_bitmaps ()) {
      nbdkit_error ("cbt-dir %s: holds bitmaps but no state file (was it "
                    "deleted?); restore it from a backup, or empty the "
                    "directory to start again (the next backup must be "
                    "full)", T.dir);
      return -1;
    }
    T.gran = cfg->granularity ? cfg->granularity : 65536;
    T.shift = __builtin_ctz (T.gran);
    T.next_id = 1;
    old_size = T.size;
  }
  T.nblocks = (T.size + T.gran - 1) / T.gran;
  old_nblocks = (old_size + T.gran - 1) / T.gran;

  if (bitset_init (&T.durable, T.nblocks) == -1 ||
      bitset_init (&T.dirty_pages, T.nblocks / PAGE_BITS + 1) == -1) {
    nbdkit_error ("cbt: out of memory");
    return -1;
  }
  for (i = 0; i < T.ncps; ++i) {
    bool newest = i == T.ncps - 1;
    if (bm_load (T.cps[i], old_nblocks, newest || was_running,
                 why, sizeof why) == -1) {
      nbdkit_error ("cbt-dir %s: %s; restore cbt-dir from a backup, or "
                    "start with an empty cbt-dir (the next backup must be "
                    "full)", T.dir, why);
      return -1;
    }
  }
  if (was_running && was_sync == CBT_SYNC_FLUSH && T.ncps) {
    nbdkit_debug ("cbt: unclean stop in flush mode: the bitmap of '%s' "
                  "may miss writes", T.cps[T.ncps - 1]->name);
    T.cps[T.ncps - 1]->inconsistent = true;
  }
  if (T.ncps) {
    /* The disk grew: the new area counts as changed since every
     * checkpoint (the active bitmap is in every "since" union).
     */
    struct ckpt *a = T.cps[T.ncps - 1];
    uint64_t b;
    for (b = old_size / T.gran;
         old_size < T.size && b < T.nblocks; ++b)
      bitset_set (&a->bits, b);
    for (i = 0; i + 1 < T.ncps; ++i)
      if ((old_size != T.size || was_running) && bm_seal (T.cps[i]) == -1) {
        nbdkit_error ("cbt-dir %s: cannot rewrite a bitmap: %m", T.dir);
        return -1;
      }
    if (bm_activate (a) == -1) {
      nbdkit_error ("cbt-dir %s: cannot write the active bitmap: %m", T.dir);
      return -1;
    }
  }
  remove_strays ();
  if (save_state (true) == -1) {
    nbdkit_error ("cbt-dir %s: cannot write the state file: %m", T.dir);
    return -1;
  }
  return 0;
}

void
tracker_stop (void)
{
  struct ckpt *a;

  if (T.dirfd == -1)
    return;
  a = active ();
  if (a && bm_seal (a) == -1)
    nbdkit_error ("cbt: sealing the active bitmap at shutdown: %m (the "
                  "next start will treat this as an unclean stop)");
  else if (save_state (false) == -1)
    nbdkit_error ("cbt: writing the state file at shutdown: %m");
  free_all ();
  bitset_free (&T.durable);
  bitset_free (&T.dirty_pages);
  close (T.lockfd);
  close (T.dirfd);
  T.dirfd = -1;
  free (T.dir);
}
