/* nbdsnap cbt filter: the checkpoint commands.
 *
 * @cbt:create/NAME, @cbt:list and @cbt:delete/NAME, and what else looks
 * at the list of checkpoints as a whole (list_exports, the lock a
 * snapshot revert takes).  Commands are serialized by T.cmd_lock; create
 * and delete also hold the gate (no write in flight) and the list's
 * write lock while they change the list and its files
 * (docs/cbt-format.md sections 6.4 and 6.5).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "lockscope.h"
#include "tracker-internal.h"

/* What @cbt:list says of one checkpoint, computed by ckpt_figures. */
struct ckpt_fig {
  uint64_t blocks;              /* blocks changed since it */
  bool consistent;              /* no inconsistent bitmap from it on */
  bool last;                    /* the last (maybe short) block changed */
};

/* The figures of checkpoints from .. T.ncps-1 into f[0 .. T.ncps-from):
 * checkpoint k's changed blocks are the union of bitmaps k .. n-1.  One
 * running union per leaf, from the newest bitmap to the oldest: a bit
 * counts for checkpoint k if bitmap k or a later one has it, so each new
 * bit found in bitmap k adds one to k and to every older checkpoint.
 * Cost: the leaves the bitmaps have, once each (not once per older
 * checkpoint).
 */
static void
ckpt_figures (size_t from, struct ckpt_fig *f)
{
  const size_t n = T.ncps - from, nl = sbm_nleaves (T.g.nblocks);
  const uint64_t last = T.g.nblocks - 1;
  uint64_t u[LEAF_WORDS];
  size_t k, l, w;

  for (k = n; k-- > 0;) {
    f[k].blocks = 0;
    f[k].consistent = !ckpt_inconsistent (T.cps[from + k]) &&
      (k + 1 == n || f[k + 1].consistent);
    f[k].last = T.g.nblocks &&
      (sbm_get (&T.cps[from + k]->bits, last) || (k + 1 < n && f[k + 1].last));
  }
  for (l = 0; l < nl; ++l) {
    uint64_t count = 0;         /* blocks of the union of this leaf so far */
    bool any = false;

    for (k = from; k < T.ncps && !any; ++k)
      any = sbm_leaf (&T.cps[k]->bits, l) != NULL;
    if (!any)
      continue;
    memset (u, 0, sizeof u);
    for (k = n; k-- > 0;) {
      const uint64_t *leaf = sbm_leaf (&T.cps[from + k]->bits, l);

      for (w = 0; leaf && w < LEAF_WORDS; ++w) {
        uint64_t v = __atomic_load_n (&leaf[w], __ATOMIC_ACQUIRE) & ~u[w];
        if (v) {
          count += __builtin_popcountll (v);
          u[w] |= v;
        }
      }
      f[k].blocks += count;
    }
  }
}

/* Append the JSON object of a checkpoint c with figures f: its name,
 * creation time, and the blocks changed since it.
 */
static void
json_fig (struct jbuf *j, const struct ckpt *c, const struct ckpt_fig *f)
{
  uint64_t bytes = f->blocks * T.g.block_size;

  /* The last block may be short. */
  if (f->blocks && f->last)
    bytes -= T.g.block_size - geom_block_len (&T.g, T.g.nblocks - 1);
  jb_printf (j, "{\"name\":");
  jb_str (j, c->name);
  jb_printf (j, ",\"created\":");
  jb_time (j, c->created);
  jb_printf (j, ",\"consistent\":%s,\"dirty_blocks\":%" PRIu64
             ",\"dirty_bytes\":%" PRIu64 "}",
             f->consistent ? "true" : "false", f->blocks, bytes);
}

/* Append the JSON objects of checkpoints i .. n-1 (just the newest for
 * create, all of them for list), comma-separated: each one's name,
 * creation time, and the blocks changed since it (the union of bitmaps
 * i .. n-1).  Out of memory: j->oom (the command fails with ENOMEM).
 */
