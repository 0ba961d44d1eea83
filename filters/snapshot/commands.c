/* nbdsnap snapshot filter: the commands create, list, revert, delete.
 *
 * Each runs under the store lock; those that change the live chain hold
 * the gate for their O(1) switch, and commit it by writing the state
 * file (docs/snapshot-format.md, section 9).  Results are JSON members
 * appended to the command's body.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <nbdkit-filter.h>

#include "gate.h"
#include "lockscope.h"
#include "store-internal.h"

/* The bytes of the blocks l holds, whole or in part (a partial block
 * counts whole; the last block of the disk counts its own length).
 */
static uint64_t
held_bytes (struct layer *l)
{
  uint64_t n = __atomic_load_n (&l->held, __ATOMIC_RELAXED), last;

  if (n == 0)
    return 0;
  last = S.g.nblocks - 1;
  return n * S.g.block_size -
    (smap_get (&l->st, last) != BSTATE_ABSENT
     ? S.g.block_size - geom_block_len (&S.g, last) : 0);
}

/* Append the JSON object describing snapshot l (store lock held). */
static void
json_snapshot (struct jbuf *j, struct layer *l)
{
  const char *merr = l->deleting ? merge_error (l) : NULL;

  jb_printf (j, "{\"name\":");
  jb_str (j, l->name);
  jb_printf (j, ",\"parent\":");
  jb_str (j, l->parent ? l->parent->name : NULL);
  jb_printf (j, ",\"created\":");
  jb_time (j, l->created);
  jb_printf (j, ",\"bytes\":%" PRIu64 ",\"merging\":%s",
             held_bytes (l), l->deleting ? "true" : "false");
  if (merr) {
    jb_printf (j, ",\"merge_error\":");
    jb_str (j, merr);
  }
  jb_printf (j, "}");
}

/* Fail c with the errno name of e and a message (which says to raise
 * ulimit -n if e says nbdkit ran out of descriptors).
 */
static int __attribute__ ((format (printf, 3, 4)))
fail_errno (struct command *c, int e, const char *fmt, ...)
{
  va_list ap;
  char msg[400];

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  errno = e;
  hint_open_files (msg, sizeof msg, 0);
  return command_fail (c, command_errno_name (e), "%s", msg);
}

/* Fail c with EINVAL unless name is a valid snapshot name. */
static int
check_name (struct command *c, const char *name)
{
  char why[256];

  if (!name_valid (name, why, sizeof why))
    return command_fail (c, "EINVAL", "%s", why);
  return 0;
}

/* Freeze the live disk as snapshot name (store lock held): the active
 * layer becomes the snapshot, a new empty layer on top of it the live
 * disk.
 */
static int
create_locked (struct command *c, const char *name)
{
  struct layer *old, *n;
  char why[256];
  int e;

  if (failure_check_command (&S.fail, c) == -1)
    return -1;
  if (find_snapshot (name))
    return command_fail (c, "EEXIST", "snapshot '%s' already exists", name);

  GATE_HOLD_FOR_CURRENT_SCOPE (&S.gate);
  old = S.active;
  if (save_layer (old, true, "create: making the live disk durable") == -1)
    return fail_errno (c, errno, "cannot make the live disk durable: %s",
                       failure_is_set (&S.fail) ? S.fail.why
                       : strerror (errno));
  n = new_layer (old, why, sizeof why);
  if (n == NULL)
    return fail_errno (c, errno, "%s", why);
  old->active = false;
  snprintf (old->name, sizeof old->name, "%s", name);
  old->created = time (NULL);
  n->active = true;
  S.active = n;
  switch (save_state ()) {
  case 0:
    break;
  case -1:
    e = errno;
    S.active = old;
    old->active = true;
    old->name[0] = '\0';
    drop_new_layer (n);
    return fail_errno (c, e, "cannot write the state file: %s",
                       strerror (e));
  default:
    /* The snapshot is in the state file in place: it exists. */
    return fail_errno (c, errno, "snapshot '%s' was made, but the state "
                       "file that names it could not be made durable (%s): "
                       "a crash may undo it; restart nbdkit", name,
                       strerror (errno));
  }
  nbdkit_debug ("snapshot: created '%s' (layer %" PRIu64 ")", name, old->id);
  jb_printf (&c->body, ",\"snapshot\":");
  json_snapshot (&c->body, old);
  return 0;
}

/* @snapshot:create/NAME */
int
store_cmd_create (struct command *c, const char *name)
{
  if (check_name (c, name) == -1)
    return -1;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);
  return create_locked (c, name);
}

/* @snapshot:list */
int
store_cmd_list (struct command *c)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);
  struct jbuf *j = &c->body;
  uint64_t last = 0;
  size_t i;
  bool first = true;

  jb_printf (j, ",\"block_size\":%u,\"disk_size\":%" PRIu64
             ",\"snapshots\":[", S.g.block_size, S.g.disk_size);
  /* In creation (id) order, which is not the order of the slots. */
  for (;;) {
    struct layer *best = NULL;
    for (i = 1; i < MAX_SLOTS; ++i) {
      struct layer *l = S.slots[i];
      if (l && !l->active && !l->detached && l->id > last &&
          (best == NULL || l->id < best->id))
        best = l;
    }
    if (best == NULL)
      break;
    if (!first) jb_printf (j, ",");
    first = false;
    json_snapshot (j, best);
    last = best->id;
  }
  jb_printf (j, "],\"live\":{\"parent\":");
  jb_str (j, S.active->parent ? S.active->parent->name : NULL);
  jb_printf (j, ",\"bytes\":%" PRIu64 "}", held_bytes (S.active));
  if (failure_is_set (&S.fail)) {
    jb_printf (j, ",\"failed\":");
    jb_str (j, S.fail.why);
  }
  return 0;
}

