/* nbdsnap common: parsing filter parameters. */
#ifndef NBDSNAP_PARAM_H
#define NBDSNAP_PARAM_H

#include <stdint.h>

/* Parse key=value as a power-of-two size in [4K, 16M] (block sizes and
 * granularities).  -1 after an nbdkit_error that names the parameter.
 */
int param_block_size (const char *key, const char *value, uint32_t *out)
  __attribute__ ((nonnull (1, 2, 3)));

/* Parse key=value as any size.  -1 after an nbdkit_error naming it. */
int param_size (const char *key, const char *value, uint64_t *out)
  __attribute__ ((nonnull (1, 2, 3)));

#endif /* NBDSNAP_PARAM_H */