void
json_ckpts (struct jbuf *j, size_t i)
{
  struct ckpt_fig *f;
  size_t k;

  if (i >= T.ncps)
    return;
  f = calloc (T.ncps - i, sizeof *f);
  if (f == NULL) {
    j->oom = true;
    return;
  }
  ckpt_figures (i, f);
  for (k = i; k < T.ncps; ++k) {
    if (k > i)
      jb_printf (j, ",");
    json_fig (j, T.cps[k], &f[k - i]);
  }
  free (f);
}

/* An error that cannot be undone (a file is in place but its directory
 * is not durable, or a rollback failed): enter the failed state and fail
 * the command with EIO.  what says what failed.
 */
static int
fail_hard (struct command *cmd, int e, const char *what)
{
  tracker_fail (e, "%s", what);
  return command_fail (cmd, "EIO", "%s: %s; the cbt filter takes no more "
                       "changes until nbdkit is restarted (see FAILURES in "
                       "nbdkit-cbt-filter(1))", what, strerror (e));
}

/* Undo the sealing of old, the active bitmap, after a create failed:
 * its file becomes open again and takes in-place writes.  A rollback
 * that fails leaves no file for the in-place writes: the failed state.
 */
static void
reactivate (struct ckpt *old)
{
  if (old && bm_activate (old) != 0)
    tracker_fail (errno, "cannot make the bitmap of checkpoint '%s' active "
                  "again after a failed create", old->name);
}

/* Make the new checkpoint c the newest, with the gate held and the list
 * write-locked (docs/cbt-format.md section 6.4): seal the active
 * bitmap, write c's open, save the state.  On failure c is not added and
 * the files say what they said (or the tracker is failed).
 */
int
push_ckpt (struct command *cmd, struct ckpt *c)
{
  struct ckpt *old, **np;
  char what[160];
  int e, r;

  np = realloc (T.cps, (T.ncps + 1) * sizeof *np);
  if (np == NULL)
    return command_fail (cmd, "ENOMEM", "out of memory");
  T.cps = np;
  old = active_ckpt ();
  if (old) {
    /* 1. The old active bitmap's file gets every bit it has. */
    r = bm_seal (old);
    e = errno;
    snprintf (what, sizeof what, "cannot seal the bitmap of '%s'",
              old->name);
    if (r == -1)
      return command_fail_errno (cmd, e, "%s", what);
    if (r == -2)
      return fail_hard (cmd, e, what);
  }
  /* 2. c's file, open, all zero; not named by the state yet. */
  r = bm_write (c, NULL, false);
  e = errno;
  if (r == -2)
    return fail_hard (cmd, e, "cannot create the bitmap of the new "
                      "checkpoint");
  if (r == -1 || bm_open (c) == -1) {
    e = errno;
    if (r == 0 && bm_unlink (c->id) == -1)
      nbdkit_error ("cbt: cannot remove the unused bitmap: %m (no state "
                    "names it: it is removed at the next start)");
    reactivate (old);
    return command_fail_errno (cmd, e, "cannot create the bitmap");
  }
  /* 3. The state names c: the commit. */
  T.cps[T.ncps++] = c;
  T.next_id++;
  r = save_state (true);
  e = errno;
  if (r == -1) {
    T.ncps--;
    if (bm_unlink (c->id) == -1)
      nbdkit_error ("cbt: cannot remove the unused bitmap: %m (no state "
                    "names it: it is removed at the next start)");
    reactivate (old);
    return command_fail_errno (cmd, e, "cannot write the state file");
  }
  bm_make_active (c);
  if (r == -2)
    return fail_hard (cmd, e, "the state file naming the new checkpoint "
                      "is in place, but cbt-dir could not be made durable");
  return 0;
}

/* A new checkpoint called name, not in the list yet (T.cmd_lock held):
 * the name valid and free, the tracker not failed.  NULL after
 * command_fail.
 */
