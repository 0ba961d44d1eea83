/* nbdsnap filters: a sticky failure.
 *
 * Linux reports a writeback error once: after a failed fsync or
 * fdatasync, a failed write to a state file, or a directory that could
 * not be made durable, a filter can no longer know what its files hold,
 * and the next fsync may return 0 over lost data.  So the first such
 * error puts the filter into a failed state that lasts until nbdkit
 * restarts: every write, zero, trim and flush of the live disk and every
 * mutating command answers EIO (reads and views go on).  At the next
 * start the filter reads only what was made durable before the error,
 * and what it reads must tell the truth (a checkpoint that may miss a
 * write is marked inconsistent, and so on).
 */
#ifndef NBDSNAP_FAILURE_H
#define NBDSNAP_FAILURE_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>

#include "command.h"

struct failure {
  int failed;                   /* atomic */
  int err;                      /* the errno that caused it */
  char why[256];                /* what failed (set once, before failed) */
  pthread_mutex_t lock;         /* serializes failure_set */
};

#define FAILURE_INIT { 0, 0, "", PTHREAD_MUTEX_INITIALIZER }

/* Enter the failed state: err is the errno, fmt says what failed.  The
 * first call wins and is logged (nbdkit_error, naming filter); later
 * calls are only debug messages.
 */
void failure_set (struct failure *f, const char *filter, int err,
                  const char *fmt, ...)
  __attribute__ ((format (printf, 4, 5), nonnull (1, 2, 4)));

/* Is the filter in the failed state? */
static inline bool
failure_is_set (const struct failure *f)
{
  return __atomic_load_n (&f->failed, __ATOMIC_ACQUIRE);
}

/* For the data path: 0, or -1 with *err = EIO in the failed state. */
static inline int
failure_check (const struct failure *f, int *err)
{
  if (!failure_is_set (f))
    return 0;
  *err = EIO;
  return -1;
}

/* For mutating commands: 0, or in the failed state -1 after
 * command_fail (c, "EIO", ...) saying why and how to get out of it.
 */
int failure_check_command (const struct failure *f, struct command *c)
  __attribute__ ((nonnull (1, 2)));

#endif /* NBDSNAP_FAILURE_H */
