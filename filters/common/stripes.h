/* nbdsnap filters: lock stripes over blocks.
 *
 * A fixed array of mutexes; block b is guarded by stripe b % NSTRIPES.
 * Two requests on the same block always take the same mutex, requests
 * on different blocks rarely do, and the memory does not grow with the
 * disk.
 */
#ifndef NBDSNAP_STRIPES_H
#define NBDSNAP_STRIPES_H

#include <pthread.h>
#include <stdint.h>

#define NSTRIPES 1024

struct stripes {
  pthread_mutex_t m[NSTRIPES];
};

static inline void
stripes_init (struct stripes *s)
{
  for (unsigned i = 0; i < NSTRIPES; ++i)
    pthread_mutex_init (&s->m[i], NULL);
}

/* The mutex guarding block b. */
static inline pthread_mutex_t *
stripe_of (struct stripes *s, uint64_t b)
{
  return &s->m[b % NSTRIPES];
}

#endif /* NBDSNAP_STRIPES_H */
