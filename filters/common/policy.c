/* nbdsnap filters: command policy. */
#include <config.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <nbdkit-filter.h>

#include "policy.h"

int
policy_parse (const char *value, unsigned *policy)
{
  char buf[64];
  char *tok, *save = NULL;
  unsigned p = 0;

  if (strcmp (value, "none") == 0) { *policy = 0; return 0; }
  if (strcmp (value, "any") == 0) { *policy = POLICY_ANY; return 0; }
  if (strlen (value) >= sizeof buf || value[0] == '\0')
    return -1;
  strcpy (buf, value);
  for (tok = strtok_r (buf, ",", &save); tok;
       tok = strtok_r (NULL, ",", &save)) {
    if (strcmp (tok, "unix") == 0) p |= POLICY_UNIX;
    else if (strcmp (tok, "tls") == 0) p |= POLICY_TLS;
    else return -1;
  }
  if (p == 0)
    return -1;
  *policy = p;
  return 0;
}

static __thread int thread_tls;  /* policy_thread_tls (policy.h) */

void
policy_thread_tls (int is_tls)
{
  thread_tls = is_tls > 0;
}

int
policy_thread_tls_get (void)
{
  return thread_tls;
}

/* Is a filter above performing a command for a TLS client in this
 * thread?
 */
static bool
above_tls (void)
{
  static const char *const names[] = { "snapshot", "cbt", "freeze" };
  size_t i;

  for (i = 0; i < sizeof names / sizeof names[0]; ++i) {
    char sym[64];
    int (*get) (void);

    snprintf (sym, sizeof sym, "nbdsnap_client_tls_%s", names[i]);
    *(void **) &get = dlsym (RTLD_DEFAULT, sym);
    if (get && get ())
      return true;
  }
  return false;
}

bool
policy_allows (unsigned policy, int is_tls)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;

  if (policy & POLICY_ANY)
    return true;
  if ((policy & POLICY_TLS) && !is_tls && above_tls ())
    return true;
  if ((policy & POLICY_TLS) && is_tls)
    return true;
  if (policy & POLICY_UNIX) {
    memset (&ss, 0, sizeof ss);
    if (nbdkit_peer_name ((struct sockaddr *) &ss, &len) == 0 &&
        ss.ss_family == AF_UNIX)
      return true;
  }
  return false;
}

const char *
policy_name (unsigned policy)
{
  if (policy & POLICY_ANY) return "any";
  switch (policy) {
  case 0: return "none";
  case POLICY_UNIX: return "unix";
  case POLICY_TLS: return "tls";
  default: return "unix,tls";
  }
}
