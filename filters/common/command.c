/* nbdsnap filters: commands and names passed down. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "command.h"
#include "fdlimit.h"
#include "policy.h"

int
command_allowed (struct command *cmd, bool mutating, unsigned policy,
                 int readonly, int is_tls)
{
  if (!mutating)
    return 0;
  if (readonly) {
    cmd->ename = "EROFS";
    snprintf (cmd->why, sizeof cmd->why,
              "the server is read-only: '%s' is refused", cmd->verb);
    return -1;
  }
  if (!policy_allows (policy, is_tls)) {
    cmd->ename = "EPERM";
    snprintf (cmd->why, sizeof cmd->why,
              "this client may not run '%s' (%s-commands=%s)",
              cmd->verb, cmd->filter, policy_name (policy));
    return -1;
  }
  return 0;
}

int
command_fail (struct command *cmd, const char *ename, const char *fmt, ...)
{
  va_list ap;

  cmd->ename = ename;
  va_start (ap, fmt);
  vsnprintf (cmd->why, sizeof cmd->why, fmt, ap);
  va_end (ap);
  return -1;
}

int
command_fail_errno (struct command *cmd, int e, const char *fmt, ...)
{
  va_list ap;
  size_t n;

  cmd->ename = command_errno_name (e);
  va_start (ap, fmt);
  vsnprintf (cmd->why, sizeof cmd->why, fmt, ap);
  va_end (ap);
  n = strlen (cmd->why);
  snprintf (cmd->why + n, sizeof cmd->why - n, ": %s%s", strerror (e),
            fdlimit_exhausted (e) ? "; " FDLIMIT_HINT : "");
  return -1;
}

const char *
command_errno_name (int e)
{
  switch (e) {
  case ENOSPC: case EDQUOT: return "ENOSPC";
  case EROFS: return "EROFS";
  case ENOMEM: return "ENOMEM";
  default: return "EIO";
  }
}

void
command_bad_args (struct command *cmd, const char *manpage)
{
  cmd->ename = "EINVAL";
  snprintf (cmd->why, sizeof cmd->why, "bad arguments for '%s' (see %s)",
            cmd->verb, manpage);
}

void
command_finish (struct command *cmd, int r, char **out, size_t *len)
{
  struct jbuf j = { 0 };

  jb_printf (&j, "{\"filter\":");
  jb_str (&j, cmd->filter);
  jb_printf (&j, ",\"command\":");
  jb_str (&j, cmd->verb);
  if (r == 0)
    jb_printf (&j, ",\"ok\":true%s", cmd->body.p ? cmd->body.p : "");
  else {
    jb_printf (&j, ",\"ok\":false,\"errno\":");
    jb_str (&j, cmd->ename ? cmd->ename : "EIO");
    jb_printf (&j, ",\"error\":");
    jb_str (&j, cmd->why);
    nbdkit_debug ("%s: %s failed: %s", cmd->filter, cmd->verb, cmd->why);
  }
  jb_printf (&j, "}\n");
  /* A result that lost members to a failed allocation is no result: the
   * open fails (out of memory) rather than say "ok" with members missing.
   */
  if (r == 0 && cmd->body.oom)
    j.oom = true;
  jb_free (&cmd->body);
  if (j.oom) {
    jb_free (&j);
    *out = NULL;
    *len = 0;
    return;
  }
  *out = j.p;
  *len = j.len;
}

int
command_pread (const char *json, size_t json_len, void *buf,
               uint32_t count, uint64_t offset, int *err)
{
  if (offset + count > json_len) {
    *err = EIO;
    return -1;
  }
  memcpy (buf, json + offset, count);
  return 0;
}

int64_t
disk_below_size (nbdkit_backend *backend, const char *filter)
{
  return disk_below_size_of (backend, "", filter);
}

int64_t
disk_below_size_of (nbdkit_backend *backend, const char *exportname,
                    const char *filter)
{
  nbdkit_next *next = nbdkit_next_context_open (backend, 1, exportname, 1);
  int64_t size = -1;

  if (next != NULL) {
    if (next->prepare (next) == 0) {
      size = next->get_size (next);
      next->finalize (next);
    }
    nbdkit_next_context_close (next);
  }
  if (size == -1)
    nbdkit_error ("%s: cannot get the size of the disk below", filter);
  return size;
}

int
command_check_below (nbdkit_next *next, const char *filter)
{
  const char *d = next->export_description (next);

  if (d == NULL || strncmp (d, "nbdsnap:", 8) != 0) {
    nbdkit_error ("%s: no filter below the %s filter understands this "
                  "export name (is the filter it names loaded, and below "
                  "this one?)", filter, filter);
    return -1;
  }
  return 0;
}
