/* nbdsnap freeze filter: frozen points (see points.h). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "command.h"
#include "exportname.h"
#include "gate.h"
#include "points.h"

#define NSTRIPES 1024

struct point {
  char name[NAME_MAX_LEN + 1];
  time_t created;
  bool checkpoint;              /* a cbt checkpoint was made with it */
  int fd;                       /* scratch: unlinked file in freeze-dir */
  struct bitset saved;          /* blocks whose frozen content is in fd */
  uint64_t used;                /* scratch bytes (atomic) */
  bool failing;                 /* atomic: fail_point claimed it */
  bool failed;                  /* atomic: aborted (failure is set) */
  char failure[256];
  unsigned refs;                /* list + open views (P.lock) */
};

static struct {
  char *dir;
  int dirfd;
  uint64_t max_size;
  uint32_t bs;
  unsigned shift;
  uint64_t size, nblocks;

  pthread_mutex_t lock;         /* commands, refs */
  pthread_rwlock_t rw;          /* the list (writers save under rdlock) */
  struct point **pts;
  size_t npts;                  /* atomic for the fast path */
  struct gate gate;
  pthread_mutex_t stripes[NSTRIPES];
} P = {
  .dirfd = -1,
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .rw = PTHREAD_RWLOCK_INITIALIZER,
  .gate = GATE_INIT,
};

