/* nbdsnap snapshot filter: the background merge of deleted snapshots.
 *
 * Deleting snapshot L copies every block L holds into each child of L
 * that lacks it (the bytes the child already showed through from L), then
 * re-parents the children and drops L.  One thread does this for every
 * layer marked deleting, one after the other; commands wait for it
 * (wait_merge) before they change the tree.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>

#include <nbdkit-filter.h>

#include "fileio.h"
#include "lockscope.h"
#include "store-internal.h"

/* Wait until no merge runs (store lock held). */
void
wait_merge (void)
{
  while (S.merging)
    pthread_cond_wait (&S.cond, &S.lock);
}

/* Copy block b (in state st) of l into child c if c lacks it, through
 * buf (a block's worth of room); on_live: c is on the live chain, whose
 * owner map then moves the block to c.  -1 and errno on error.
 */
static int
copy_block (struct layer *l, struct layer *c, uint64_t b, unsigned st,
            char *buf, bool on_live)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (stripe (b));
  uint64_t bl = geom_block_len (&S.g, b), off = geom_offset (&S.g, b);
  uint16_t expect = l->slot;

  if (bstate_get (&c->st, b) != BSTATE_ABSENT)
    return 0;                   /* c has its own (newer) bytes */
  if (st == BSTATE_DATA &&
      (pread_sparse (l->fd, buf, bl, off) == -1 ||
       pwrite_full (c->fd, buf, bl, off) == -1))
    return -1;
  if (bstate_set (&c->st, b, st) == BSTATE_ABSENT)
    __atomic_add_fetch (&c->held, 1, __ATOMIC_RELAXED);
  if (on_live)
    __atomic_compare_exchange_n (&S.owner[b], &expect, c->slot, false,
                                 __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
  return 0;
}

/* Copy every block of l that child c lacks into c.  Returns -1 on error. */
static int
merge_into (struct layer *l, struct layer *c)
{
  bool live = c->active;
  bool on_live;
  char *buf = malloc (S.g.block_size);
  uint64_t b;
  int r = 0;

  if (buf == NULL)
    return -1;
  pthread_mutex_lock (&S.lock);
  on_live = on_live_chain (c);
  pthread_mutex_unlock (&S.lock);
  if (live) {
    /* Make every writer see the flag before we start. */
    __atomic_store_n (&S.merge_into_active, 1, __ATOMIC_RELEASE);
    gate_hold (&S.gate);
    gate_release (&S.gate);
  }
  for (b = 0; b < S.g.nblocks && r == 0; ++b) {
    unsigned st;

    if ((b & 31) == 0 && l->st.words[b >> 5] == 0) {
      b += 31;
      continue;
    }
    st = bstate_get (&l->st, b);
    if (st == BSTATE_ABSENT)
      continue;
    if (__atomic_load_n (&S.stopping, __ATOMIC_ACQUIRE)) {
      r = -1;
      errno = EINTR;
      break;
    }
    r = copy_block (l, c, b, st, buf, on_live);
  }
  layer_touch (c);
  free (buf);
  if (r == 0 && layer_save (S.dirfd, c, &S.g, true) == -1)
    r = -1;
  return r;
}

/* The next layer waiting to be merged away (store lock held). */
struct layer *
next_deleting (void)
{
  size_t i;
  for (i = 1; i < MAX_SLOTS; ++i)
    if (S.slots[i] && S.slots[i]->deleting && !S.slots[i]->detached)
      return S.slots[i];
  return NULL;
}

/* Commit the end of the merge of l into its n children: they take l's
 * parent, l goes.  Store lock held.  -1 if the state cannot be written
 * (the merge is then redone at next start).
 */
static int
finish_merge (struct layer *l, struct layer **children, size_t n)
{
  size_t i;
  int r = 0;

  gate_hold (&S.gate);
  for (i = 0; i < n; ++i)
    children[i]->parent = l->parent;
  l->detached = true;
  if (save_state () == -1) {
    nbdkit_error ("snapshot: finishing the delete of '%s': cannot write "
                  "the state file: %m (it will be retried at next start)",
                  l->name);
    for (i = 0; i < n; ++i)
      children[i]->parent = l;
    l->detached = false;
    r = -1;
  }
  else {
    l->detached = false;
    detach (l);
    nbdkit_debug ("snapshot: delete finished");
  }
  gate_release (&S.gate);
  return r;
}

/* Merge one deleting layer into its children and drop it.  Called and
 * returns with the store lock held.  -1 on error (left for next start).
 */
static int
merge_one (struct layer *l, struct layer **children)
{
  size_t i, n = 0;
  int r = 0;

  for (i = 1; i < MAX_SLOTS; ++i) {
    struct layer *c = S.slots[i];
    if (c && !c->detached && c->parent == l) {
      children[n++] = c;
      c->refs++;
    }
  }
  pthread_mutex_unlock (&S.lock);

  nbdkit_debug ("snapshot: merging '%s' into %zu child layer(s)", l->name, n);
  for (i = 0; i < n && r == 0; ++i)
    r = merge_into (l, children[i]);
  __atomic_store_n (&S.merge_into_active, 0, __ATOMIC_RELEASE);

  pthread_mutex_lock (&S.lock);
  if (r == 0)
    r = finish_merge (l, children, n);
  else if (!S.stopping)
    nbdkit_error ("snapshot: merging '%s' failed: %m (it will be retried "
                  "at next start)", l->name);
  for (i = 0; i < n; ++i)
    unref (children[i]);
  return r;
}

/* Background thread: merge away every layer marked deleting. */
static void *
merge_thread (void *arg)
{
  struct layer **children = malloc (MAX_SLOTS * sizeof *children);
  struct layer *l;

  pthread_mutex_lock (&S.lock);
  while (children && !S.stopping && (l = next_deleting ()) != NULL)
    if (merge_one (l, children) == -1)
      break;
  S.merging = false;
  pthread_cond_broadcast (&S.cond);
  pthread_mutex_unlock (&S.lock);
  free (children);
  return NULL;
}

/* Start the merge thread (store lock held).  -1 and errno. */
int
start_merge (void)
{
  int e;

  S.merging = true;
  e = pthread_create (&S.merge_tid, NULL, merge_thread, NULL);
  if (e != 0) {
    S.merging = false;
    errno = e;
    return -1;
  }
  S.merge_tid_valid = true;
  return 0;
}

/* Wait for the merge thread, if any, to end. */
void
join_merge (void)
{
  if (S.merge_tid_valid) {
    pthread_join (S.merge_tid, NULL);
    S.merge_tid_valid = false;
  }
}
