/* nbdsnap filters: who may run mutating commands (FILTER-commands=...). */
#ifndef NBDSNAP_POLICY_H
#define NBDSNAP_POLICY_H

#include <stdbool.h>

#define POLICY_UNIX 1u   /* clients on a Unix domain socket */
#define POLICY_TLS  2u   /* clients that negotiated TLS */
#define POLICY_ANY  4u   /* everybody */
#define POLICY_DEFAULT (POLICY_UNIX | POLICY_TLS)

/* Parse "none", "any", or a comma list of "unix" and "tls".  -1 if bad. */
int policy_parse (const char *value, unsigned *policy)
  __attribute__ ((nonnull (1, 2)));

/* Does the policy allow the current client (called in a connection)? */
bool policy_allows (unsigned policy, int is_tls);

/* While a filter performs a command it has allowed, the command may open
 * commands of the filters below it (freeze:begin opens @cbt:create/NAME)
 * in a shared context.  nbdkit 1.32 hands such an open is_tls = "TLS is
 * required on the command line", not the client's TLS state, so a TLS
 * client of an `nbdkit --tls=on` server would be refused there.  The
 * filter running the command records the client's TLS state for its
 * thread (policy_thread_tls, fh_command does it); policy_allows in the
 * filters below reads it through nbdsnap_client_tls_FILTER (POLICY_EXPORT
 * in each filter; found with dlsym, as stack.h does).  Only a filter in
 * the same thread, during a command it has allowed, sets it: no client
 * can.
 */
void policy_thread_tls (int is_tls);
int policy_thread_tls_get (void);
#define POLICY_EXPORT(name)                                             \
  __attribute__ ((visibility ("default"))) int nbdsnap_client_tls_##name (void); \
  int nbdsnap_client_tls_##name (void) { return policy_thread_tls_get (); }

/* Human-readable form of a policy, for messages. */
const char *policy_name (unsigned policy);

#endif /* NBDSNAP_POLICY_H */
