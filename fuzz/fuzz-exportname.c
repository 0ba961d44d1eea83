/* libFuzzer harness: the in-band export-name grammar (common/exportname.c)
 * as each filter parses it, and the name rule on every argument.
 * Invariants checked: the parse never reads or writes out of bounds
 * (ASan), arguments are NUL-terminated and short, a valid name has only
 * the allowed characters.
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "exportname.h"

int LLVMFuzzerTestOneInput (const unsigned char *data, size_t size);

int
LLVMFuzzerTestOneInput (const unsigned char *data, size_t size)
{
  static const char *const filters[] = { "snapshot", "cbt", "freeze" };
  char *name = malloc (size + 1), why[256];
  struct export_name en;
  size_t f;
  int i;

  if (name == NULL)
    return 0;
  memcpy (name, data, size);
  name[size] = '\0';
  for (f = 0; f < 3; ++f) {
    enum export_kind k = export_name_parse (name, filters[f], &en, why,
                                            sizeof why);
    if (k != en.kind || en.nargs < 0 || en.nargs > EXPORT_MAX_ARGS)
      abort ();
    if (k == EXPORT_BAD && why[0] == '\0')
      abort ();
    for (i = 0; i < en.nargs; ++i) {
      if (strlen (en.args[i]) > NAME_MAX_LEN)
        abort ();
      if (name_valid (en.args[i], why, sizeof why) &&
          (strspn (en.args[i], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                   "qrstuvwxyz0123456789._-") != strlen (en.args[i]) ||
           strstr (en.args[i], "..")))
        abort ();
    }
  }
  free (name);
  return 0;
}
