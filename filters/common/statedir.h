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

/* Create dir if missing (mode 0700: the files in it describe disk
 * contents), open it, take its lock file (flock, held while nbdkit
 * runs: one nbdkit per directory) and check that files can be created,
 * renamed and removed in it.  param names the parameter in messages
 * ("snapshot-dir").  0 with *dirfd and *lockfd open, or -1 after
 * nbdkit_error.
 */
int statedir_open_locked (const char *param, const char *dir, int *dirfd,
                          int *lockfd)
  __attribute__ ((nonnull (1, 2, 3, 4)));

/* A directory stream over dirfd's directory, opened anew: its read
 * position is its own (a dup() would share dirfd's, so a second scan
 * of the same directory would find nothing).  closedir leaves dirfd
 * open.  NULL and errno on error.
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