struct ckpt *
new_ckpt (struct command *cmd, const char *name)
{
  struct ckpt *c;
  char why[256];

  if (!name_valid (name, why, sizeof why)) {
    command_fail (cmd, "EINVAL", "%s", why);
    return NULL;
  }
  if (failure_check_command (&T.fail, cmd) == -1)
    return NULL;
  if (find_ckpt (name) >= 0) {
    command_fail (cmd, "EEXIST", "checkpoint '%s' already exists", name);
    return NULL;
  }
  c = calloc (1, sizeof *c);
  if (c == NULL || sbm_init (&c->bits, T.g.nblocks) == -1) {
    free (c);
    command_fail (cmd, "ENOMEM", "out of memory");
    return NULL;
  }
  c->fd = -1;
  c->id = T.next_id;
  c->created = time (NULL);
  snprintf (c->name, sizeof c->name, "%s", name);
  return c;
}

/* The instant of a new checkpoint (gate held, list write-locked): the
 * writes acknowledged so far made durable below, then c the newest.
 * Writes acknowledged before this instant must not be lost by a crash
 * after it: the disk would go back to older content in blocks the new
 * bitmap does not hold, and an incremental backup since this checkpoint
 * would miss them.  No write can start meanwhile (gate).  -1 after
 * command_fail, c freed if it was not added.
 */
int
flush_push_ckpt (struct command *cmd, struct ckpt *c, nbdkit_next *below)
{
  int r, err = 0;

  /* A write may have failed the tracker while we waited. */
  if (failure_check_command (&T.fail, cmd) == -1)
    r = -1;
  else if (below && below->can_flush (below) == 1 &&
           below->flush (below, 0, &err) == -1)
    r = command_fail_errno (cmd, err, "cannot flush the disk below "
                            "before the checkpoint");
  else
    r = push_ckpt (cmd, c);
  if (r == -1 && active_ckpt () != c)
    ckpt_free (c);              /* not added */
  return r;
}

/* @cbt:create/NAME. */
int
tracker_cmd_create (struct command *cmd, const char *name,
                    nbdkit_next *below)
{
  struct ckpt *c;
  int r;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&T.cmd_lock);
  c = new_ckpt (cmd, name);
  if (c == NULL)
    return -1;
  {
    /* Every write lands wholly before or wholly after this instant.  The
     * list moves: only with every writer and reader out.
     */
    GATE_HOLD_FOR_CURRENT_SCOPE (&T.gate);
    ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&T.rw);
    r = flush_push_ckpt (cmd, c, below);
  }
  if (r == -1)
    return -1;
  nbdkit_debug ("cbt: checkpoint '%s' created", name);
  jb_printf (&cmd->body, ",\"checkpoint\":");
  ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&T.rw);
  json_ckpts (&cmd->body, T.ncps - 1);
  return 0;
}

/* @cbt:list. */
int
tracker_cmd_list (struct command *cmd)
{
  ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&T.rw);
  jb_printf (&cmd->body, ",\"granularity\":%" PRIu32 ",\"disk_size\":%"
             PRIu64 ",\"sync\":\"%s\",\"checkpoints\":[",
             T.g.block_size, T.g.disk_size,
             T.sync == CBT_SYNC_STRICT ? "strict" : "flush");
  json_ckpts (&cmd->body, 0);
  jb_printf (&cmd->body, "]");
  return 0;
}

/* Remove checkpoint i from the list, with the gate held and the list
 * write-locked (docs/cbt-format.md section 6.5): write the bitmap before
 * it (*prev, NULL if none) with its bits merged in, save the state,
 * remove its file.  Nothing needs undoing with I/O: until the state is
 * saved, the only change is the file of *prev, which holds more bits
 * than before (never fewer), and may be open (sealed at stop).
 */
