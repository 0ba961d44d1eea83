/* nbdsnap filters: JSON writer. */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
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

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if the bytes
 * there are not one (overlong forms, surrogates and values past
 * U+10FFFF included).
 */
static size_t
utf8_len (const unsigned char *s)
{
  unsigned c = s[0];
  size_t n, i;
  uint32_t v;

  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) { n = 2; v = c & 0x1f; }
  else if (c >= 0xe0 && c <= 0xef) { n = 3; v = c & 0x0f; }
  else if (c >= 0xf0 && c <= 0xf4) { n = 4; v = c & 0x07; }
  else return 0;
  for (i = 1; i < n; ++i) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    v = (v << 6) | (s[i] & 0x3f);
  }
  if ((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10ffff)) ||
      (v >= 0xd800 && v <= 0xdfff))
    return 0;
  return n;
}

void
jb_str (struct jbuf *j, const char *s)
{
  const unsigned char *p = (const unsigned char *) s;

  if (s == NULL) {
    jb_printf (j, "null");
    return;
  }
  jb_printf (j, "\"");
  while (*p) {
    size_t n = utf8_len (p);
    if (*p == '"' || *p == '\\')
      jb_printf (j, "\\%c", *p);
    else if (*p < 0x20 || *p == 0x7f)
      jb_printf (j, "\\u%04x", *p);
    else if (n == 0) {
      /* Not UTF-8 (a file name in an error, say): U+FFFD keeps the
       * document valid JSON.
       */
      jb_printf (j, "\\ufffd");
      n = 1;
    }
    else
      jb_printf (j, "%.*s", (int) n, (const char *) p);
    p += n ? n : 1;
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
