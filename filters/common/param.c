/* nbdsnap filters: parsing filter parameters. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "param.h"
#include "policy.h"

int
param_size (const char *key, const char *value, uint64_t *out)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1) {
    nbdkit_error ("%s=%s: not a size (examples: 65536, 64K, 1M)",
                  key, value);
    return -1;
  }
  *out = r;
  return 0;
}

int
param_block_size (const char *key, const char *value, uint32_t *out)
{
  uint64_t r;

  if (param_size (key, value, &r) == -1)
    return -1;
  if (r < 4096 || r > 16 * 1024 * 1024 || (r & (r - 1)) != 0) {
    nbdkit_error ("%s=%s: must be a power of two from 4K to 16M", key,
                  value);
    return -1;
  }
  *out = r;
  return 0;
}

int
param_path (const char *value, const char **path)
{
  free ((char *) *path);
  *path = nbdkit_absolute_path (value);
  return *path ? 0 : -1;
}

int
param_policy (const char *key, const char *value, unsigned *policy)
{
  if (policy_parse (value, policy) == -1) {
    nbdkit_error ("%s=%s: expected none, any, unix, tls or unix,tls",
                  key, value);
    return -1;
  }
  return 0;
}

bool
param_unknown (const char *key, const char *filter, const char *known)
{
  size_t n = strlen (filter);

  if (strncmp (key, filter, n) != 0 || key[n] != '-')
    return false;
  nbdkit_error ("unknown parameter '%s' (the %s filter takes %s)", key,
                filter, known);
  return true;
}
