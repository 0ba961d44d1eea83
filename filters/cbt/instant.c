/* nbdsnap cbt filter: a checkpoint and a snapshot at one instant.
 *
 * @cbt:create/NAME/snapshot makes checkpoint NAME here and snapshot NAME
 * in the snapshot filter below, at the same point of the write stream:
 * the gate is held (no write in flight through this filter, new ones
 * wait) from before the checkpoint until after the snapshot, so every
 * write is in both (the snapshot's bytes, the interval that ends at
 * NAME) or in neither.  All or nothing: if the snapshot filter refuses,
 * the checkpoint is removed again, still inside the gate, so that the
 * bitmaps are exactly what they were (docs/interface.md, section 10).
 *
 * Why here and not in the freeze filter: the two things are made by this
 * filter and the one directly below it, every write that reaches the
 * snapshot filter passes this filter's gate, and the stack cbt +
 * snapshot needs no freeze filter.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>
#include <nbdkit-filter.h>

#include "lockscope.h"
#include "tracker-internal.h"

/* What the snapshot filter answered. */
struct answer {
  bool ok;
  char ename[16];               /* its errno name, on failure */
  char why[400];                /* its error, or why there is no answer */
  char *snapshot;               /* on success: its "snapshot" object */
};

/* Parse the command result json (len bytes) into *a. */
static void
parse_answer (const char *json, size_t len, struct answer *a)
{
  json_tokener *tok = json_tokener_new ();
  json_object *doc = NULL, *v;

  snprintf (a->why, sizeof a->why, "the snapshot filter's answer is not a "
            "command result");
  if (tok == NULL)
    return;
  doc = json_tokener_parse_ex (tok, json, len);
  if (doc && json_tokener_get_error (tok) == json_tokener_success &&
      json_object_is_type (doc, json_type_object) &&
      json_object_object_get_ex (doc, "ok", &v) &&
      json_object_is_type (v, json_type_boolean)) {
    a->ok = json_object_get_boolean (v);
    if (a->ok && json_object_object_get_ex (doc, "snapshot", &v))
      a->snapshot = strdup (json_object_to_json_string_ext
                            (v, JSON_C_TO_STRING_PLAIN));
    if (!a->ok) {
      snprintf (a->why, sizeof a->why, "%s",
                json_object_object_get_ex (doc, "error", &v) ?
                json_object_get_string (v) : "(no error given)");
      if (json_object_object_get_ex (doc, "errno", &v))
        snprintf (a->ename, sizeof a->ename, "%s",
                  json_object_get_string (v));
    }
  }
  json_object_put (doc);
  json_tokener_free (tok);
}

/* Open @snapshot:create/name below and read its result into *a. */
static void
make_snapshot (nbdkit_backend *backend, const char *name, struct answer *a)
{
  char ex[NAME_MAX_LEN + 32];
  nbdkit_next *next;
  const char *d;
  char *json = NULL;
  int64_t size;
  int err = 0;

  snprintf (a->why, sizeof a->why, "the snapshot filter below did not "
            "answer (see the server's log)");
  snprintf (ex, sizeof ex, "@snapshot:create/%s", name);
  next = nbdkit_next_context_open (backend, 0, ex, 1);
  if (next == NULL)
    return;
  if (next->prepare (next) == 0) {
    d = next->export_description (next);
    size = next->get_size (next);
    if (d && strncmp (d, "nbdsnap:snapshot", 16) == 0 &&
        size > 0 && size <= 65536 &&
        (json = calloc (1, size + 1)) != NULL &&
        next->pread (next, json, size, 0, 0, &err) == 0)
      parse_answer (json, size, a);
    next->finalize (next);
  }
  nbdkit_next_context_close (next);
  free (json);
}

/* The errno name e as a string that outlives the command (cmd->ename
 * keeps the pointer): one of the names the filters use, else EIO.
 */
static const char *
static_ename (const char *e)
{
  static const char *const known[] = {
    "EINVAL", "ENOENT", "EEXIST", "EPERM", "EROFS", "ENOSPC", "EIO",
    "ENOMEM", "EBUSY",
  };
  size_t i;

  for (i = 0; i < sizeof known / sizeof known[0]; ++i)
    if (strcmp (e, known[i]) == 0)
      return known[i];
  return "EIO";
}

/* The snapshot was not made: take checkpoint name (the newest, made an
 * instant ago, its bitmap still empty) away again (gate held).
 */
static int
undo_ckpt (struct command *cmd, const char *name, const struct answer *a)
{
  struct command undo = { .filter = "cbt", .verb = "delete" };
  struct ckpt *prev;
  ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&T.rw);

  if (failure_check_command (&T.fail, &undo) == -1 ||
      remove_ckpt (&undo, T.ncps - 1, &prev) == -1)
    return command_fail (cmd, "EIO", "the snapshot filter refused snapshot "
                         "'%s' (%s), and checkpoint '%s' made with it could "
                         "not be removed (%s): delete it with "
                         "@cbt:delete/%s", name, a->why, name, undo.why,
                         name);
  return command_fail (cmd, static_ename (a->ename), "the snapshot "
                       "filter refused snapshot '%s', so checkpoint '%s' "
                       "was not made either: %s", name, name, a->why);
}

int
tracker_cmd_create_snapshot (struct command *cmd, const char *name,
                             nbdkit_backend *backend, nbdkit_next *below)
{
  struct answer a = { .ok = false };
  struct ckpt *c;
  int r;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&T.cmd_lock);
  c = new_ckpt (cmd, name);
  if (c == NULL)
    return -1;
  {
    /* The instant: from here until the snapshot is made, no write. */
    GATE_HOLD_FOR_CURRENT_SCOPE (&T.gate);
    c->created = time (NULL);   /* the instant, as the snapshot's time */
    {
      ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&T.rw);
      r = flush_push_ckpt (cmd, c, below);
    }
    if (r == -1)
      return -1;
    /* The list lock is not held below: a view reading the disk through
     * the snapshot filter must not wait for us while we wait for it.
     */
    make_snapshot (backend, name, &a);
    if (!a.ok)
      return undo_ckpt (cmd, name, &a);
  }
  nbdkit_debug ("cbt: checkpoint and snapshot '%s' created", name);
  jb_printf (&cmd->body, ",\"checkpoint\":");
  {
    ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&T.rw);
    json_ckpts (&cmd->body, T.ncps - 1);
  }
  jb_printf (&cmd->body, ",\"snapshot\":%s", a.snapshot ? a.snapshot
             : "null");
  free (a.snapshot);
  return 0;
}