static inline uint64_t
min64 (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

static inline uint64_t
block_len (uint64_t b)
{
  return min64 (P.bs, P.size - (b << P.shift));
}

static pthread_mutex_t *
stripe (uint64_t b)
{
  return &P.stripes[b % NSTRIPES];
}

uint32_t points_block_size (void) { return P.bs; }

int
points_start (const struct freeze_config *cfg, nbdkit_backend *backend)
{
  int64_t size = -1;
  size_t i;

  for (i = 0; i < NSTRIPES; ++i)
    pthread_mutex_init (&P.stripes[i], NULL);
  P.dir = strdup (cfg->dir);
  P.max_size = cfg->max_size;
  P.bs = cfg->block_size;
  P.shift = __builtin_ctz (P.bs);
  P.dirfd = open (P.dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (P.dirfd == -1) {
    nbdkit_error ("freeze-dir %s: %m", P.dir);
    return -1;
  }
  /* Scratch files are unlinked: check now that we can make one. */
  {
    int fd = openat (P.dirfd, ".", O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
    if (fd == -1) {
      nbdkit_error ("freeze-dir %s: cannot create scratch files there (%m)",
                    P.dir);
      return -1;
    }
    close (fd);
  }
  size = disk_below_size (backend, "freeze");
  if (size == -1)
    return -1;
  P.size = size;
  P.nblocks = (size + P.bs - 1) / P.bs;
  return 0;
}

static void
point_free (struct point *p)
{
  if (p->fd >= 0)
    close (p->fd);
  bitset_free (&p->saved);
  free (p);
}

/* Drop a reference (P.lock held). */
static void
unref (struct point *p)
{
  if (--p->refs == 0)
    point_free (p);
}

void
points_stop (void)
{
  size_t i;

  for (i = 0; i < P.npts; ++i)
    point_free (P.pts[i]);
  free (P.pts);
  P.pts = NULL;
  P.npts = 0;
  if (P.dirfd >= 0)
    close (P.dirfd);
  P.dirfd = -1;
  free (P.dir);
}

bool
points_any (void)
{
  return __atomic_load_n (&P.npts, __ATOMIC_ACQUIRE) > 0;
}

/*---------------------------------------------------------- data path --*/

void points_enter (void) { gate_enter (&P.gate); }
void points_leave (void) { gate_leave (&P.gate); }

/* Abort point p: the live disk goes on, its view starts failing. */
static void
fail_point (struct point *p, const char *what, int e)
{
  if (__atomic_exchange_n (&p->failing, true, __ATOMIC_ACQ_REL))
    return;
  if (e)
    snprintf (p->failure, sizeof p->failure, "%s (%s)", what, strerror (e));
  else
    snprintf (p->failure, sizeof p->failure, "%s", what);
  __atomic_store_n (&p->failed, true, __ATOMIC_RELEASE);
  nbdkit_error ("freeze: backup '%s' aborted: %s", p->name, p->failure);
  /* Give the scratch space back. */
  if (ftruncate (p->fd, 0) == -1)
    nbdkit_debug ("freeze: ftruncate scratch: %m");
  __atomic_store_n (&p->used, 0, __ATOMIC_RELAXED);
}

void
points_save (nbdkit_next *next, uint64_t offset, uint64_t count)
{
  uint64_t b, b0, b1;
  char *buf;

  if (count == 0 || !points_any ())
    return;                     /* no backup open: nothing to do */
  buf = NULL;
  pthread_rwlock_rdlock (&P.rw);
  b0 = offset >> P.shift;
  b1 = (offset + count - 1) >> P.shift;
  for (b = b0; b <= b1; ++b) {
    uint64_t bl = block_len (b);
    bool need = false, have = false;
    size_t i;
    int err = 0;

    pthread_mutex_lock (stripe (b));
    for (i = 0; i < P.npts; ++i)
      if (!__atomic_load_n (&P.pts[i]->failed, __ATOMIC_ACQUIRE) &&
          !bitset_get_atomic (&P.pts[i]->saved, b))
        need = true;
    if (need) {
      if (buf == NULL)
        buf = malloc (P.bs);
      if (buf && next->pread (next, buf, bl, b << P.shift, 0, &err) == 0)
        have = true;
      for (i = 0; i < P.npts; ++i) {
        struct point *p = P.pts[i];
        if (__atomic_load_n (&p->failed, __ATOMIC_ACQUIRE) ||
            bitset_get_atomic (&p->saved, b))
          continue;
        if (!have)
          fail_point (p, "cannot read the disk below to save a block",
                      buf ? err : ENOMEM);
        else if (P.max_size &&
                 __atomic_add_fetch (&p->used, bl, __ATOMIC_RELAXED)
                 > P.max_size)
          /* Reserve first, so parallel writers cannot overshoot. */
          fail_point (p, "scratch space reached freeze-max-size",
                      ENOSPC);
        else if (pwrite (p->fd, buf, bl, b << P.shift) != (ssize_t) bl)
          fail_point (p, "cannot write scratch space in freeze-dir",
                      errno ? errno : ENOSPC);
        else {
          if (!P.max_size)
            __atomic_add_fetch (&p->used, bl, __ATOMIC_RELAXED);
          bitset_set_atomic (&p->saved, b);
        }
      }
    }
    pthread_mutex_unlock (stripe (b));
  }
  pthread_rwlock_unlock (&P.rw);
  free (buf);
}

/*------------------------------------------------------------- views --*/

static struct point *
find (const char *name)
{
  size_t i;
  for (i = 0; i < P.npts; ++i)
    if (strcmp (P.pts[i]->name, name) == 0)
      return P.pts[i];
  return NULL;
}

struct point *
points_get (const char *name, char *why, size_t whylen)
{
  struct point *p;

  pthread_mutex_lock (&P.lock);
  pthread_rwlock_rdlock (&P.rw);
  p = find (name);
  if (p == NULL)
    snprintf (why, whylen, "no frozen point '%s' (begin it with "
              "@freeze:begin/%s)", name, name);
  else if (__atomic_load_n (&p->failed, __ATOMIC_ACQUIRE)) {
    snprintf (why, whylen, "backup '%s' was aborted: %s", name, p->failure);
    p = NULL;
  }
  else
    p->refs++;
  pthread_rwlock_unlock (&P.rw);
  pthread_mutex_unlock (&P.lock);
  return p;
}

void
points_put (struct point *p)
{
  pthread_mutex_lock (&P.lock);
  unref (p);
  pthread_mutex_unlock (&P.lock);
}

static int
aborted (struct point *p, int *err)
{
  nbdkit_error ("freeze: backup '%s' was aborted: %s", p->name, p->failure);
  *err = EIO;
  return -1;
}

int
points_pread (struct point *p, nbdkit_next *next, void *vbuf,
              uint32_t count, uint64_t offset, int *err)
{
  char *buf = vbuf;
  const uint64_t end = offset + count;

  while (offset < end) {
    uint64_t b = offset >> P.shift;
    uint64_t n = min64 (end, (b + 1) << P.shift) - offset;
    int r = 0;

    /* Under the stripe lock no writer can save-then-overwrite b. */
    pthread_mutex_lock (stripe (b));
    if (__atomic_load_n (&p->failed, __ATOMIC_ACQUIRE))
      r = -2;
    else if (bitset_get_atomic (&p->saved, b)) {
      if (pread (p->fd, buf, n, offset) != (ssize_t) n) {
        *err = errno ? errno : EIO;
        r = -1;
      }
    }
    else
      r = next->pread (next, buf, n, offset, 0, err);
    pthread_mutex_unlock (stripe (b));
    if (r == -2)
      return aborted (p, err);
    if (r == -1)
      return -1;
    buf += n;
    offset += n;
  }
  if (__atomic_load_n (&p->failed, __ATOMIC_ACQUIRE))
    return aborted (p, err);
  return 0;
}

/* Index of the extent of e containing pos (from *i on). */
static struct nbdkit_extent
extent_at (struct nbdkit_extents *e, size_t *i, uint64_t pos)
{
  struct nbdkit_extent x;
  for (;;) {
    x = nbdkit_get_extent (e, *i);
    if (pos < x.offset + x.length || *i + 1 >= nbdkit_extents_count (e))
      return x;
    (*i)++;
  }
}

int
points_extents (struct point *p, nbdkit_next *next, nbdkit_next *changes,
                uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents, int *err)
{
  const uint64_t end = offset + count;
  struct nbdkit_extents *fe = NULL, *ce = NULL;
  size_t fi = 0, ci = 0;
  uint64_t pos = offset;
  int r = -1;

  if (__atomic_load_n (&p->failed, __ATOMIC_ACQUIRE))
    return aborted (p, err);
  if (changes &&
      (ce = nbdkit_extents_full (changes, count, offset, 0, err)) == NULL)
    goto out;
  /* The disk below first, the saved bits after: a block not saved once
   * the query is done was not overwritten before it either.
   */
  if ((fe = nbdkit_extents_full (next, count, offset, 0, err)) == NULL)
    goto out;

  while (pos < end) {
    uint64_t b = pos >> P.shift;
    struct nbdkit_extent f = extent_at (fe, &fi, pos);
    uint64_t seg_end = min64 (end, min64 (f.offset + f.length,
                                          (b + 1) << P.shift));
    uint32_t type;

    if (ce) {
      struct nbdkit_extent c = extent_at (ce, &ci, pos);
      seg_end = min64 (seg_end, c.offset + c.length);
      if (c.type == NBDKIT_EXTENT_HOLE) {
        type = NBDKIT_EXTENT_HOLE;      /* unchanged since BASE */
        goto add;
      }
    }
    if (bitset_get_atomic (&p->saved, b))
      type = 0;
    else if (ce)
      type = (f.type & NBDKIT_EXTENT_ZERO) ? NBDKIT_EXTENT_ZERO : 0;
    else
      type = f.type;
  add:
    if (seg_end <= pos)
      seg_end = min64 (end, pos + 1);   /* defensive: always progress */
    if (nbdkit_add_extent (extents, pos, seg_end - pos, type) == -1) {
      *err = errno;
      goto out;
    }
    pos = seg_end;
    if ((flags & NBDKIT_FLAG_REQ_ONE) && pos > offset)
      break;
  }
  r = 0;
  if (__atomic_load_n (&p->failed, __ATOMIC_ACQUIRE))
    r = aborted (p, err);
 out:
  if (fe) nbdkit_extents_free (fe);
  if (ce) nbdkit_extents_free (ce);
  return r;
}

/*----------------------------------------------------------- commands --*/

#define FAIL(ename, ...) do {                                   \
    *err_name = (ename);                                        \
    snprintf (why, whylen, __VA_ARGS__);                        \
    goto out;                                                   \
  } while (0)

/* Ask a cbt filter below to create checkpoint name.  1: made; 0: there
 * is no cbt filter below; -1: it refused (why says why).
 */
static int
make_checkpoint (nbdkit_backend *backend, const char *name,
                 char *why, size_t whylen)
{
  char ex[NAME_MAX_LEN + 32];
  nbdkit_next *next;
  const char *d;
  char *json = NULL;
  int64_t size;
  int err = 0, r = -1;

  snprintf (ex, sizeof ex, "@cbt:create/%s", name);
  next = nbdkit_next_context_open (backend, 0, ex, 1);
  if (next == NULL)
    return 0;
  if (next->prepare (next) == -1) {
    nbdkit_next_context_close (next);
    return 0;
  }
  d = next->export_description (next);
  if (d == NULL || strncmp (d, "nbdsnap:cbt", 11) != 0) {
    r = 0;
    goto fin;
  }
  size = next->get_size (next);
  if (size <= 0 || size > 65536 || (json = calloc (1, size + 1)) == NULL ||
      next->pread (next, json, size, 0, 0, &err) == -1) {
    snprintf (why, whylen, "cannot read the cbt filter's answer");
    goto fin;
  }
  if (strstr (json, "\"ok\":true") != NULL)
    r = 1;
  else {
    json[strcspn (json, "\n")] = '\0';
    snprintf (why, whylen, "the cbt filter refused the checkpoint: %s",
              json);
  }
 fin:
  next->finalize (next);
  nbdkit_next_context_close (next);
  free (json);
  return r;
}

static void
json_point (struct jbuf *j, struct point *p)
{
  bool failed = __atomic_load_n (&p->failed, __ATOMIC_ACQUIRE);

  jb_printf (j, "{\"name\":");
  jb_str (j, p->name);
  jb_printf (j, ",\"created\":");
  jb_time (j, p->created);
  jb_printf (j, ",\"checkpoint\":%s,\"scratch_bytes\":%" PRIu64
             ",\"aborted\":%s,\"error\":",
             p->checkpoint ? "true" : "false",
             __atomic_load_n (&p->used, __ATOMIC_RELAXED),
             failed ? "true" : "false");
  jb_str (j, failed ? p->failure : NULL);
  jb_printf (j, "}");
}

int
points_cmd_begin (const char *name, nbdkit_backend *backend,
                  struct jbuf *j, const char **err_name,
                  char *why, size_t whylen)
{
  struct point *p = NULL, **np;
  char buf[256];
  int cp, r = -1;

  if (!name_valid (name, buf, sizeof buf))
    { *err_name = "EINVAL"; snprintf (why, whylen, "%s", buf); return -1; }

  pthread_mutex_lock (&P.lock);
  if (find (name))
    FAIL ("EEXIST", "frozen point '%s' already exists", name);
  p = calloc (1, sizeof *p);
  if (p == NULL || bitset_init (&p->saved, P.nblocks) == -1)
    FAIL ("ENOMEM", "out of memory");
  p->fd = -1;
  p->refs = 1;
  p->created = time (NULL);
  snprintf (p->name, sizeof p->name, "%s", name);
  p->fd = openat (P.dirfd, ".", O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
  if (p->fd == -1)
    FAIL (errno == ENOSPC ? "ENOSPC" : "EIO",
          "cannot create scratch space in freeze-dir: %s", strerror (errno));

  /* One instant for the checkpoint and the frozen point: no write is in
   * flight through this filter while both happen.
   */
  gate_hold (&P.gate);
  cp = make_checkpoint (backend, name, buf, sizeof buf);
  if (cp == -1) {
    gate_release (&P.gate);
    FAIL ("EIO", "%s", buf);
  }
  p->checkpoint = cp == 1;
  pthread_rwlock_wrlock (&P.rw);
  np = realloc (P.pts, (P.npts + 1) * sizeof *np);
  if (np == NULL) {
    pthread_rwlock_unlock (&P.rw);
    gate_release (&P.gate);
    FAIL ("ENOMEM", "out of memory%s", cp == 1 ?
          " (the checkpoint was made; delete it with @cbt:delete)" : "");
  }
  P.pts = np;
  P.pts[P.npts] = p;
  __atomic_store_n (&P.npts, P.npts + 1, __ATOMIC_RELEASE);
  pthread_rwlock_unlock (&P.rw);
  gate_release (&P.gate);
  nbdkit_debug ("freeze: frozen point '%s'%s", name,
                p->checkpoint ? " with checkpoint" : "");
  jb_printf (j, ",\"point\":");
  json_point (j, p);
  p = NULL;
  r = 0;
 out:
  if (p)
    point_free (p);
  pthread_mutex_unlock (&P.lock);
  return r;
}

int
points_cmd_end (const char *name, struct jbuf *j, const char **err_name,
                char *why, size_t whylen)
{
  struct point *p;
  char buf[256];
  size_t i;
  int r = -1;

  if (!name_valid (name, buf, sizeof buf))
    { *err_name = "EINVAL"; snprintf (why, whylen, "%s", buf); return -1; }

  pthread_mutex_lock (&P.lock);
  p = find (name);
  if (p == NULL)
    FAIL ("ENOENT", "no frozen point '%s'", name);
  pthread_rwlock_wrlock (&P.rw);
  for (i = 0; P.pts[i] != p; ++i)
    ;
  memmove (&P.pts[i], &P.pts[i + 1], (P.npts - i - 1) * sizeof *P.pts);
  __atomic_store_n (&P.npts, P.npts - 1, __ATOMIC_RELEASE);
  pthread_rwlock_unlock (&P.rw);
  jb_printf (j, ",\"point\":");
  json_point (j, p);
  if (p->refs > 1)
    /* Views still open would now see later writes: make them fail. */
    fail_point (p, "the backup was ended while this view was open", 0);
  unref (p);
  r = 0;
 out:
  pthread_mutex_unlock (&P.lock);
  return r;
}

#undef FAIL

int
points_cmd_list (struct jbuf *j)
{
  size_t i;

  pthread_mutex_lock (&P.lock);
  jb_printf (j, ",\"block_size\":%u,\"max_size\":%" PRIu64 ",\"points\":[",
             P.bs, P.max_size);
  for (i = 0; i < P.npts; ++i) {
    if (i) jb_printf (j, ",");
    json_point (j, P.pts[i]);
  }
  jb_printf (j, "]");
  pthread_mutex_unlock (&P.lock);
  return 0;
}

void
points_foreach (void (*fn) (const char *name, void *opaque), void *opaque)
{
  size_t i;

  pthread_mutex_lock (&P.lock);
  for (i = 0; i < P.npts; ++i)
    fn (P.pts[i]->name, opaque);
  pthread_mutex_unlock (&P.lock);
}
