/* nbdsnap common: the in-band export-name grammar. */
#include <config.h>

#include <stdio.h>
#include <string.h>

#include "exportname.h"

bool
name_valid (const char *s, char *why, size_t whylen)
{
  size_t i, n = strlen (s);

  if (n == 0) {
    snprintf (why, whylen, "name is empty");
    return false;
  }
  if (n > NAME_MAX_LEN) {
    snprintf (why, whylen, "name is longer than %d characters", NAME_MAX_LEN);
    return false;
  }
  for (i = 0; i < n; ++i) {
    unsigned char c = s[i];
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) {
      if (c >= 0x21 && c < 0x7f)
        snprintf (why, whylen,
                  "name contains '%c' (allowed: A-Z a-z 0-9 . _ -)", c);
      else
        snprintf (why, whylen,
                  "name contains byte 0x%02x (allowed: A-Z a-z 0-9 . _ -)", c);
      return false;
    }
  }
  if (strstr (s, "..") != NULL || strcmp (s, ".") == 0) {
    snprintf (why, whylen, "name must not be '.' or contain '..'");
    return false;
  }
  return true;
}

/* Copy the segment [p, p+n) into dst (NAME_MAX_LEN+1), failing if long. */
static bool
copy_seg (char *dst, const char *p, size_t n)
{
  if (n > NAME_MAX_LEN)
    return false;
  memcpy (dst, p, n);
  dst[n] = '\0';
  return true;
}

enum export_kind
export_name_parse (const char *name, const char *filter,
                   struct export_name *out, char *why, size_t whylen)
{
  size_t flen = strlen (filter);
  const char *p;

  memset (out, 0, sizeof *out);
  why[0] = '\0';
  if (name[0] != '@')
    return out->kind = EXPORT_LIVE;

  if (strncmp (name + 1, filter, flen) != 0 ||
      (name[1 + flen] != '/' && name[1 + flen] != ':'))
    return out->kind = EXPORT_OTHER;

  p = name + 1 + flen;
  if (*p == '/') {                      /* view: @FILTER/NAME */
    p++;
    if (strchr (p, '/') != NULL) {
      snprintf (why, whylen, "'%s': a view is @%s/NAME (one name)",
                name, filter);
      return out->kind = EXPORT_BAD;
    }
    if (!copy_seg (out->args[0], p, strlen (p))) {
      snprintf (why, whylen, "'%s': name is longer than %d characters",
                name, NAME_MAX_LEN);
      return out->kind = EXPORT_BAD;
    }
    out->nargs = 1;
    return out->kind = EXPORT_VIEW;
  }

  /* verb: @FILTER:VERB[/ARG]... */
  p++;
  {
    const char *e = strchr (p, '/');
    size_t n = e ? (size_t) (e - p) : strlen (p);
    if (n == 0 || !copy_seg (out->verb, p, n)) {
      snprintf (why, whylen, "'%s': missing or overlong command after ':'",
                name);
      return out->kind = EXPORT_BAD;
    }
    p = e;
  }
  while (p != NULL) {
    const char *e;
    size_t n;

    p++;                                /* skip '/' */
    e = strchr (p, '/');
    n = e ? (size_t) (e - p) : strlen (p);
    if (out->nargs >= EXPORT_MAX_ARGS) {
      snprintf (why, whylen, "'%s': too many arguments", name);
      return out->kind = EXPORT_BAD;
    }
    if (!copy_seg (out->args[out->nargs], p, n)) {
      snprintf (why, whylen, "'%s': argument longer than %d characters",
                name, NAME_MAX_LEN);
      return out->kind = EXPORT_BAD;
    }
    out->nargs++;
    p = e;
  }
  return out->kind = EXPORT_VERB;
}
