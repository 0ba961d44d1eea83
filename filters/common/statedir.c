/* nbdsnap filters: a filter's state directory. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "statedir.h"

DIR *
statedir_open (int dirfd)
{
  int fd = dup (dirfd), saved;
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
