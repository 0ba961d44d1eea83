/* nbdsnap tool: backup: what it asks of the server, through the
 * filters' command exports.
 *
 *   check_server   @freeze:list (is there a freeze filter?), and for an
 *                  incremental @cbt:list (the base checkpoint exists and
 *                  is consistent)
 *   begin_point    @freeze:begin/NAME: checkpoint NAME + the disk frozen
 *                  at that instant
 *   end_point      @freeze:end/NAME: it must not have been aborted
 *   cleanup        after a failure: @freeze:end/NAME, @cbt:delete/NAME
 *                  (its changes go back to the previous checkpoint, so the
 *                  next incremental since the newest point in the
 *                  repository still sees them), and the repository's
 *                  temporary point removed
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"

/* Run a freeze/cbt command during the backup.  CMD_DONE with res filled
 * if "ok" is true; a result with "ok":false is CMD_REFUSED with its
 * error in err.
 */
static enum command_status
command_ok (struct backup *b, const char *exportname, struct result *res,
            char *err, size_t errlen)
{
  enum command_status st;

  st = run_command (b->uri, exportname, res, err, errlen);
  if (st == CMD_DONE && !res->ok) {
    result_error (res->root, err, errlen);
    result_free (res);
    return CMD_REFUSED;
  }
  return st;
}

/* Incremental: the base checkpoint must exist and be consistent. */
static int
check_base_checkpoint (struct backup *b)
{
  char err[ERRLEN];
  struct json_object *c;
  const char *name;
  bool consistent = false, found = false;
  struct result res;
  enum command_status st;
  size_t i;

  st = command_ok (b, "@cbt:list", &res, err, sizeof err);
  if (st == CMD_UNREACHABLE)
    return fail (EXIT_USAGE, "cannot connect to %s: %s", b->uri, err);
  if (st != CMD_DONE)
    return fail (EXIT_FAILED, "cannot list the server's checkpoints (%s): "
                 "incremental backups need the cbt filter below the freeze "
                 "filter; a full backup is needed (nbdsnap backup --full)",
                 err);
  for (i = 0; i < jlen (res.root, "checkpoints"); ++i) {
    c = jat (res.root, "checkpoints", i);
    name = jstr (c, "name");
    if (name && strcmp (name, b->since) == 0) {
      found = true;
      jbool (c, "consistent", &consistent);
    }
  }
  result_free (&res);
  if (!found)
    return fail (EXIT_FAILED, "the server has no checkpoint '%s' (the base "
                 "of this incremental backup): the changes since then are "
                 "unknown; a full backup is needed (nbdsnap backup --full)",
                 b->since);
  if (!consistent)
    return fail (EXIT_FAILED, "checkpoint '%s' is not consistent: writes "
                 "since then may not all be tracked (the server stopped "
                 "uncleanly with cbt-sync=flush); a full backup is needed "
                 "(nbdsnap backup --full)", b->since);
  return EXIT_OK;
}

/* Does the @freeze:list result res hold a frozen point name?  *checkpoint
 * (if not NULL): whether it has a checkpoint of the same name.
 */
static bool
frozen_point (struct result *res, const char *name, bool *checkpoint)
{
  struct json_object *p;
  const char *n;
  size_t i;

  for (i = 0; i < jlen (res->root, "points"); ++i) {
    p = jat (res->root, "points", i);
    n = jstr (p, "name");
    if (n && strcmp (n, name) == 0) {
      if (checkpoint) {
        *checkpoint = false;
        jbool (p, "checkpoint", checkpoint);
      }
      return true;
    }
  }
  return false;
}

/* Is the server there, with a freeze filter?  (@freeze:list is read-only
 * and always allowed.)  And the base of an incremental.
 */
int
check_server (struct backup *b)
{
  char err[ERRLEN];
  struct result res;

  switch (run_command (b->uri, "@freeze:list", &res, err, sizeof err)) {
  case CMD_DONE:
    b->frozen_before = frozen_point (&res, b->name, NULL);
    result_free (&res);
    break;
  case CMD_UNREACHABLE:
    return fail (EXIT_USAGE, "cannot connect to %s: %s", b->uri, err);
  case CMD_REFUSED:
    return fail (EXIT_FAILED, "the server has no freeze filter (a backup "
                 "needs nbdkit --filter=freeze, and --filter=cbt below it "
                 "for incrementals): %s", err);
  case CMD_INVALID:
  case CMD_LOST:
    return fail (EXIT_FAILED, "%s", err);
  }
  if (b->incremental)
    return check_base_checkpoint (b);
  return EXIT_OK;
}

/* The error of a refused @freeze:begin.  The freeze filter quotes the
 * cbt filter's result when that refused the checkpoint ("the cbt filter
 * refused the checkpoint: {...}"): then show that result's error.
 */
static void
begin_error (struct json_object *root, char *err, size_t errlen)
{
  const char *e = jstr (root, "error");
  const char *inner = e ? strchr (e, '{') : NULL;
  char *text, e2[ERRLEN];
  struct result in;

  result_error (root, err, errlen);
  if (inner == NULL || (text = strdup (inner)) == NULL)
    return;
  if (result_parse (text, strlen (text), &in, e2, sizeof e2) == -1) {
    free (text);
    return;
  }
  if (jget (in.root, "error"))
    result_error (in.root, err, errlen);
  result_free (&in);
}

/* After a begin whose result was lost: is our point there?  Sets
 * b->begun and b->checkpoint for the cleanup.
 */
