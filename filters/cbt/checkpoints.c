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

#include <nbdkit-filter.h>

#include "lockscope.h"
#include "tracker-internal.h"

/* Append the JSON object of checkpoint i: its name, creation time, and
 * the blocks changed since it (the union of bitmaps i .. n-1).
 */
static void
json_ckpt (struct jbuf *j, size_t i)
{
  uint64_t w, nw = payload_words (T.g.nblocks), blocks = 0, bytes;
  bool consistent = true;
  size_t k;

  for (k = i; k < T.ncps; ++k)
    if (T.cps[k]->inconsistent)
      consistent = false;
  for (w = 0; w < nw; ++w) {
    uint64_t v = 0;
    for (k = i; k < T.ncps; ++k)
      v |= __atomic_load_n (&T.cps[k]->bits.words[w], __ATOMIC_RELAXED);
    blocks += __builtin_popcountll (v);
  }
  bytes = blocks * T.g.block_size;
  /* The last block may be short. */
  if (blocks) {
    uint64_t last = T.g.nblocks - 1;
    for (k = i; k < T.ncps; ++k)
      if (bitset_get_atomic (&T.cps[k]->bits, last)) {
        bytes -= T.g.block_size - geom_block_len (&T.g, last);
        break;
      }
  }
  jb_printf (j, "{\"name\":");
  jb_str (j, T.cps[i]->name);
  jb_printf (j, ",\"created\":");
  jb_time (j, T.cps[i]->created);
  jb_printf (j, ",\"consistent\":%s,\"dirty_blocks\":%" PRIu64
             ",\"dirty_bytes\":%" PRIu64 "}",
             consistent ? "true" : "false", blocks, bytes);
}

/* Make the new checkpoint c the newest, with the gate held and the list
 * write-locked: seal the active bitmap, write c's open, save the state.
 * On failure the files and the list are as before (c is not added).
 */
static int
push_ckpt (struct command *cmd, struct ckpt *c)
{
  struct ckpt *old, **np;
  int e;

  np = realloc (T.cps, (T.ncps + 1) * sizeof *np);
  if (np == NULL)
    return command_fail (cmd, "ENOMEM", "out of memory");
  T.cps = np;
  old = active_ckpt ();
  if (old && bm_seal (old) == -1) {
    e = errno;
    return command_fail (cmd, command_errno_name (e),
                         "cannot save the bitmap of '%s': %s", old->name,
                         strerror (e));
  }
  if (bm_activate (c) == -1) {
    e = errno;
    bm_unlink (c->id);
    if (old) bm_activate (old);
    return command_fail (cmd, command_errno_name (e),
                         "cannot create the bitmap: %s", strerror (e));
  }
  T.cps[T.ncps++] = c;
  T.next_id++;
  if (save_state (true) == -1) {
    e = errno;
    T.ncps--;
    bm_unlink (c->id);
    if (old) bm_activate (old);
    return command_fail (cmd, command_errno_name (e),
                         "cannot write the state file: %s", strerror (e));
  }
  return 0;
}

/* @cbt:create/NAME. */
int
tracker_cmd_create (struct command *cmd, const char *name)
{
  struct ckpt *c;
  char why[256];
  int r;

  if (!name_valid (name, why, sizeof why))
    return command_fail (cmd, "EINVAL", "%s", why);

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&T.cmd_lock);
  if (find_ckpt (name) >= 0)
    return command_fail (cmd, "EEXIST", "checkpoint '%s' already exists",
                         name);
  c = calloc (1, sizeof *c);
  if (c == NULL || bitset_init (&c->bits, T.g.nblocks) == -1) {
    free (c);
    return command_fail (cmd, "ENOMEM", "out of memory");
  }
  c->fd = -1;
  c->id = T.next_id;
  c->created = time (NULL);
  snprintf (c->name, sizeof c->name, "%s", name);

  {
    /* Every write lands wholly before or wholly after this instant.  The
     * list moves: only with every writer and reader out.
     */
    GATE_HOLD_FOR_CURRENT_SCOPE (&T.gate);
    ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&T.rw);
    r = push_ckpt (cmd, c);
  }
  if (r == -1) {
    ckpt_free (c);
    return -1;
  }
  nbdkit_debug ("cbt: checkpoint '%s' created", name);
  jb_printf (&cmd->body, ",\"checkpoint\":");
  ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&T.rw);
  json_ckpt (&cmd->body, T.ncps - 1);
  return 0;
}

/* @cbt:list. */
int
tracker_cmd_list (struct command *cmd)
{
  size_t i;

  ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&T.rw);
  jb_printf (&cmd->body, ",\"granularity\":%" PRIu32 ",\"disk_size\":%"
             PRIu64 ",\"sync\":\"%s\",\"checkpoints\":[",
             T.g.block_size, T.g.disk_size,
             T.sync == CBT_SYNC_STRICT ? "strict" : "flush");
  for (i = 0; i < T.ncps; ++i) {
    if (i) jb_printf (&cmd->body, ",");
    json_ckpt (&cmd->body, i);
  }
  jb_printf (&cmd->body, "]");
  return 0;
}

/* Remove checkpoint i from the list, with the gate held and the list
 * write-locked: merge its bitmap into the one before (*prev, NULL if
 * none), save the state, remove its file.
 */
static int
remove_ckpt (struct command *cmd, size_t i, struct ckpt **prev)
{
  struct ckpt *c = T.cps[i];
  bool was_active = i == T.ncps - 1;
  int e;

  *prev = NULL;
  if (i > 0) {
    /* Merge into the previous checkpoint's bitmap, so that "changed since"
     * it still covers every block c recorded.
     */
    size_t w, nw = payload_words (T.g.nblocks);
    struct ckpt *p = *prev = T.cps[i - 1];

    for (w = 0; w < nw; ++w)
      p->bits.words[w] |= __atomic_load_n (&c->bits.words[w],
                                           __ATOMIC_ACQUIRE);
    p->inconsistent |= c->inconsistent;
    if ((was_active ? bm_activate (p) : bm_seal (p)) == -1) {
      e = errno;
      /* p's in-memory bits are a superset: harmless until restart,
       * where the on-disk files (unchanged) are used again.
       */
      return command_fail (cmd, command_errno_name (e),
                           "cannot save the merged bitmap: %s",
                           strerror (e));
    }
  }
  memmove (&T.cps[i], &T.cps[i + 1], (T.ncps - i - 1) * sizeof *T.cps);
  T.ncps--;
  if (save_state (true) == -1) {
    e = errno;
    memmove (&T.cps[i + 1], &T.cps[i], (T.ncps - i) * sizeof *T.cps);
    T.cps[i] = c;
    T.ncps++;
    if (was_active && *prev) {
      /* c stays the active bitmap: its file and the durable set again. */
      bm_seal (*prev);
      bm_activate (c);
    }
    return command_fail (cmd, command_errno_name (e),
                         "cannot write the state file: %s", strerror (e));
  }
  bm_unlink (c->id);
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
  i = find_ckpt (name);
  if (i < 0)
    return command_fail (cmd, "ENOENT", "checkpoint '%s' does not exist",
                         name);
  {
    GATE_HOLD_FOR_CURRENT_SCOPE (&T.gate);
    ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&T.rw);
    if (remove_ckpt (cmd, i, &prev) == -1)
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
