/* nbdsnap common: the limit on open files (see fdlimit.h). */
#include <config.h>

#include <errno.h>
#include <sys/resource.h>

#include "fdlimit.h"

int
fdlimit_raise (rlim_t *before, rlim_t *after)
{
  struct rlimit rl;

  if (getrlimit (RLIMIT_NOFILE, &rl) == -1)
    return -1;
  if (before)
    *before = rl.rlim_cur;
  if (rl.rlim_cur != rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit (RLIMIT_NOFILE, &rl) == -1)
      return -1;
  }
  if (after)
    *after = rl.rlim_cur;
  return 0;
}