static void
find_lost_begin (struct backup *b)
{
  char err[ERRLEN];
  struct result res;
  bool cp = false;

  if (b->frozen_before)
    return;                     /* someone else's: the begin was refused */
  if (run_command (b->uri, "@freeze:list", &res, err, sizeof err)
      != CMD_DONE) {
    msg ("warning: cannot tell whether frozen point '%s' was begun (%s); "
         "if 'nbdsnap freeze list %s' shows it, end it with 'nbdsnap "
         "freeze end %s %s' and delete its checkpoint with 'nbdsnap "
         "checkpoint delete %s %s'", b->name, err, b->uri, b->uri, b->name,
         b->uri, b->name);
    return;
  }
  if (frozen_point (&res, b->name, &cp)) {
    b->begun = true;
    b->checkpoint = cp;
  }
  result_free (&res);
}

/* The instant of the backup. */
int
begin_point (struct backup *b)
{
  char ex[256], err[ERRLEN];
  struct result res;
  enum command_status st;

  snprintf (ex, sizeof ex, "@freeze:begin/%s", b->name);
  switch ((st = run_command (b->uri, ex, &res, err, sizeof err))) {
  case CMD_DONE:
    break;
  case CMD_UNREACHABLE:
    return fail (EXIT_USAGE, "cannot connect to %s: %s", b->uri, err);
  case CMD_REFUSED:
    return fail (EXIT_FAILED, "the server refused to begin backup '%s': %s",
                 b->name, err);
  case CMD_INVALID:
  case CMD_LOST:
    /* The begin ran, with an outcome unknown: a point of this name that
     * was not there before is ours, and the cleanup must end it.
     */
    find_lost_begin (b);
    return fail (EXIT_FAILED, "%s backup '%s': %s",
                 st == CMD_LOST ? "could not begin"
                 : "the server refused to begin", b->name, err);
  }
  if (!res.ok) {
    begin_error (res.root, err, sizeof err);
    result_free (&res);
    return fail (EXIT_FAILED, "the server refused to begin backup '%s': %s",
                 b->name, err);
  }
  b->begun = true;
  jbool (jget (res.root, "point"), "checkpoint", &b->checkpoint);
  result_free (&res);
  if (!b->checkpoint)
    msg ("note: the server has no cbt filter: no checkpoint was made, so "
         "the next backup of this disk must be full as well");
  verbose ("frozen point '%s' begun", b->name);
  return EXIT_OK;
}

/* Release the frozen point; it must not have been aborted (scratch
 * space exhausted) while we read it.
 */
int
end_point (struct backup *b)
{
  char ex[256], err[ERRLEN];
  struct result res;
  struct json_object *point;
  bool aborted = false;
  const char *why;
  enum command_status st;

  snprintf (ex, sizeof ex, "@freeze:end/%s", b->name);
  st = command_ok (b, ex, &res, err, sizeof err);
  if (st != CMD_DONE) {
    b->end_lost = st == CMD_LOST || st == CMD_INVALID;
    backup_fail (b, "could not end frozen point '%s': %s", b->name, err);
    return -1;
  }
  b->begun = false;
  point = jget (res.root, "point");
  jbool (point, "aborted", &aborted);
  if (aborted) {
    why = jstr (point, "error");
    backup_fail (b, "the server aborted frozen point '%s' during the backup: "
                 "%s", b->name, why ? why : "");
    result_free (&res);
    return -1;
  }
  result_free (&res);
  return 0;
}

/* Undo what the failed backup did on the server and in the repository. */
void
cleanup (struct backup *b)
{
  char ex[256], err[ERRLEN];
  struct result res;

  if (b->h0) {
    disconnect (b->h0);
    b->h0 = NULL;
  }
  if (b->w) {
    repo_writer_abort (b->w);
    b->w = NULL;
  }
  if (b->begun) {
    enum command_status st;
    snprintf (ex, sizeof ex, "@freeze:end/%s", b->name);
    st = run_command (b->uri, ex, &res, err, sizeof err);
    if (st == CMD_DONE && !res.ok) {
      const char *e = jstr (res.root, "errno");
      /* An end whose result was lost may have ended it already. */
      bool gone = b->end_lost && e && strcmp (e, "ENOENT") == 0;
      result_error (res.root, err, sizeof err);
      result_free (&res);
      st = gone ? CMD_DONE : CMD_REFUSED;
      if (gone)
        verbose ("frozen point '%s' was released already", b->name);
    }
    else if (st == CMD_DONE) {
      /* Say why reads failed if the server aborted the point. */
      struct json_object *point = jget (res.root, "point");
      bool aborted = false;
      const char *why = jstr (point, "error");
      jbool (point, "aborted", &aborted);
      if (aborted)
        msg ("the server had aborted frozen point '%s': %s", b->name,
             why && why[0] ? why : "(no reason given)");
      result_free (&res);
    }
    if (st != CMD_DONE)
      msg ("warning: could not release frozen point '%s' (%s); release it "
           "with: nbdsnap freeze end '%s' %s", b->name, err, b->uri,
           b->name);
    b->begun = false;
  }
  if (b->checkpoint) {
    snprintf (ex, sizeof ex, "@cbt:delete/%s", b->name);
    if (command_ok (b, ex, &res, err, sizeof err) != CMD_DONE)
      msg ("warning: could not delete checkpoint '%s' made for this backup "
           "(%s); delete it with: nbdsnap checkpoint delete '%s' %s",
           b->name, err, b->uri, b->name);
    else
      result_free (&res);
    b->checkpoint = false;
  }
}
