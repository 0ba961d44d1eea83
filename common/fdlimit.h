/* nbdsnap common: the limit on open files.
 *
 * The snapshot filter keeps every layer's data files open (one per
 * segment), so a disk with many snapshots needs many descriptors; the
 * usual soft limit of 1024 would cap it near a thousand snapshots while
 * the hard limit (often 500000 or more) allows far more.
 */
#ifndef NBDSNAP_FDLIMIT_H
#define NBDSNAP_FDLIMIT_H

#include <errno.h>
#include <stdbool.h>
#include <sys/resource.h>

/* What every message about running out of descriptors ends with. */
#define FDLIMIT_HINT "raise nbdkit's limit of open files (ulimit -n)"

/* Did a call fail because the process (or system) ran out of
 * descriptors?
 */
static inline bool
fdlimit_exhausted (int e)
{
  return e == EMFILE || e == ENFILE;
}

/* Raise the soft limit on open files (RLIMIT_NOFILE) to the hard limit,
 * as daemons that hold many files do.  Puts the limits before and after
 * in *before and *after (either may be NULL).  0 done (or nothing to do);
 * -1 and errno if the limit could not be read or set.
 */
int fdlimit_raise (rlim_t *before, rlim_t *after);

#endif /* NBDSNAP_FDLIMIT_H */
