/* nbdsnap filters: parsing filter parameters. */
#ifndef NBDSNAP_PARAM_H
#define NBDSNAP_PARAM_H

#include <stdbool.h>
#include <stdint.h>

/* Parse key=value as a power-of-two size in [4K, 16M] (block sizes and
 * granularities).  -1 after an nbdkit_error that names the parameter.
 */
int param_block_size (const char *key, const char *value, uint32_t *out)
  __attribute__ ((nonnull (1, 2, 3)));

/* Parse key=value as any size.  -1 after an nbdkit_error naming it. */
int param_size (const char *key, const char *value, uint64_t *out)
  __attribute__ ((nonnull (1, 2, 3)));

/* FILTER-dir=DIR: replace *path with the absolute form of value.  -1
 * after nbdkit_error.
 */
int param_path (const char *value, const char **path)
  __attribute__ ((nonnull (1, 2)));

/* FILTER-commands=WHO (see policy_parse).  -1 after an nbdkit_error
 * naming the parameter.
 */
int param_policy (const char *key, const char *value, unsigned *policy)
  __attribute__ ((nonnull (1, 2, 3)));

/* Is key a parameter of the filter (FILTER-...) that it does not know?
 * If so, true after an nbdkit_error listing known, those it takes.
 */
bool param_unknown (const char *key, const char *filter, const char *known)
  __attribute__ ((nonnull (1, 2, 3)));

#endif /* NBDSNAP_PARAM_H */
