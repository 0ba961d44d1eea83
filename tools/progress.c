/* nbdsnap tool: the progress bar of backup and restore (stderr): a
 * thread redraws it four times a second from a counter the workers add
 * to.
 */
#include <config.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "nbdsnap.h"

/* A progress bar; done is added to atomically. */
struct progress {
  bool enabled, stop;
  char what[32];
  uint64_t total, done;
  double start;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
};

/* One line: what [#####...] 42.0% done/total rate/s ETA (or time). */
static void
progress_draw (struct progress *p, bool final)
{
  uint64_t done = __atomic_load_n (&p->done, __ATOMIC_RELAXED);
  double el = now_seconds () - p->start, frac, rate;
  char a[32], b[32], c[32], eta[32] = "";
  int width = 24, fill, i;
  char bar[64];

  frac = p->total ? (double) done / p->total : 1.0;
  if (frac > 1.0)
    frac = 1.0;
  fill = (int) (frac * width);
  for (i = 0; i < width; ++i)
    bar[i] = i < fill ? '#' : '.';
  bar[width] = '\0';
  rate = el > 0 ? done / el : 0;
  if (!final && rate > 0 && p->total > done) {
    unsigned s = (unsigned) ((p->total - done) / rate);
    snprintf (eta, sizeof eta, " ETA %u:%02u", s / 60, s % 60);
  }
  else if (final)
    snprintf (eta, sizeof eta, " in %.1fs", el);
  fprintf (stderr, "\r%s [%s] %5.1f%% %s/%s %s/s%s   ", p->what, bar,
           frac * 100, human_size (done, a, sizeof a),
           human_size (p->total, b, sizeof b),
           human_size ((uint64_t) rate, c, sizeof c), eta);
  if (final)
    fputc ('\n', stderr);
  fflush (stderr);
}

/* Redraw every 250 ms until stopped. */
static void *
progress_thread (void *arg)
{
  struct progress *p = arg;
  struct timespec ts;

  pthread_mutex_lock (&p->lock);
  while (!p->stop) {
    progress_draw (p, false);
    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_nsec += 250 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait (&p->cond, &p->lock, &ts);
  }
  pthread_mutex_unlock (&p->lock);
  return NULL;
}

/* Start the bar (and its thread if enabled). */
struct progress *
progress_start (bool enabled, const char *what, uint64_t total)
{
  struct progress *p = calloc (1, sizeof *p);

  if (p == NULL)
    return NULL;
  p->enabled = enabled;
  snprintf (p->what, sizeof p->what, "%s", what);
  p->total = total;
  p->start = now_seconds ();
  pthread_mutex_init (&p->lock, NULL);
  pthread_cond_init (&p->cond, NULL);
  if (enabled && pthread_create (&p->thread, NULL, progress_thread, p) != 0)
    p->enabled = false;
  return p;
}

/* Count bytes done. */
void
progress_add (struct progress *p, uint64_t bytes)
{
  if (p)
    __atomic_fetch_add (&p->done, bytes, __ATOMIC_RELAXED);
}

/* Stop the thread, draw the final line, free. */
void
progress_stop (struct progress *p, bool ok)
{
  if (p == NULL)
    return;
  if (p->enabled) {
    pthread_mutex_lock (&p->lock);
    p->stop = true;
    pthread_cond_signal (&p->cond);
    pthread_mutex_unlock (&p->lock);
    pthread_join (p->thread, NULL);
    if (ok)
      progress_draw (p, true);
    else
      fputc ('\n', stderr);
  }
  pthread_mutex_destroy (&p->lock);
  pthread_cond_destroy (&p->cond);
  free (p);
}

/* The --progress option, or whether stderr is a terminal. */
bool
progress_wanted (int opt)
{
  if (opt >= 0)
    return opt;
  return isatty (STDERR_FILENO);
}

