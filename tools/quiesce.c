/* nbdsnap tool: quiesce hooks around the instant of a backup, snapshot or
 * checkpoint.
 *
 *   --freeze-cmd CMD       /bin/sh -c CMD, right before the frozen point
 *                          (snapshot, checkpoint) is made; must exit 0
 *   --thaw-cmd CMD         /bin/sh -c CMD, right after the command that
 *                          made it returned (not after the copy), and
 *                          always once the freeze command was started
 *   --quiesce-timeout S    each hook may run S seconds (default 60); then
 *                          its process group gets SIGTERM, 2 s later
 *                          SIGKILL
 *
 * A hook runs in its own process group (a ^C at the terminal reaches only
 * nbdsnap, which then still runs the thaw), with stdin /dev/null and
 * stdout sent to stderr (so --json output stays one document), and the
 * environment NBDSNAP_HOOK (freeze|thaw), NBDSNAP_OPERATION, NBDSNAP_URI,
 * NBDSNAP_POINT and, for the thaw, NBDSNAP_RESULT (made|failed).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nbdsnap.h"
#include "quiesce.h"

extern char **environ;

#define KILL_GRACE 2.0          /* seconds between SIGTERM and SIGKILL */

char *
take_option (int *argc, char **argv, const char *name)
{
  size_t len = strlen (name);
  char *val = NULL;
  int i = 1, j, drop;

  while (i < *argc) {
    char *a = argv[i];
    if (strcmp (a, "--") == 0)
      break;
    drop = 0;
    if (strncmp (a, "--", 2) == 0 && strncmp (a + 2, name, len) == 0) {
      if (a[2 + len] == '=') {
        val = a + 3 + len;
        drop = 1;
      }
      else if (a[2 + len] == '\0') {
        if (i + 1 >= *argc)
          usage_error ("%s: option --%s needs a value", argv[0], name);
        val = argv[i + 1];
        drop = 2;
      }
    }
    if (drop == 0) {
      i++;
      continue;
    }
    for (j = i; j + drop <= *argc; ++j)
      argv[j] = argv[j + drop];         /* argv[argc] (NULL) moves too */
    *argc -= drop;
  }
  return val;
}

void
quiesce_options (int *argc, char **argv, struct quiesce *q,
                 const char *operation)
{
  char *t, *end;
  unsigned long v;

  memset (q, 0, sizeof *q);
  q->operation = operation;
  q->timeout = QUIESCE_DEFAULT_TIMEOUT;
  q->freeze_cmd = take_option (argc, argv, "freeze-cmd");
  q->thaw_cmd = take_option (argc, argv, "thaw-cmd");
  t = take_option (argc, argv, "quiesce-timeout");
  if (q->freeze_cmd && q->freeze_cmd[0] == '\0')
    usage_error ("%s: --freeze-cmd is empty", operation);
  if (q->thaw_cmd && q->thaw_cmd[0] == '\0')
    usage_error ("%s: --thaw-cmd is empty", operation);
  if (t) {
    errno = 0;
    v = strtoul (t, &end, 10);
    if (errno || end == t || *end || t[0] == '-' || v < 1 || v > 86400)
      usage_error ("%s: --quiesce-timeout must be 1 to 86400 seconds, "
                   "not '%s'", operation, t);
    if (!q->freeze_cmd && !q->thaw_cmd)
      usage_error ("%s: --quiesce-timeout without --freeze-cmd or "
                   "--thaw-cmd", operation);
    q->timeout = v;
  }
}

bool
quiesce_wanted (const struct quiesce *q)
{
  return q->freeze_cmd != NULL || q->thaw_cmd != NULL;
}

/* A NULL-terminated copy of environ with our variables in front.
 * Built before fork (no allocation in the child).  NULL: out of memory.
 */
static char **
hook_environment (const struct quiesce *q, const char *hook,
                  const char *result)
{
  static const char *const ours[] = {
    "NBDSNAP_HOOK=", "NBDSNAP_OPERATION=", "NBDSNAP_URI=", "NBDSNAP_POINT=",
    "NBDSNAP_RESULT=",
  };
  const char *vals[] = { hook, q->operation, q->uri, q->point, result };
  size_t n = 0, i, k, m = 0;
  char **env;

  while (environ && environ[n])
    n++;
  env = calloc (n + 6, sizeof *env);
  if (env == NULL)
    return NULL;
  for (k = 0; k < 5; ++k) {
    if (vals[k] == NULL)
      continue;
    if (asprintf (&env[m], "%s%s", ours[k], vals[k]) == -1) {
      env[m] = NULL;
      goto nomem;
    }
    m++;
  }
  for (i = 0; i < n; ++i) {
    bool shadowed = false;
    for (k = 0; k < 5; ++k)
      if (strncmp (environ[i], ours[k], strlen (ours[k])) == 0)
        shadowed = true;
    if (!shadowed)
      env[m++] = environ[i];
  }
  env[m] = NULL;
  return env;
 nomem:
  for (k = 0; k < m; ++k)
    free (env[k]);
  free (env);
  return NULL;
}

/* Free what hook_environment made (only our own strings). */
static void
free_environment (char **env, size_t ours)
{
  size_t k;

  for (k = 0; k < ours && env[k]; ++k)
    free (env[k]);
  free (env);
}

/* Sleep a little, waking early for a signal. */
static void
nap (void)
{
  struct timespec ts = { 0, 10 * 1000 * 1000 };
  nanosleep (&ts, NULL);
}

