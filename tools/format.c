/* nbdsnap tool: human-readable sizes and times, and the clock. */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <time.h>

#include "nbdsnap.h"

/* n bytes as "123", "4.5K", "16M", ... */
const char *
human_size (uint64_t n, char *buf, size_t len)
{
  static const char units[] = "KMGTPE";
  double d = n;
  int u = -1;

  while (d >= 1024 && u < 5) {
    d /= 1024;
    u++;
  }
  if (u < 0)
    snprintf (buf, len, "%" PRIu64, n);
  else if (d < 10 && d != (int) d)
    snprintf (buf, len, "%.1f%c", d, units[u]);
  else
    snprintf (buf, len, "%.0f%c", d, units[u]);
  return buf;
}

/* t (seconds since the epoch) as "2024-01-31T12:00:00Z". */
const char *
rfc3339 (int64_t t, char *buf, size_t len)
{
  time_t tt = t;
  struct tm tm;

  if (gmtime_r (&tt, &tm) == NULL ||
      strftime (buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf (buf, len, "%" PRId64, t);
  return buf;
}

/* Seconds on the monotonic clock (for durations). */
double
now_seconds (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}
