/* nbdsnap common: text state files.
 *
 * Every text file nbdsnap keeps (the snapshot and cbt filters' state,
 * the repository file and each restore point's manifest) has one shape:
 *
 *   MAGIC LF
 *   KEY SP VALUE LF          any number of lines
 *   "sha256" SP HEX LF       SHA-256 of every byte before this line
 *
 * KEY is one or more of [a-z0-9-]; VALUE is one or more printable ASCII
 * characters (0x21-0x7e) and single spaces between them.  Nothing else
 * is accepted: no empty line, no tab, no second space, no trailing
 * space, no NUL.  Numbers are decimal, without sign, leading zero or
 * overflow.  The same rules hold for every file, so a file that one
 * reader accepts means the same thing to a person reading it.
 */
#ifndef NBDSNAP_KVTEXT_H
#define NBDSNAP_KVTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "statefile.h"

/* Length of the "sha256 HEX\n" line. */
#define KV_SHA_LINE_LEN (7 + 2 * SHA256_LEN + 1)

struct kv_reader {
  char *p, *end;                /* the unread part of the body */
  unsigned line;                /* number of the last line read (1: magic) */
};

/* Start reading text (len bytes, changed in place: each line read is
 * NUL-terminated).  Checks the final sha256 line and that the first
 * line is magic.  0, or -1 with a reason in why.
 */
int kv_begin (struct kv_reader *kv, char *text, size_t len,
              const char *magic, char *why, size_t whylen)
  __attribute__ ((nonnull (1, 2, 4, 5)));

/* The next line: 1 with *key and *value pointing into the text, 0 at
 * the end, -1 with a reason in why if the line breaks the rules.
 */
int kv_next (struct kv_reader *kv, char **key, char **value,
             char *why, size_t whylen)
  __attribute__ ((nonnull (1, 2, 3, 4)));

/* The next line must have key: its value, or NULL with a reason. */
char *kv_expect (struct kv_reader *kv, const char *key,
                 char *why, size_t whylen)
  __attribute__ ((nonnull (1, 2, 3)));

/* Is the whole body read? */
static inline bool
kv_at_end (const struct kv_reader *kv)
{
  return kv->p >= kv->end;
}

/* Strict numbers.  0, or -1 if s is not one (or out of range). */
int kv_u64 (const char *s, uint64_t *out) __attribute__ ((nonnull (1, 2)));
int kv_u32 (const char *s, uint32_t *out) __attribute__ ((nonnull (1, 2)));
/* As kv_u64 with an optional '-' (not "-0"). */
int kv_i64 (const char *s, int64_t *out) __attribute__ ((nonnull (1, 2)));

/* Split value (changed in place) into exactly n fields separated by
 * single spaces.  0, or -1 if it has another number of fields.
 */
int kv_split (char *value, char **fields, size_t n)
  __attribute__ ((nonnull (1, 2)));

/* Append the "sha256 HEX\n" line of body[0..len) to line (room for
 * KV_SHA_LINE_LEN + 1 bytes, NUL-terminated).  -1 if hashing failed.
 */
int kv_sha_line (const char *body, size_t len, char *line)
  __attribute__ ((nonnull (1, 3)));

/* Atomically replace dir/name (statefile_write) with body followed by
 * its sha256 line.  0, -1 or -2 as statefile_write (errno set).
 */
int kv_write_file (int dirfd, const char *name, const char *body,
                   size_t len)
  __attribute__ ((nonnull (2, 3)));

#endif /* NBDSNAP_KVTEXT_H */
