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

/* Human-readable form of a policy, for messages. */
const char *policy_name (unsigned policy);

#endif /* NBDSNAP_POLICY_H */
