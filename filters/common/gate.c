/* nbdsnap filters: a quiesce gate (see gate.h). */
#include <config.h>

#include "gate.h"

void
gate_enter (struct gate *g)
{
  __atomic_add_fetch (&g->inflight, 1, __ATOMIC_SEQ_CST);
  if (!__atomic_load_n (&g->held, __ATOMIC_SEQ_CST))
    return;

  /* Slow path: back out, wait for the holder to finish, retry. */
  pthread_mutex_lock (&g->lock);
  for (;;) {
    __atomic_sub_fetch (&g->inflight, 1, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast (&g->cond);
    while (__atomic_load_n (&g->held, __ATOMIC_SEQ_CST))
      pthread_cond_wait (&g->cond, &g->lock);
    __atomic_add_fetch (&g->inflight, 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n (&g->held, __ATOMIC_SEQ_CST))
      break;
  }
  pthread_mutex_unlock (&g->lock);
}

void
gate_leave (struct gate *g)
{
  __atomic_sub_fetch (&g->inflight, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n (&g->held, __ATOMIC_SEQ_CST)) {
    pthread_mutex_lock (&g->lock);
    pthread_cond_broadcast (&g->cond);
    pthread_mutex_unlock (&g->lock);
  }
}

void
gate_hold (struct gate *g)
{
  pthread_mutex_lock (&g->holder);
  pthread_mutex_lock (&g->lock);
  __atomic_store_n (&g->held, 1, __ATOMIC_SEQ_CST);
  while (__atomic_load_n (&g->inflight, __ATOMIC_SEQ_CST) > 0)
    pthread_cond_wait (&g->cond, &g->lock);
  pthread_mutex_unlock (&g->lock);
}

void
gate_release (struct gate *g)
{
  pthread_mutex_lock (&g->lock);
  __atomic_store_n (&g->held, 0, __ATOMIC_SEQ_CST);
  pthread_cond_broadcast (&g->cond);
  pthread_mutex_unlock (&g->lock);
  pthread_mutex_unlock (&g->holder);
}
