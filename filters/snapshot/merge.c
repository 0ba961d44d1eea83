/* nbdsnap snapshot filter: the background merge of deleted snapshots.
 *
 * Deleting snapshot L copies every block (or sector) L holds into each
 * child of L that lacks it (the bytes the child already showed through
 * from L), then re-parents the children and drops L.  One thread does this for every
 * layer marked deleting, one after the other; commands wait for it
 * (wait_merge) before they change the tree.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "fileio.h"
#include "gate.h"
#include "ldata.h"
#include "lockscope.h"
#include "partial.h"
#include "store-internal.h"

/* Wait until no merge runs (store lock held). */
void
wait_merge (void)
{
  while (S.merging)
    pthread_cond_wait (&S.cond, &S.lock);
}

/* Copy block b (in state st) of l into child c where c lacks it (the
 * whole block, or the sectors c's partial block lacks: partial.h),
 * through buf (a block's worth of room); on_live: c is on the live
 * chain, whose owner map then moves the block to c.  -1 and errno on
 * error (c's state of b unchanged), with what failed in why.
 */
static int
copy_block (struct layer *l, struct layer *c, uint64_t b, unsigned st,
            char *buf, bool on_live, char *why, size_t whylen)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (stripe (b));
  uint64_t bl = geom_block_len (&S.g, b), off = geom_offset (&S.g, b);
  uint16_t expect = l->slot;
  unsigned cst = smap_get (&c->st, b);

  if (cst == BSTATE_DATA || cst == BSTATE_ZERO)
    return 0;                   /* c has its own (newer) bytes */
  if (smap_leaf_make (&c->st, b >> LEAF_SHIFT) == NULL) {
    snprintf (why, whylen, "out of memory for the map of layer %" PRIu64,
              c->id);
    errno = ENOMEM;
    return -1;
  }
  if (st == BSTATE_PARTIAL || cst == BSTATE_PARTIAL) {
    if (partial_merge (l, st, c, cst, b, buf, why, whylen) == -1)
      return -1;
  }
  else {
    if (st == BSTATE_DATA) {
      if (ldata_pread (l, buf, bl, off) == -1) {
        snprintf (why, whylen, "reading layer %" PRIu64 ": %s", l->id,
                  strerror (errno));
        return -1;
      }
      if (ldata_pwrite (c, buf, bl, off) == -1) {
        snprintf (why, whylen, "writing layer %" PRIu64 ": %s", c->id,
                  strerror (errno));
        return -1;
      }
    }
    if (smap_set (&c->st, b, st) == BSTATE_ABSENT)
      __atomic_add_fetch (&c->held, 1, __ATOMIC_RELAXED);
  }
  if (on_live && cst == BSTATE_ABSENT)
    omap_cas (&S.owner, b, expect, c->slot);
  return 0;
}

/* Copy every block of l that child c lacks into c, and make c durable.
 * -1 on error, with what failed in why.
 */
