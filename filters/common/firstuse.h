/* nbdsnap filters: work done once, by the first connection that needs it.
 *
 * A filter cannot look at the disk below before a client connects:
 * during .get_ready nbdkit is not ready for it (a filter below that
 * sleeps asserts when stdin is /dev/null; in daemon mode it would run
 * before the fork), and from .after_fork on there is still no
 * connection, so a plugin that asks about its connection (the nbd
 * plugin calls nbdkit_export_name in .open) logs "no connection in this
 * thread".  nbdkit's cow filter, likewise, learns the disk size from the
 * first connection.  So the filters read what they need of the disk
 * below (its size, the snapshot filter's fingerprint) through the first
 * connection's own context, in .prepare, or, for a command that comes
 * first, through a shared context it opens itself.
 */
#ifndef NBDSNAP_FIRSTUSE_H
#define NBDSNAP_FIRSTUSE_H

#include <pthread.h>
#include <stdbool.h>

struct first_use {
  pthread_mutex_t lock;
  bool done;                    /* atomic */
};

#define FIRST_USE_INIT { PTHREAD_MUTEX_INITIALIZER, false }

/* Has the work been done? */
static inline bool
first_use_done (struct first_use *f)
{
  return __atomic_load_n (&f->done, __ATOMIC_ACQUIRE);
}

/* Run fn (opaque) unless it has succeeded before; concurrent callers
 * wait for the one running it.  A failure (fn returns -1 after
 * nbdkit_error) is not remembered: the next connection tries again.
 * 0 once done, else -1.
 */
static inline int
first_use_run (struct first_use *f, int (*fn) (void *opaque), void *opaque)
{
  int r = 0;

  if (first_use_done (f))
    return 0;
  pthread_mutex_lock (&f->lock);
  if (!first_use_done (f)) {
    r = fn (opaque);
    if (r == 0)
      __atomic_store_n (&f->done, true, __ATOMIC_RELEASE);
  }
  pthread_mutex_unlock (&f->lock);
  return r;
}

#endif /* NBDSNAP_FIRSTUSE_H */
