/* nbdsnap filters: building small JSON result documents.
 *
 * Only a writer.  Reading JSON (the tool reading command results, the
 * freeze filter reading the cbt filter's answer) goes through json-c.
 */
#ifndef NBDSNAP_JSON_H
#define NBDSNAP_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct jbuf {
  char *p;
  size_t len, cap;
  bool oom;
};

/* Append formatted raw text (caller guarantees it is valid JSON). */
void jb_printf (struct jbuf *j, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3), nonnull (1, 2)));
/* Append s as a JSON string literal (escaped), or null if s is NULL. */
void jb_str (struct jbuf *j, const char *s) __attribute__ ((nonnull (1)));
/* Append "key": (with a leading comma unless first). */
void jb_key (struct jbuf *j, const char *key, bool first)
  __attribute__ ((nonnull (1, 2)));
/* Append t as an RFC 3339 UTC time string. */
void jb_time (struct jbuf *j, time_t t) __attribute__ ((nonnull (1)));
/* Free the buffer. */
void jb_free (struct jbuf *j) __attribute__ ((nonnull (1)));

#endif /* NBDSNAP_JSON_H */
