/* nbdsnap tool: messages on stderr, errors with their exit code, and the
 * JSON string literals of the tool's own --json output.
 */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <json-c/json.h>

#include "nbdsnap.h"

/* Print "nbdsnap: MESSAGE" on stderr. */
static void
vmsg (const char *fmt, va_list ap)
{
  char buf[4 * ERRLEN];

  vsnprintf (buf, sizeof buf, fmt, ap);
  fprintf (stderr, "nbdsnap: %s\n", buf);
}

/* A message on stderr. */
void
msg (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vmsg (fmt, ap);
  va_end (ap);
}

/* A message on stderr with -v only. */
void
verbose (const char *fmt, ...)
{
  va_list ap;
  if (!opt_verbose)
    return;
  va_start (ap, fmt);
  vmsg (fmt, ap);
  va_end (ap);
}

/* With --json: the failure document {"ok":false,"exit":N,"error":...}. */
static void
json_failure (int code, const char *error)
{
  if (opt_json) {
    printf ("{\"ok\":false,\"exit\":%d,\"error\":", code);
    json_str (stdout, error);
    printf ("}\n");
  }
}

/* Bad usage: the message and a hint, exit 2. */
void
usage_error (const char *fmt, ...)
{
  va_list ap;
  char buf[ERRLEN];

  va_start (ap, fmt);
  vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  fprintf (stderr, "nbdsnap: %s\n"
           "Try 'nbdsnap --help' or 'man nbdsnap' for more information.\n",
           buf);
  json_failure (EXIT_USAGE, buf);
  exit (EXIT_USAGE);
}

/* An error: print it, return code for the caller to exit with. */
int
fail (int code, const char *fmt, ...)
{
  va_list ap;
  char buf[4 * ERRLEN];

  va_start (ap, fmt);
  vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  fprintf (stderr, "nbdsnap: %s\n", buf);
  json_failure (code, buf);
  return code;
}

/* s as a JSON string literal, escaped by json-c (the same library that
 * reads the server's results), or null.
 */
void
json_str (FILE *fp, const char *s)
{
  struct json_object *o;

  if (s == NULL || (o = json_object_new_string (s)) == NULL) {
    fputs ("null", fp);
    return;
  }
  fputs (json_object_to_json_string_ext (o, JSON_C_TO_STRING_NOSLASHESCAPE),
         fp);
  json_object_put (o);
}
