/* nbdsnap filters: a filter's state directory.
 *
 * Uses nbdkit_debug, so only the filters link it (statefile.c, which the
 * tools share, stays free of nbdkit calls).
 */
#ifndef NBDSNAP_STATEDIR_H
#define NBDSNAP_STATEDIR_H

#include <stdbool.h>
#include <stdint.h>
#include <dirent.h>

/* A directory stream over a duplicate of dirfd (closedir leaves dirfd
 * open).  NULL and errno on error.
 */
DIR *statedir_open (int dirfd);

/* Remove the files no committed state refers to, which a crash can leave
 * behind: STATE.tmp (state_name's half-written replacement), and files
 * PREFIXID.SUFFIX, for SUFFIX one of suffixes (NULL-terminated), whose
 * id is not known or whose SUFFIX ends in ".tmp".  Other names are not
 * ours and are left alone.  filter names the filter in debug messages.
 */
void statedir_remove_strays (int dirfd, const char *state_name,
                             const char *prefix,
                             const char *const *suffixes,
                             bool (*known) (uint64_t id),
                             const char *filter)
  __attribute__ ((nonnull (2, 3, 4, 5, 6)));

#endif /* NBDSNAP_STATEDIR_H */
