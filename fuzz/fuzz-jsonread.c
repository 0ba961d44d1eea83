/* libFuzzer harness: the tool reading a command result sent by a server
 * (tools/jsonread.c, json-c): anything a hostile or broken server sends
 * is refused or read safely.  Every accessor is tried on the result.
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "nbdsnap.h"

int LLVMFuzzerTestOneInput (const unsigned char *data, size_t size);

int
LLVMFuzzerTestOneInput (const unsigned char *data, size_t size)
{
  static const char *const keys[] = {
    "ok", "error", "errno", "filter", "command", "snapshots", "checkpoints",
    "points", "point", "name", "bytes", "created", "consistent",
  };
  char *text = malloc (size + 1), err[512];
  struct result res;
  size_t i, k;

  if (text == NULL)
    return 0;
  memcpy (text, data, size);
  text[size] = '\0';
  if (result_parse (text, size, &res, err, sizeof err) == 0) {
    char buf[512];
    result_error (res.root, buf, sizeof buf);
    for (k = 0; k < sizeof keys / sizeof keys[0]; ++k) {
      bool b;
      uint64_t n;
      size_t len = jlen (res.root, keys[k]);
      jstr (res.root, keys[k]);
      jbool (res.root, keys[k], &b);
      jnum (res.root, keys[k], &n);
      jget (res.root, keys[k]);
      for (i = 0; i < len && i < 64; ++i) {
        struct json_object *e = jat (res.root, keys[k], i);
        if (e) {
          jstr (e, "name");
          jnum (e, "bytes", &n);
          jbool (e, "consistent", &b);
        }
      }
    }
    result_free (&res);         /* frees text: the result owns it */
    return 0;
  }
  if (err[0] == '\0')
    abort ();
  free (text);
  return 0;
}
