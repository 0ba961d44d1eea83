/* nbdsnap filters: which nbdsnap filters are below this one (stack.h). */
#include <config.h>

#include <string.h>

#include <nbdkit-filter.h>

#include "stack.h"

/* Exported on purpose (every other symbol of a filter is hidden): all
 * loaded nbdsnap filters share the first definition.
 */
__attribute__ ((visibility ("default")))
unsigned nbdsnap_filters_ready;

unsigned
stack_get_ready (unsigned me)
{
  return __atomic_fetch_or (&nbdsnap_filters_ready, me, __ATOMIC_ACQ_REL)
    & ~me;
}

int
stack_check_pass (unsigned below, const char *exportname, const char *filter)
{
  static const struct { const char *name; unsigned bit; } known[] = {
    { "snapshot", STACK_SNAPSHOT }, { "cbt", STACK_CBT },
    { "freeze", STACK_FREEZE },
  };
  size_t n = strcspn (exportname + 1, ":/"), i;

  for (i = 0; i < sizeof known / sizeof known[0]; ++i)
    if (strlen (known[i].name) == n &&
        strncmp (exportname + 1, known[i].name, n) == 0 &&
        (below & known[i].bit))
      return 0;
  nbdkit_error ("%s: no filter below the %s filter understands the export "
                "name '%s' (is the filter it names loaded, and below this "
                "one?)", filter, filter, exportname);
  return -1;
}
