/* nbdsnap filters: a filter's state directory. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "statedir.h"
#include "statefile.h"

int
statedir_open_locked (const char *param, const char *dir, int *dirfd,
                      int *lockfd)
{
  *dirfd = *lockfd = -1;
  if (mkdir (dir, 0700) == -1 && errno != EEXIST) {
    nbdkit_error ("%s %s: cannot create it: %m", param, dir);
    return -1;
  }
  *dirfd = open (dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (*dirfd == -1) {
    nbdkit_error ("%s %s: %m", param, dir);
    return -1;
  }
  *lockfd = openat (*dirfd, "lock", O_RDWR|O_CREAT|O_NOFOLLOW|O_CLOEXEC,
                    0600);
  if (*lockfd == -1) {
    nbdkit_error ("%s %s: not writable (%m): nbdkit needs to write its "
                  "state there; fix the permissions or the mount", param,
                  dir);
    return -1;
  }
  if (flock (*lockfd, LOCK_EX|LOCK_NB) == -1) {
    nbdkit_error ("%s %s: in use by another nbdkit process (its lock file "
                  "is held); stop it first or use another directory", param,
                  dir);
    return -1;
  }
  if (dir_check_writable (*dirfd) == -1) {
    nbdkit_error ("%s %s: not writable (%m): nbdkit needs to create, "
                  "rename and remove files there; fix the permissions, the "
                  "mount or the immutable attribute", param, dir);
    return -1;
  }
  return 0;
}

DIR *
statedir_open (int dirfd)
{
  int fd = openat (dirfd, ".", O_RDONLY|O_DIRECTORY|O_CLOEXEC), saved;
  DIR *d;

  if (fd == -1)
    return NULL;
  d = fdopendir (fd);
  if (d == NULL) {
    saved = errno;
    close (fd);
    errno = saved;
  }
  return d;
}

static bool
ends_with (const char *s, const char *end)
{
  size_t n = strlen (s), m = strlen (end);

  return n >= m && strcmp (s + n - m, end) == 0;
}

void
statedir_remove_strays (int dirfd, const char *state_name, const char *prefix,
                        const char *const *suffixes,
                        bool (*known) (uint64_t id), const char *filter)
{
  size_t slen = strlen (state_name), plen = strlen (prefix);
  DIR *d = statedir_open (dirfd);
  struct dirent *e;

  if (d == NULL)
    return;
  while ((e = readdir (d)) != NULL) {
    const char *const *s;
    uint64_t id;
    char rest[16];

    if (strncmp (e->d_name, state_name, slen) == 0 &&
        strcmp (e->d_name + slen, ".tmp") == 0) {
      unlinkat (dirfd, e->d_name, 0);
      continue;
    }
    if (strncmp (e->d_name, prefix, plen) != 0 ||
        sscanf (e->d_name + plen, "%" SCNu64 ".%15s", &id, rest) != 2)
      continue;
    for (s = suffixes; *s && strcmp (rest, *s) != 0; ++s)
      ;
    if (*s == NULL)
      continue;                 /* not a name we write: leave it */
    if (!known (id) || ends_with (rest, ".tmp")) {
      nbdkit_debug ("%s: removing stray %s", filter, e->d_name);
      unlinkat (dirfd, e->d_name, 0);
    }
  }
  closedir (d);
}