int
remove_ckpt (struct command *cmd, size_t i, struct ckpt **prev)
{
  struct ckpt *c = T.cps[i], *p = i > 0 ? T.cps[i - 1] : NULL;
  bool was_active = i == T.ncps - 1, p_inconsistent = false;
  int r, e;

  *prev = p;
  /* p gets c's leaves first (empty ones): the merge below cannot fail
   * after the file is written.
   */
  if (p && sbm_reserve (&p->bits, &c->bits) == -1)
    return command_fail (cmd, "ENOMEM", "out of memory");
  if (p) {
    /* 1. p's file gets p OR c, so that "changed since" p still covers
     * every block c recorded: open if c was the active bitmap (p becomes
     * it), sealed otherwise.
     */
    r = bm_write (p, c, !was_active);
    e = errno;
    if (r == -1)
      return command_fail_errno (cmd, e, "cannot save the merged bitmap");
    sbm_or (&p->bits, &c->bits, false); /* as the file now says */
    if (r == -2)
      return fail_hard (cmd, e, "the merged bitmap is in place, but "
                        "cbt-dir could not be made durable");
    if (was_active && bm_open (p) == -1) {
      e = errno;
      return command_fail_errno (cmd, e, "cannot open the merged bitmap");
    }
    p_inconsistent = ckpt_inconsistent (p);
    if (ckpt_inconsistent (c))
      ckpt_set_inconsistent (p, true);
  }
  /* 2. The state without c: the commit. */
  memmove (&T.cps[i], &T.cps[i + 1], (T.ncps - i - 1) * sizeof *T.cps);
  T.ncps--;
  r = save_state (true);
  e = errno;
  if (r == -1) {
    memmove (&T.cps[i + 1], &T.cps[i], (T.ncps - i) * sizeof *T.cps);
    T.cps[i] = c;
    T.ncps++;
    if (p) {
      ckpt_set_inconsistent (p, p_inconsistent);
      if (was_active) {
        close (p->fd);          /* c stays the active bitmap */
        p->fd = -1;
      }
    }
    return command_fail_errno (cmd, e, "cannot write the state file");
  }
  /* 3. Done: p's file held all its bits when it was written, and no
   * write came in since.
   */
  if (was_active && p)
    bm_make_active (p);
  if (r == -2) {
    ckpt_free (c);              /* its file stays: no removal now */
    return fail_hard (cmd, e, "the state file without the checkpoint is "
                      "in place, but cbt-dir could not be made durable");
  }
  if (bm_unlink (c->id) == -1)
    nbdkit_error ("cbt: cannot remove the bitmap of the deleted checkpoint "
                  "'%s': %m (no state names it: it is removed at the next "
                  "start)", c->name);
  ckpt_free (c);
  return 0;
}

/* @cbt:delete/NAME. */
int
tracker_cmd_delete (struct command *cmd, const char *name)
{
  struct ckpt *prev;
  char why[256];
  int i;

  if (!name_valid (name, why, sizeof why))
    return command_fail (cmd, "EINVAL", "%s", why);

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&T.cmd_lock);
  if (failure_check_command (&T.fail, cmd) == -1)
    return -1;
  i = find_ckpt (name);
  if (i < 0)
    return command_fail (cmd, "ENOENT", "checkpoint '%s' does not exist",
                         name);
  {
    GATE_HOLD_FOR_CURRENT_SCOPE (&T.gate);
    ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&T.rw);
    /* A write may have failed the tracker while we waited. */
    if (failure_check_command (&T.fail, cmd) == -1 ||
        remove_ckpt (cmd, i, &prev) == -1)
      return -1;
  }
  nbdkit_debug ("cbt: checkpoint '%s' deleted", name);
  jb_printf (&cmd->body, ",\"checkpoint\":");
  jb_str (&cmd->body, name);
  jb_printf (&cmd->body, ",\"merged_into\":");
  jb_str (&cmd->body, prev ? prev->name : NULL);
  return 0;
}

/* Call fn with the name of each checkpoint, oldest first. */
void
tracker_foreach (void (*fn) (const char *name, void *opaque), void *opaque)
{
  size_t i;

  ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&T.rw);
  for (i = 0; i < T.ncps; ++i)
    fn (T.cps[i]->name, opaque);
}

/* Keep the commands out (a snapshot revert is passing down). */
void
tracker_commands_lock (void)
{
  pthread_mutex_lock (&T.cmd_lock);
}

/* Let the commands in again. */
void
tracker_commands_unlock (void)
{
  pthread_mutex_unlock (&T.cmd_lock);
}
