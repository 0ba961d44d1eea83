/* nbdsnap filters: a quiesce gate.
 *
 * Every request passes through the gate (gate_enter/gate_leave, two
 * atomic operations on the fast path, no lock).  A command that must act
 * at one instant calls gate_hold: new requests wait, requests in flight
 * drain, then the command runs alone until gate_release.
 */
#ifndef NBDSNAP_GATE_H
#define NBDSNAP_GATE_H

#include <pthread.h>

struct gate {
  unsigned inflight;            /* atomic */
  int held;                     /* atomic */
  pthread_mutex_t lock;         /* protects the slow path and cond */
  pthread_cond_t cond;
  pthread_mutex_t holder;       /* serializes holders */
};

#define GATE_INIT { 0, 0, PTHREAD_MUTEX_INITIALIZER, \
                    PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER }

/* Enter before a request; waits while the gate is held. */
void gate_enter (struct gate *g) __attribute__ ((nonnull (1)));
/* Leave after the request. */
void gate_leave (struct gate *g) __attribute__ ((nonnull (1)));
/* Hold new requests and wait until none is in flight. */
void gate_hold (struct gate *g) __attribute__ ((nonnull (1)));
/* Let requests flow again. */
void gate_release (struct gate *g) __attribute__ ((nonnull (1)));

#endif /* NBDSNAP_GATE_H */
