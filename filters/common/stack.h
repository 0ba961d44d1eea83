/* nbdsnap filters: which nbdsnap filters are below this one.
 *
 * A filter sends names like @cbt:create/NAME down only to reach another
 * nbdsnap filter.  If none of that kind is below, the name would reach
 * the plugin, through a shared context whose export name a plugin cannot
 * see (nbdkit 1.32: the file plugin serving a directory crashes on it).
 * So each filter records itself when its .get_ready runs; nbdkit runs
 * .get_ready from the plugin outwards, so the filters recorded before a
 * filter's own .get_ready are exactly the nbdsnap filters below it.
 *
 * Each filter exports one function of its own, nbdsnap_ready_FILTER
 * (STACK_EXPORT below; every other symbol of a filter is hidden), that
 * says whether its .get_ready has run; nbdkit loads filters with
 * RTLD_GLOBAL, so the others find it with dlsym.  (One shared variable
 * defined by every filter would do as well, but is an ODR violation.)
 */
#ifndef NBDSNAP_STACK_H
#define NBDSNAP_STACK_H

#include <stdbool.h>

#define STACK_SNAPSHOT 1u
#define STACK_CBT      2u
#define STACK_FREEZE   4u

/* In .get_ready of the filter me (a STACK_* bit): record it, and
 * return the nbdsnap filters below it (a mask of STACK_* bits).
 */
unsigned stack_get_ready (unsigned me);

/* Has this filter's .get_ready run (for STACK_EXPORT)? */
int stack_self_ready (void);

/* In the filter called name (snapshot, cbt, freeze): the function the
 * other filters look up.
 */
#define STACK_EXPORT(name)                                              \
  __attribute__ ((visibility ("default"))) int nbdsnap_ready_##name (void); \
  int nbdsnap_ready_##name (void) { return stack_self_ready (); }

/* exportname is an @name for another filter: is that filter one of the
 * nbdsnap filters below (the mask stack_get_ready returned)?  If not,
 * -1 after nbdkit_error (from filter): the name must not reach the
 * plugin.
 */
int stack_check_pass (unsigned below, const char *exportname,
                      const char *filter)
  __attribute__ ((nonnull (2, 3)));

#endif /* NBDSNAP_STACK_H */