/* Switch the live disk to a new empty layer on top of target (store lock
 * held, no merge running).  The old active layer is discarded.
 */
int
do_revert (struct command *c, struct layer *target, uint64_t *discarded)
{
  struct layer *old, *n;
  struct omap owner;
  char why[256];
  int r, e;

  if (failure_check_command (&S.fail, c) == -1)
    return -1;
  GATE_HOLD_FOR_CURRENT_SCOPE (&S.gate);
  old = S.active;
  /* The new owner map first: nothing can fail after the commit. */
  if (compute_owner (target, &owner) == -1)
    return fail_errno (c, ENOMEM, "out of memory for the owner map");
  n = new_layer (target, why, sizeof why);
  if (n == NULL) {
    e = errno;
    omap_free (&owner);
    return fail_errno (c, e, "%s", why);
  }
  n->active = true;
  S.active = n;
  old->active = false;
  old->detached = true;         /* keeps it out of the state file */
  r = save_state ();
  e = errno;
  if (r == -1) {
    old->detached = false;
    old->active = true;
    S.active = old;
    drop_new_layer (n);
    omap_free (&owner);
    return fail_errno (c, e, "cannot write the state file: %s",
                       strerror (e));
  }
  /* No request runs (the gate is held): the old map can go. */
  omap_free (&S.owner);
  S.owner = owner;
  *discarded = held_bytes (old);
  old->detached = false;
  if (r == 0) {
    detach (old);
    return 0;
  }
  /* The new state is in place but not durable: the old one, which names
   * the old layer, may be the one found after a crash; keep its files.
   */
  detach_keep_files (old);
  return fail_errno (c, e, "the live disk was reverted, but the state "
                     "file that says so could not be made durable (%s): a "
                     "crash may undo it; restart nbdkit", strerror (e));
}

/* @snapshot:revert/NAME[/force] */
int
store_cmd_revert (struct command *c, const char *name, bool force)
{
  struct layer *t;
  uint64_t discarded;

  if (check_name (c, name) == -1)
    return -1;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);
  if (failure_check_command (&S.fail, c) == -1)
    return -1;
  wait_merge ();
  t = find_snapshot (name);
  if (t == NULL || t->deleting)
    return command_fail (c, "ENOENT", "snapshot '%s' does not exist%s", name,
                         t ? " (it is being deleted)" : "");
  if (S.live_writers > 0 && !force)
    return command_fail (c, "EBUSY", "%u connection(s) have the live disk "
                         "open for writing; disconnect them or use "
                         "@snapshot:revert/%s/force", S.live_writers, name);
  if (do_revert (c, t, &discarded) == -1)
    return -1;
  nbdkit_debug ("snapshot: reverted to '%s'", name);
  jb_printf (&c->body, ",\"snapshot\":");
  jb_str (&c->body, name);
  jb_printf (&c->body, ",\"discarded_bytes\":%" PRIu64, discarded);
  return 0;
}

/* @snapshot:delete/NAME: mark the snapshot deleting (committed), then
 * merge it into its children in the background (merge.c).
 */
int
store_cmd_delete (struct command *c, const char *name)
{
  struct layer *l;
  size_t i;
  bool first = true, was_deleting;
  int e;

  if (check_name (c, name) == -1)
    return -1;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);
  if (failure_check_command (&S.fail, c) == -1)
    return -1;
  wait_merge ();
  l = find_snapshot (name);
  if (l == NULL)
    return command_fail (c, "ENOENT", "snapshot '%s' does not exist", name);
  if (strcmp (S.revert_on_close, name) == 0)
    return command_fail (c, "EBUSY", "snapshot '%s' is the "
                         "snapshot-revert-on-close target", name);
  join_merge ();
  was_deleting = l->deleting;
  l->deleting = true;
  switch (save_state ()) {
  case 0:
    break;
  case -1:
    e = errno;
    l->deleting = was_deleting;
    return fail_errno (c, e, "cannot write the state file: %s",
                       strerror (e));
  default:
    /* Marked deleting in the state in place: the merge runs at the
     * next start (not now: the store has failed).
     */
    return fail_errno (c, errno, "snapshot '%s' is marked deleted, but "
                       "the state file that says so could not be made "
                       "durable (%s): a crash may undo it; restart nbdkit",
                       name, strerror (errno));
  }
  jb_printf (&c->body, ",\"snapshot\":");
  jb_str (&c->body, name);
  jb_printf (&c->body, ",\"merged_into\":[");
  for (i = 1; i < MAX_SLOTS; ++i) {
    struct layer *ch = S.slots[i];
    if (ch && !ch->detached && ch->parent == l) {
      if (!first) jb_printf (&c->body, ",");
      first = false;
      jb_str (&c->body, ch->active ? NULL : ch->name);
    }
  }
  jb_printf (&c->body, "]");
  if (start_merge () == -1) {
    /* The deleting flag is on disk: the merge resumes at next start. */
    e = errno;
    snprintf (S.merge_error, sizeof S.merge_error, "cannot start the "
              "merge thread: %s (the merge is retried by the next delete "
              "and at the next start)", strerror (e));
    S.merge_error_id = l->id;
    nbdkit_error ("snapshot: delete '%s': %s", name, S.merge_error);
  }
  return 0;
}
