/* nbdsnap common: locks released when the scope that took them ends.
 *
 * In the style of nbdkit's ACQUIRE_LOCK_FOR_CURRENT_SCOPE: an error path
 * can simply return, and no path can forget an unlock.
 *
 *   {
 *     ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);
 *     if (bad)
 *       return -1;          // unlocked here
 *     ...
 *   }                       // and here
 *
 * Locks taken this way are released in the reverse order of taking.
 */
#ifndef NBDSNAP_LOCKSCOPE_H
#define NBDSNAP_LOCKSCOPE_H

#include <pthread.h>

#define LOCKSCOPE_CAT2(a, b) a##b
#define LOCKSCOPE_CAT(a, b) LOCKSCOPE_CAT2 (a, b)
#define LOCKSCOPE_NAME(base) LOCKSCOPE_CAT (base, __COUNTER__)

static inline void
lockscope_unlock_mutex (pthread_mutex_t **m)
{
  if (*m)
    pthread_mutex_unlock (*m);
}

static inline void
lockscope_unlock_rwlock (pthread_rwlock_t **l)
{
  if (*l)
    pthread_rwlock_unlock (*l);
}

static inline pthread_mutex_t *
lockscope_lock_mutex (pthread_mutex_t *m)
{
  pthread_mutex_lock (m);
  return m;
}

static inline pthread_rwlock_t *
lockscope_rdlock (pthread_rwlock_t *l)
{
  pthread_rwlock_rdlock (l);
  return l;
}

static inline pthread_rwlock_t *
lockscope_wrlock (pthread_rwlock_t *l)
{
  pthread_rwlock_wrlock (l);
  return l;
}

#define LOCKSCOPE_MUTEX(name, m)                                        \
  __attribute__ ((cleanup (lockscope_unlock_mutex), unused))            \
  pthread_mutex_t *name = lockscope_lock_mutex (m)

#define LOCKSCOPE_RWLOCK(name, l, how)                                  \
  __attribute__ ((cleanup (lockscope_unlock_rwlock), unused))           \
  pthread_rwlock_t *name = lockscope_##how (l)

/* Lock the mutex m until the end of the current scope. */
#define ACQUIRE_LOCK_FOR_CURRENT_SCOPE(m)                               \
  LOCKSCOPE_MUTEX (LOCKSCOPE_NAME (lockscope_m_), (m))

/* Read-lock / write-lock the rwlock l until the end of the scope. */
#define ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE(l)                             \
  LOCKSCOPE_RWLOCK (LOCKSCOPE_NAME (lockscope_r_), (l), rdlock)
#define ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE(l)                             \
  LOCKSCOPE_RWLOCK (LOCKSCOPE_NAME (lockscope_w_), (l), wrlock)

#endif /* NBDSNAP_LOCKSCOPE_H */
