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

#include "lockscope.h"

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

/* gate_hold, returning g (for GATE_HOLD_FOR_CURRENT_SCOPE). */
static inline struct gate *
gate_hold_scope (struct gate *g)
{
  gate_hold (g);
  return g;
}

/* The cleanup of GATE_HOLD_FOR_CURRENT_SCOPE: gate_release. */
static inline void
gate_release_scope (struct gate **g)
{
  if (*g)
    gate_release (*g);
}

/* Hold the gate g until the end of the current scope.  As with the
 * locks of lockscope.h, what a scope takes is given back in the reverse
 * order of taking.
 */
#define GATE_HOLD_FOR_CURRENT_SCOPE(g)                                  \
  __attribute__ ((cleanup (gate_release_scope), unused))                \
  struct gate *LOCKSCOPE_NAME (gate_held_) = gate_hold_scope (g)

#endif /* NBDSNAP_GATE_H */