/* Wait for the hook pid up to deadline; -2: still running. */
static int
wait_until (pid_t pid, double deadline, bool stop_on_signal, int *status)
{
  pid_t r;

  for (;;) {
    r = waitpid (pid, status, WNOHANG);
    if (r == pid)
      return 0;
    if (r == -1 && errno != EINTR)
      return -1;
    if (now_seconds () >= deadline || (stop_on_signal && interrupted))
      return -2;
    nap ();
  }
}

/* Stop the hook's process group: SIGTERM, then SIGKILL; reap it. */
static void
kill_hook (pid_t pid, int *status)
{
  kill (-pid, SIGTERM);
  if (wait_until (pid, now_seconds () + KILL_GRACE, false, status) == 0)
    return;
  kill (-pid, SIGKILL);
  while (waitpid (pid, status, 0) == -1 && errno == EINTR)
    ;
}

/* Run one hook: /bin/sh -c cmd.  stop_on_signal: a signal to nbdsnap
 * ends it (the freeze; the thaw always runs to its end or its timeout).
 * 0 if it exited 0, else -1 with err.
 */
static int
run_hook (const struct quiesce *q, const char *hook, const char *cmd,
          const char *result, bool stop_on_signal, char *err, size_t errlen)
{
  char **env;
  pid_t pid;
  int status = 0, r, devnull;
  double t0 = now_seconds ();
  size_t nours = result ? 5 : 4;

  env = hook_environment (q, hook, result);
  if (env == NULL) {
    snprintf (err, errlen, "%s command not run: out of memory", hook);
    return -1;
  }
  verbose ("running the %s command: %s", hook, cmd);
  fflush (stdout);
  fflush (stderr);
  devnull = open ("/dev/null", O_RDONLY|O_CLOEXEC);
  pid = fork ();
  if (pid == -1) {
    snprintf (err, errlen, "%s command not run: fork: %s", hook,
              strerror (errno));
    if (devnull >= 0)
      close (devnull);
    free_environment (env, nours);
    return -1;
  }
  if (pid == 0) {
    struct sigaction sa;
    memset (&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset (&sa.sa_mask);
    sigaction (SIGPIPE, &sa, NULL);     /* nbdsnap ignores it */
    setpgid (0, 0);
    if (devnull >= 0)
      dup2 (devnull, 0);
    dup2 (2, 1);
    execle ("/bin/sh", "sh", "-c", cmd, (char *) NULL, env);
    _exit (127);
  }
  setpgid (pid, pid);           /* also here: no race with kill (-pid) */
  if (devnull >= 0)
    close (devnull);
  free_environment (env, nours);

  r = wait_until (pid, t0 + q->timeout, stop_on_signal, &status);
  if (r == -2) {
    bool sig = stop_on_signal && interrupted;
    kill_hook (pid, &status);
    if (sig)
      snprintf (err, errlen, "the %s command was stopped: nbdsnap was "
                "interrupted by signal %d", hook, (int) interrupted);
    else
      snprintf (err, errlen, "the %s command did not finish within %u "
                "s (--quiesce-timeout) and was killed", hook, q->timeout);
    return -1;
  }
  if (r == -1) {
    snprintf (err, errlen, "waiting for the %s command: %s", hook,
              strerror (errno));
    return -1;
  }
  if (WIFEXITED (status) && WEXITSTATUS (status) == 0) {
    verbose ("the %s command finished in %.2fs", hook, now_seconds () - t0);
    return 0;
  }
  if (WIFEXITED (status))
    snprintf (err, errlen, "the %s command failed (exit status %d%s)",
              hook, WEXITSTATUS (status),
              WEXITSTATUS (status) == 127 ? ": command not found?" : "");
  else
    snprintf (err, errlen, "the %s command was killed by signal %d", hook,
              WIFSIGNALED (status) ? WTERMSIG (status) : 0);
  return -1;
}

int
quiesce_freeze (struct quiesce *q, char *err, size_t errlen)
{
  char e2[ERRLEN];
  size_t len;

  if (q->freeze_cmd == NULL) {
    q->thaw_owed = q->thaw_cmd != NULL;
    return 0;
  }
  install_signal_handlers ();   /* a signal must not skip the thaw */
  q->thaw_owed = true;
  if (interrupted) {
    snprintf (err, errlen, "interrupted by signal %d", (int) interrupted);
    q->thaw_owed = false;       /* nothing was run */
    return -1;
  }
  if (run_hook (q, "freeze", q->freeze_cmd, NULL, true, err, errlen) == 0) {
    if (!interrupted)
      return 0;
    /* A signal right after the freeze: do not begin. */
    snprintf (err, errlen, "interrupted by signal %d", (int) interrupted);
  }
  if (quiesce_thaw (q, false, e2, sizeof e2) == -1) {
    len = strlen (err);
    snprintf (err + len, errlen - len, "; and %s", e2);
  }
  return -1;
}

int
quiesce_thaw (struct quiesce *q, bool made, char *err, size_t errlen)
{
  if (!q->thaw_owed)
    return 0;
  q->thaw_owed = false;
  if (q->thaw_cmd == NULL)
    return 0;
  install_signal_handlers ();
  return run_hook (q, "thaw", q->thaw_cmd, made ? "made" : "failed", false,
                   err, errlen);
}
