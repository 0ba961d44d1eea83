/* nbdsnap common: text state files (see kvtext.h). */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvtext.h"

int
kv_sha_line (const char *body, size_t len, char *line)
{
  uint8_t sum[SHA256_LEN];

  if (sha256_buf (body, len, sum) == -1)
    return -1;
  memcpy (line, "sha256 ", 7);
  hex_encode (sum, SHA256_LEN, line + 7);
  line[KV_SHA_LINE_LEN - 1] = '\n';
  line[KV_SHA_LINE_LEN] = '\0';
  return 0;
}

int
kv_write_file (int dirfd, const char *name, const char *body, size_t len)
{
  char *buf = malloc (len + KV_SHA_LINE_LEN + 1);
  int r, e;

  if (buf == NULL)
    return -1;
  memcpy (buf, body, len);
  if (kv_sha_line (body, len, buf + len) == -1) {
    free (buf);
    errno = EIO;
    return -1;
  }
  r = statefile_write (dirfd, name, buf, len + KV_SHA_LINE_LEN);
  e = errno;
  free (buf);
  errno = e;
  return r;
}

int
kv_begin (struct kv_reader *kv, char *text, size_t len, const char *magic,
          char *why, size_t whylen)
{
  uint8_t want[SHA256_LEN], got[SHA256_LEN];
  char *sumline, *nl;
  size_t mlen = strlen (magic);

  kv->p = kv->end = text;
  kv->line = 0;
  if (len < KV_SHA_LINE_LEN || text[len - 1] != '\n') {
    snprintf (why, whylen, "truncated (it does not end with a checksum "
              "line)");
    return -1;
  }
  sumline = text + len - KV_SHA_LINE_LEN;
  if ((sumline > text && sumline[-1] != '\n') ||
      memcmp (sumline, "sha256 ", 7) != 0 ||
      hex_decode (sumline + 7, want, SHA256_LEN) == -1) {
    snprintf (why, whylen, "not an nbdsnap state file, or truncated (no "
              "checksum line)");
    return -1;
  }
  if (sha256_buf (text, sumline - text, got) == -1 ||
      memcmp (want, got, SHA256_LEN) != 0) {
    snprintf (why, whylen, "checksum mismatch: the file is corrupt");
    return -1;
  }
  nl = memchr (text, '\n', sumline - text);
  if (nl == NULL || (size_t) (nl - text) != mlen ||
      memcmp (text, magic, mlen) != 0) {
    snprintf (why, whylen, "it does not start with '%s'", magic);
    return -1;
  }
  *nl = '\0';
  kv->p = nl + 1;
  kv->end = sumline;
  kv->line = 1;
  return 0;
}

static bool
key_char (char c)
{
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

int
kv_next (struct kv_reader *kv, char **key, char **value,
         char *why, size_t whylen)
{
  char *line = kv->p, *nl, *sp, *q;

  if (kv->p >= kv->end)
    return 0;
  nl = memchr (line, '\n', kv->end - line);
  if (nl == NULL) {             /* cannot happen: the body ends in LF */
    snprintf (why, whylen, "line %u: no end of line", kv->line + 1);
    return -1;
  }
  *nl = '\0';
  kv->p = nl + 1;
  kv->line++;
  for (sp = line; key_char (*sp); ++sp)
    ;
  if (sp == line || *sp != ' ' || sp[1] == '\0') {
    snprintf (why, whylen, "line %u is not 'key value'", kv->line);
    return -1;
  }
  *sp = '\0';
  for (q = sp + 1; *q; ++q) {
    unsigned char c = *q;
    if (c == ' ' ? (q[-1] == ' ' || q[1] == '\0') : (c < 0x21 || c > 0x7e)) {
      snprintf (why, whylen, "line %u ('%s ...'): stray space or "
                "character 0x%02x", kv->line, line, c);
      return -1;
    }
  }
  if (sp[1] == ' ') {
    snprintf (why, whylen, "line %u ('%s ...'): stray space", kv->line,
              line);
    return -1;
  }
  *key = line;
  *value = sp + 1;
  return 1;
}

char *
kv_expect (struct kv_reader *kv, const char *key, char *why, size_t whylen)
{
  char *k, *v;
  int r = kv_next (kv, &k, &v, why, whylen);

  if (r == -1)
    return NULL;
  if (r == 0) {
    snprintf (why, whylen, "the '%s' line is missing", key);
    return NULL;
  }
  if (strcmp (k, key) != 0) {
    snprintf (why, whylen, "line %u: expected '%s', found '%s'", kv->line,
              key, k);
    return NULL;
  }
  return v;
}

int
kv_u64 (const char *s, uint64_t *out)
{
  uint64_t v = 0;

  if (*s == '\0' || (s[0] == '0' && s[1] != '\0'))
    return -1;
  for (; *s; ++s) {
    if (*s < '0' || *s > '9')
      return -1;
    if (v > (UINT64_MAX - (uint64_t) (*s - '0')) / 10)
      return -1;
    v = v * 10 + (*s - '0');
  }
  *out = v;
  return 0;
}

int
kv_u32 (const char *s, uint32_t *out)
{
  uint64_t v;

  if (kv_u64 (s, &v) == -1 || v > UINT32_MAX)
    return -1;
  *out = v;
  return 0;
}

int
kv_i64 (const char *s, int64_t *out)
{
  uint64_t v;

  if (*s == '-') {
    if (kv_u64 (s + 1, &v) == -1 || v == 0 || v > (uint64_t) INT64_MAX + 1)
      return -1;
    *out = v == (uint64_t) INT64_MAX + 1 ? INT64_MIN : -(int64_t) v;
    return 0;
  }
  if (kv_u64 (s, &v) == -1 || v > INT64_MAX)
    return -1;
  *out = v;
  return 0;
}

int
kv_split (char *value, char **fields, size_t n)
{
  size_t i = 0;
  char *p = value;

  for (;;) {
    char *sp = strchr (p, ' ');
    if (i == n)
      return -1;
    fields[i++] = p;
    if (sp == NULL)
      break;
    *sp = '\0';
    p = sp + 1;
  }
  return i == n ? 0 : -1;
}
