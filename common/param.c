/* nbdsnap common: parsing filter parameters. */
#include <config.h>

#include <nbdkit-filter.h>

#include "param.h"

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
