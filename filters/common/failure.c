/* nbdsnap filters: a sticky failure (see failure.h). */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "failure.h"
#include "lockscope.h"

void
failure_set (struct failure *f, const char *filter, int err,
             const char *fmt, ...)
{
  va_list ap;
  char what[200];
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&f->lock);

  va_start (ap, fmt);
  vsnprintf (what, sizeof what, fmt, ap);
  va_end (ap);
  if (failure_is_set (f)) {
    nbdkit_debug ("%s: also failed: %s: %s", filter, what, strerror (err));
    return;
  }
  f->err = err;
  snprintf (f->why, sizeof f->why, "%s: %s", what, strerror (err));
  __atomic_store_n (&f->failed, 1, __ATOMIC_RELEASE);
  nbdkit_error ("%s: %s; from now on writes, flushes and changing "
                "commands fail (EIO) until nbdkit is restarted, which "
                "keeps only what was made durable before this error",
                filter, f->why);
}

int
failure_check_command (const struct failure *f, struct command *c)
{
  if (!failure_is_set (f))
    return 0;
  return command_fail (c, "EIO", "the %s filter stopped taking changes "
                       "after an I/O error (%s); restart nbdkit", c->filter,
                       f->why);
}