static int
merge_into (struct layer *l, struct layer *c, char *why, size_t whylen)
{
  bool live = c->active;
  bool on_live;
  char *buf = malloc (S.g.block_size);
  uint64_t b;
  int r = 0;

  if (buf == NULL) {
    snprintf (why, whylen, "out of memory");
    return -1;
  }
  pthread_mutex_lock (&S.lock);
  on_live = on_live_chain (c);
  pthread_mutex_unlock (&S.lock);
  if (live) {
    /* Make every writer see the flag before we start. */
    __atomic_store_n (&S.merge_into_active, 1, __ATOMIC_RELEASE);
    gate_hold (&S.gate);
    gate_release (&S.gate);
  }
  /* Only the leaves l holds; within them, only the words with blocks. */
  for (b = 0; b < S.g.nblocks && r == 0; ++b) {
    unsigned st;

    const uint64_t *lf = smap_leaf (&l->st, b >> LEAF_SHIFT);

    if (lf == NULL) {           /* on to the next leaf l holds */
      size_t nx = sparse_next (l->st.present, l->st.nleaves,
                               (b >> LEAF_SHIFT) + 1);
      b = ((uint64_t) nx << LEAF_SHIFT) - 1;
      continue;
    }
    if ((b & 31) == 0 && lf[(b & (LEAF_BLOCKS - 1)) >> 5] == 0) {
      b += 31;
      continue;
    }
    st = smap_get (&l->st, b);
    if (st == BSTATE_ABSENT)
      continue;
    if (__atomic_load_n (&S.stopping, __ATOMIC_ACQUIRE)) {
      snprintf (why, whylen, "nbdkit is stopping");
      r = -1;
      break;
    }
    if (failure_is_set (&S.fail)) {
      snprintf (why, whylen, "the store failed: %.150s", S.fail.why);
      r = -1;
      break;
    }
    r = copy_block (l, c, b, st, buf, on_live, why, whylen);
  }
  layer_touch (c);
  free (buf);
  if (r == 0 && save_layer (c, true, "merge: making a child layer "
                            "durable") == -1) {
    snprintf (why, whylen, "making layer %" PRIu64 " durable: %.120s", c->id,
              failure_is_set (&S.fail) ? S.fail.why : strerror (errno));
    r = -1;
  }
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

/* Why the merge of l stopped, or NULL (store lock held). */
const char *
merge_error (const struct layer *l)
{
  return S.merge_error[0] && S.merge_error_id == l->id ? S.merge_error
    : NULL;
}

/* Commit the end of the merge of l into its n children: they take l's
 * parent, l goes.  Store lock held.  -1 if the state file still in place
 * is the old one (the merge is then redone at next start).
 */
static int
finish_merge (struct layer *l, struct layer **children, size_t n,
              char *why, size_t whylen)
{
  GATE_HOLD_FOR_CURRENT_SCOPE (&S.gate);
  size_t i;
  int r, e;

  for (i = 0; i < n; ++i)
    children[i]->parent = l->parent;
  l->detached = true;
  r = save_state ();
  e = errno;
  l->detached = false;
  if (r == -1) {
    snprintf (why, whylen, "cannot write the state file: %s", strerror (e));
    for (i = 0; i < n; ++i)
      children[i]->parent = l;
    return -1;
  }
  if (r == -2) {
    /* In place, not durable: keep the new tree, and l's files for the
     * old state a crash may bring back.
     */
    nbdkit_error ("snapshot: finishing the delete of '%s': the state file "
                  "could not be made durable: %s (a crash may bring the "
                  "snapshot back, merging)", l->name, strerror (e));
    detach_keep_files (l);
    return 0;
  }
  detach (l);
  nbdkit_debug ("snapshot: delete finished");
  return 0;
}

/* Merge one deleting layer into its children and drop it.  Called and
 * returns with the store lock held.  -1 on error (S.merge_error says
 * why; the merge is retried by the next delete and at the next start).
 */
static int
merge_one (struct layer *l)
{
  struct layer **children;
  size_t i, n = 0;
  char why[200] = "";
  int r = 0;

  for (i = 1; i < MAX_SLOTS; ++i) {
    struct layer *c = S.slots[i];
    if (c && !c->detached && c->parent == l)
      n++;
  }
  children = malloc ((n + 1) * sizeof *children);
  if (children == NULL) {
    snprintf (why, sizeof why, "out of memory");
    r = -1;
    goto out;
  }
  n = 0;
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
    r = merge_into (l, children[i], why, sizeof why);
  __atomic_store_n (&S.merge_into_active, 0, __ATOMIC_RELEASE);

  pthread_mutex_lock (&S.lock);
  if (r == 0)
    r = finish_merge (l, children, n, why, sizeof why);
  for (i = 0; i < n; ++i)
    unref (children[i]);
  free (children);
 out:
  if (r == -1) {
    snprintf (S.merge_error, sizeof S.merge_error, "%s", why);
    S.merge_error_id = l->id;
    if (!S.stopping)
      nbdkit_error ("snapshot: merging '%s' failed: %s (it is retried by "
                    "the next delete and at the next start)", l->name, why);
  }
  return r;
}

/* Background thread: merge away every layer marked deleting. */
static void *
merge_thread (void *arg)
{
  struct layer *l;

  pthread_mutex_lock (&S.lock);
  while (!S.stopping && (l = next_deleting ()) != NULL)
    if (merge_one (l) == -1)
      break;
  S.merging = false;
  pthread_cond_broadcast (&S.cond);
  pthread_mutex_unlock (&S.lock);
  return NULL;
}

/* Start the merge thread (store lock held).  -1 and errno. */
int
start_merge (void)
{
  int e;

  if (failure_is_set (&S.fail)) {
    errno = EIO;
    return -1;
  }
  S.merge_error[0] = '\0';
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
