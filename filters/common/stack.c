/* nbdsnap filters: which nbdsnap filters are below this one (stack.h). */
#include <config.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "stack.h"

static int self_ready;          /* this filter's .get_ready has run */

int
stack_self_ready (void)
{
  return __atomic_load_n (&self_ready, __ATOMIC_ACQUIRE);
}

static const struct { const char *name; unsigned bit; } known[] = {
  { "snapshot", STACK_SNAPSHOT }, { "cbt", STACK_CBT },
  { "freeze", STACK_FREEZE },
};
#define NKNOWN (sizeof known / sizeof known[0])

unsigned
stack_get_ready (unsigned me)
{
  unsigned below = 0;
  size_t i;

  for (i = 0; i < NKNOWN; ++i) {
    char sym[64];
    int (*ready) (void);

    if (known[i].bit == me)
      continue;
    snprintf (sym, sizeof sym, "nbdsnap_ready_%s", known[i].name);
    *(void **) &ready = dlsym (RTLD_DEFAULT, sym);
    if (ready && ready ())
      below |= known[i].bit;
  }
  __atomic_store_n (&self_ready, 1, __ATOMIC_RELEASE);
  return below;
}

int
stack_check_pass (unsigned below, const char *exportname, const char *filter)
{
  size_t n = strcspn (exportname + 1, ":/"), i;

  for (i = 0; i < NKNOWN; ++i)
    if (strlen (known[i].name) == n &&
        strncmp (exportname + 1, known[i].name, n) == 0 &&
        (below & known[i].bit))
      return 0;
  nbdkit_error ("%s: no filter below the %s filter understands the export "
                "name '%s' (is the filter it names loaded, and below this "
                "one?)", filter, filter, exportname);
  return -1;
}
