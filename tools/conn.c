/* nbdsnap tool: libnbd connections to the exports of a server, and
 * running a filter's command export.
 *
 * The user gives one URI for a server; the tool opens other exports of
 * that server (views, commands) by connecting with that URI as libnbd
 * takes it (transport, TLS, query parameters) in option mode and then
 * asking for another export name (nbd_set_export_name + nbd_opt_go).
 * When that export is refused, the server is asked (on the same
 * connection) for the URI's own export: if it opens that, the server
 * refused our export (exit 1); if not, or if the connection failed, the
 * server cannot be reached at all (exit 2).
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "nbdsnap.h"

/* The URI schemes libnbd takes (nbd_connect_uri(3)). */
static const char *const schemes[] = {
  "nbd", "nbds", "nbd+unix", "nbds+unix", "nbd+vsock", "nbds+vsock",
};

/* Usage error unless uri is SCHEME://... for one of libnbd's schemes.
 * The rest is left to libnbd (nbd_connect_uri).
 */
void
check_uri (const char *uri)
{
  const char *e = strstr (uri, "://");
  size_t i;

  for (i = 0; e && i < sizeof schemes / sizeof schemes[0]; ++i)
    if (strlen (schemes[i]) == (size_t) (e - uri) &&
        strncmp (uri, schemes[i], e - uri) == 0)
      return;
  usage_error ("'%s' is not an NBD URI (nbd://HOST[:PORT]/, "
               "nbd+unix:///?socket=PATH, nbds://...)", uri);
}

/* Connect to uri, then open exportname (or the URI's export). */
struct nbd_handle *
connect_export (const char *uri, const char *exportname, bool meta,
                bool *refused, char *err, size_t errlen)
{
  struct nbd_handle *h;
  char *own = NULL;
  int e;

  if (refused)
    *refused = false;
  h = nbd_create ();
  if (h == NULL) {
    snprintf (err, errlen, "%s", nbd_get_error ());
    return NULL;
  }
  /* The URI comes from the user's command line: allow tls-certificates=
   * and tls-psk-file= query parameters (local files).
   */
  nbd_set_uri_allow_local_file (h, true);
  /* Every read is checked for errors before its buffer is used: no need
   * for libnbd to clear each buffer first (it costs a pass over every
   * byte of a backup).
   */
  nbd_set_pread_initialize (h, false);
  /* Stop at option negotiation: the export to open is chosen there. */
  if (nbd_set_opt_mode (h, true) == -1 ||
      (meta && nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1)
      || nbd_connect_uri (h, uri) == -1)
    goto failed;

  if (!nbd_aio_is_negotiating (h)) {
    /* An oldstyle server: it negotiates nothing and serves one export. */
    if (exportname == NULL)
      goto connected;
    snprintf (err, errlen, "the server negotiates no options (an oldstyle "
              "NBD server?): it cannot open export '%s'", exportname);
    disconnect (h);
    return NULL;
  }
  if (exportname) {
    own = nbd_get_export_name (h);      /* the URI's */
    if (own == NULL || nbd_set_export_name (h, exportname) == -1)
      goto failed;
  }
  /* opt_go also negotiates base:allocation (if added) for the export. */
  if (nbd_opt_go (h) == -1) {
    e = nbd_get_errno ();
    snprintf (err, errlen, "%s", nbd_get_error ());
    /* Did the server refuse this export, or does it refuse this client
     * altogether (it requires TLS, say)?  After a failed opt_go libnbd
     * is still negotiating: ask for the URI's own export.
     */
    if (own && nbd_set_export_name (h, own) == 0 && nbd_opt_go (h) == 0) {
      if (refused)
        *refused = true;
    }
    else if (e == ENOTSUP && nbd_get_tls_negotiated (h) != 1) {
      size_t n = strlen (err);
      snprintf (err + n, errlen - n, " (does the server require TLS? "
                "then use nbds:// or nbds+unix://)");
    }
    free (own);
    disconnect (h);
    return NULL;
  }
  free (own);

 connected:
  verbose ("connected to %s%s%s", uri, exportname ? " export " : "",
           exportname ? exportname : "");
  return h;

 failed:
  snprintf (err, errlen, "%s", nbd_get_error ());
  free (own);
  disconnect (h);
  return NULL;
}

/* Say how opening exportname failed, return the exit code. */
int
open_failed (const char *uri, const char *exportname, bool refused,
             const char *what, const char *err, const char *hint)
{
  if (!refused)
    return fail (EXIT_USAGE, "cannot connect to %s: %s", uri, err);
  return fail (EXIT_FAILED, "%s: the server refused export '%s'%s%s "
               "(libnbd: %s)", what, exportname, hint ? ": " : "",
               hint ? hint : "", err);
}

/* Leave negotiation (nbd_opt_abort) or the connection (nbd_shutdown),
 * then close the handle.
 */
void
disconnect (struct nbd_handle *h)
{
  if (h == NULL)
    return;
  if (nbd_aio_is_negotiating (h))
    nbd_opt_abort (h);
  else
    nbd_shutdown (h, 0);
  nbd_close (h);
}

/* Open the command export, read its result, parse it. */
enum command_status
run_command (const char *uri, const char *exportname, struct result *res,
             char *err, size_t errlen)
{
  struct nbd_handle *h;
  bool refused;
  int64_t size;
  char *buf, buf1[1], e[ERRLEN];

  memset (res, 0, sizeof *res);
  h = connect_export (uri, exportname, false, &refused, err, errlen);
  if (h == NULL)
    return refused ? CMD_REFUSED : CMD_UNREACHABLE;
  /* From here on the command has run: a result that cannot be read is
   * CMD_LOST, not "unreachable".
   */
  size = nbd_get_size (h);
  if (size < 0) {
    snprintf (err, errlen, "export '%s': %s", exportname, nbd_get_error ());
    disconnect (h);
    return CMD_LOST;
  }
  if (size > 0 && size <= 4 * 1024 * 1024 &&
      nbd_pread (h, buf1, 1, 0, 0) == -1) {
    snprintf (err, errlen, "reading the result of '%s': %s", exportname,
              nbd_get_error ());
    disconnect (h);
    return CMD_LOST;
  }
  /* A plugin that ignores export names serves its disk under any name:
   * that is no command result (they are small and start with '{').
   */
  if (size > 4 * 1024 * 1024 || (size > 0 && buf1[0] != '{')) {
    snprintf (err, errlen, "export '%s' is not a command of an nbdsnap "
              "filter (its content is not a JSON result)", exportname);
    disconnect (h);
    return CMD_REFUSED;
  }
  buf = malloc (size + 1);
  if (buf == NULL) {
    snprintf (err, errlen, "reading the result of '%s': out of memory",
              exportname);
    disconnect (h);
    return CMD_LOST;
  }
  if (size > 0 && nbd_pread (h, buf, size, 0, 0) == -1) {
    snprintf (err, errlen, "reading the result of '%s': %s", exportname,
              nbd_get_error ());
    free (buf);
    disconnect (h);
    return CMD_LOST;
  }
  buf[size] = '\0';
  disconnect (h);
  if (size == 0) {
    snprintf (err, errlen, "export '%s' is not a command of an nbdsnap "
              "filter (its content is not a JSON result)", exportname);
    free (buf);
    return CMD_REFUSED;
  }
  if (result_parse (buf, size, res, e, sizeof e) == -1) {
    snprintf (err, errlen, "the result of '%s' is not valid: %s",
              exportname, e);
    free (buf);
    return CMD_INVALID;
  }
  return CMD_DONE;
}
