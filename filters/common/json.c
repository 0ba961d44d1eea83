/* nbdsnap filters: JSON writer. */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static void
reserve (struct jbuf *j, size_t n)
{
  char *np;
  size_t ncap;

  if (j->oom || j->len + n + 1 <= j->cap)
    return;
  ncap = j->cap ? j->cap : 256;
  while (ncap < j->len + n + 1)
    ncap *= 2;
  np = realloc (j->p, ncap);
  if (np == NULL) {
    j->oom = true;
    return;
  }
  j->p = np;
  j->cap = ncap;
}

void
jb_printf (struct jbuf *j, const char *fmt, ...)
{
  va_list ap;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (NULL, 0, fmt, ap);
  va_end (ap);
  if (n < 0) { j->oom = true; return; }
  reserve (j, n);
  if (j->oom) return;
  va_start (ap, fmt);
  vsnprintf (j->p + j->len, n + 1, fmt, ap);
  va_end (ap);
  j->len += n;
}

void
jb_str (struct jbuf *j, const char *s)
{
  if (s == NULL) {
    jb_printf (j, "null");
    return;
  }
  jb_printf (j, "\"");
  for (; *s; ++s) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      jb_printf (j, "\\%c", c);
    else if (c < 0x20)
      jb_printf (j, "\\u%04x", c);
    else
      jb_printf (j, "%c", c);
  }
  jb_printf (j, "\"");
}

void
jb_key (struct jbuf *j, const char *key, bool first)
{
  if (!first)
    jb_printf (j, ",");
  jb_str (j, key);
  jb_printf (j, ":");
}

void
jb_time (struct jbuf *j, time_t t)
{
  struct tm tm;
  char buf[32];

  gmtime_r (&t, &tm);
  strftime (buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  jb_str (j, buf);
}

void
jb_free (struct jbuf *j)
{
  free (j->p);
  j->p = NULL;
  j->len = j->cap = 0;
}
