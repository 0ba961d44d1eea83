/* nbdsnap freeze filter: the list of frozen points and their life. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "command.h"
#include "lockscope.h"
#include "points-internal.h"

struct points P = {
  .dirfd = -1,
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .unref = PTHREAD_COND_INITIALIZER,
  .rw = PTHREAD_RWLOCK_INITIALIZER,
  .gate = GATE_INIT,
  .probed = FIRST_USE_INIT,
};

uint32_t points_block_size (void) { return P.g.block_size; }

int
points_start (const struct freeze_config *cfg)
{
  int fd;

  stripes_init (&P.stripes);
  P.dir = strdup (cfg->dir);
  if (P.dir == NULL) {
    nbdkit_error ("freeze: out of memory");
    return -1;
  }
  P.max_size = cfg->max_size;
  P.dirfd = open (P.dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (P.dirfd == -1) {
    nbdkit_error ("freeze-dir %s: %m", P.dir);
    return -1;
  }
  /* Scratch files are unlinked: check now that we can make one. */
  fd = openat (P.dirfd, ".", O_TMPFILE|O_RDWR|O_CLOEXEC, 0600);
  if (fd == -1) {
    nbdkit_error ("freeze-dir %s: cannot create scratch files there (%m)",
                  P.dir);
    return -1;
  }
  close (fd);
  P.g.block_size = cfg->block_size;
  return 0;
}

struct probe {
  nbdkit_next *next;
  nbdkit_backend *backend;
  const char *name;
};

static int
probe (void *opaque)
{
  struct probe *pr = opaque;
  int64_t size;

  if (pr->next) {
    size = pr->next->get_size (pr->next);
    if (size == -1)
      nbdkit_error ("freeze: cannot get the size of the disk below");
  }
  else
    size = disk_below_size_of (pr->backend, pr->name, "freeze");
  if (size == -1)
    return -1;
  geom_init (&P.g, size, P.g.block_size);
  nbdkit_debug ("freeze: disk of %" PRIi64 " bytes", size);
  return 0;
}

int
points_use_disk (nbdkit_next *next, nbdkit_backend *backend,
                 const char *name)
{
  struct probe pr = { next, backend, name };
  int64_t size;

  if (first_use_run (&P.probed, probe, &pr) == -1)
    return -1;
  if (next && (size = next->get_size (next)) != (int64_t) P.g.disk_size) {
    nbdkit_error ("freeze: the disk below changed size (%" PRIi64 " bytes, "
                  "was %" PRIu64 ") while nbdkit runs", size,
                  P.g.disk_size);
    return -1;
  }
  return 0;
}

void
point_free (struct point *p)
{
  unsigned k;

  for (k = 0; k < p->nseg; ++k)
    if (p->fds[k] >= 0)
      close (p->fds[k]);
  free (p->fds);
  bitset_free (&p->saved);
  free (p);
}

void
point_unref (struct point *p)
{
  if (--p->refs == 0)
    point_free (p);
  pthread_cond_broadcast (&P.unref);
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
  P.dir = NULL;
}

bool
points_any (void)
{
  return __atomic_load_n (&P.npts, __ATOMIC_ACQUIRE) > 0;
}

struct point *
point_find (const char *name)
{
  size_t i;

  for (i = 0; i < P.npts; ++i)
    if (strcmp (P.pts[i]->name, name) == 0)
      return P.pts[i];
  return NULL;
}

void
point_fail (struct point *p, const char *what, int e)
{
  if (__atomic_exchange_n (&p->failing, true, __ATOMIC_ACQ_REL))
    return;
  if (e)
    snprintf (p->failure, sizeof p->failure, "%s (%s)", what, strerror (e));
  else
    snprintf (p->failure, sizeof p->failure, "%s", what);
  __atomic_store_n (&p->failed, true, __ATOMIC_RELEASE);
  nbdkit_error ("freeze: backup '%s' aborted: %s", p->name, p->failure);
}

void
point_release_scratch (struct point *p)
{
  unsigned k;

  if (!point_failed (p) || p->released)
    return;
  /* Truncating while a writer still saved into the file would let it
   * grow back: hence the callers' guarantee that none can.
   */
  for (k = 0; k < p->nseg; ++k)
    if (ftruncate (p->fds[k], 0) == -1)
      nbdkit_debug ("freeze: ftruncate scratch: %m");
  __atomic_store_n (&p->used, 0, __ATOMIC_RELAXED);
  p->released = true;
}

struct point *
points_get (const char *name, char *why, size_t whylen)
{
  struct point *p;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&P.lock);

  p = point_find (name);
  if (p == NULL) {
    snprintf (why, whylen, "no frozen point '%s' (begin it with "
              "@freeze:begin/%s)", name, name);
    return NULL;
  }
  if (point_failed (p)) {
    snprintf (why, whylen, "backup '%s' was aborted: %s", name, p->failure);
    return NULL;
  }
  p->refs++;
  return p;
}

void
points_put (struct point *p)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&P.lock);

  point_unref (p);
}

void
points_foreach (void (*fn) (const char *name, void *opaque), void *opaque)
{
  size_t i;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&P.lock);

  for (i = 0; i < P.npts; ++i)
    fn (P.pts[i]->name, opaque);
}
