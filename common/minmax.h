/* nbdsnap common: minimum and maximum of 64-bit sizes. */
#ifndef NBDSNAP_MINMAX_H
#define NBDSNAP_MINMAX_H

#include <stdint.h>

static inline uint64_t
min64 (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

static inline uint64_t
max64 (uint64_t a, uint64_t b)
{
  return a > b ? a : b;
}

#endif /* NBDSNAP_MINMAX_H */
