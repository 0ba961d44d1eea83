/* nbdsnap tool: signals that stop a backup or restore cleanly. */
#include <config.h>

#include <signal.h>
#include <string.h>

#include "nbdsnap.h"

volatile sig_atomic_t interrupted;

/* The handler: remember the signal; the workers check it. */
static void
on_signal (int sig)
{
  interrupted = sig;
}

/* SIGINT, SIGTERM, SIGHUP stop a backup or restore cleanly: the workers
 * finish their current request, the frozen point is released and the
 * temporary point removed.  (kill -9 cannot be caught: then the frozen
 * point stays held until "nbdsnap freeze end" or a server restart.)
 */
void
install_signal_handlers (void)
{
  struct sigaction sa;

  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset (&sa.sa_mask);
  sa.sa_flags = 0;              /* no SA_RESTART */
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
  sa.sa_handler = SIG_IGN;
  sigaction (SIGPIPE, &sa, NULL);
}
