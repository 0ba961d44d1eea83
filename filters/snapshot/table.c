/* nbdsnap snapshot filter: the layer table.
 *
 * Every layer in memory has a slot in S.slots (1..MAX_SLOTS-1; owner maps
 * name layers by slot, 0 being the plugin).  A layer is referenced by the
 * table and by each open view whose chain holds it; it is freed when the
 * last reference goes.  All of this runs under the store lock.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "fdlimit.h"
#include "ldata.h"
#include "lockscope.h"
#include "store-internal.h"

/* When errno says nbdkit ran out of descriptors, add to why which limit
 * to raise: every layer keeps its data files open.  nlayers 0 counts the
 * layers in the table.  errno is kept.
 */
void
hint_open_files (char *why, size_t whylen, size_t nlayers)
{
  int e = errno;
  size_t len = strlen (why);
  size_t i;

  if (fdlimit_exhausted (e) && len < whylen) {
    if (nlayers == 0)
      for (i = 1; i < MAX_SLOTS; ++i)
        nlayers += S.slots[i] != NULL;
    snprintf (why + len, whylen - len, "; the %zu layers keep %u data "
              "file%s open each; " FDLIMIT_HINT, nlayers, ldata_layout.nseg,
              ldata_layout.nseg == 1 ? "" : "s");
  }
  errno = e;
}

/* The snapshot (frozen or deleting layer) called name, or NULL. */
struct layer *
find_snapshot (const char *name)
{
  size_t i;
  for (i = 1; i < MAX_SLOTS; ++i) {
    struct layer *l = S.slots[i];
    if (l && !l->active && !l->detached && strcmp (l->name, name) == 0)
      return l;
  }
  return NULL;
}

/* Give l a free slot.  -1 if the table is full. */
int
alloc_slot (struct layer *l)
{
  size_t i;
  for (i = 1; i < MAX_SLOTS; ++i)
    if (S.slots[i] == NULL) {
      S.slots[i] = l;
      l->slot = i;
      return 0;
    }
  return -1;
}

/* Drop a reference (store lock held); free the layer at zero. */
void
unref (struct layer *l)
{
  if (--l->refs == 0) {
    S.slots[l->slot] = NULL;
    layer_free_background (l);
  }
}

/* Remove l from the table: its files go now, its memory when unused. */
void
detach (struct layer *l)
{
  l->detached = true;
  layer_unlink (S.dirfd, l->id);
  unref (l);
}

/* Remove l from the table, keeping its files. */
void
detach_keep_files (struct layer *l)
{
  l->detached = true;
  unref (l);
}

/* A new empty layer on top of parent, with its empty map on disk. */
struct layer *
new_layer (struct layer *parent, char *why, size_t whylen)
{
  struct layer *l;
  int e;

  if (failure_is_set (&S.fail)) {
    snprintf (why, whylen, "the store is in the failed state: %s",
              S.fail.why);
    errno = EIO;
    return NULL;
  }
  l = layer_open (S.dirfd, S.next_id, &S.g, true, why, whylen);
  if (l == NULL)
    return NULL;                /* errno from layer_open */
  if (alloc_slot (l) == -1) {
    snprintf (why, whylen, "too many layers (at most %d)", MAX_SLOTS - 1);
    errno = ENOSPC;
    goto err;
  }
  if (save_layer (l, true, "writing the map of a new layer") == -1) {
    snprintf (why, whylen, "cannot write the map of a new layer: %s",
              strerror (errno));
    S.slots[l->slot] = NULL;
    goto err;
  }
  S.next_id++;
  l->parent = parent;
  return l;
 err:
  e = errno;
  layer_unlink (S.dirfd, l->id);
  layer_free (l);
  errno = e;
  return NULL;
}

/* Discard a layer made by new_layer that never got committed. */
void
drop_new_layer (struct layer *l)
{
  S.slots[l->slot] = NULL;
  layer_unlink (S.dirfd, l->id);
  layer_free (l);
}

/* Call fn for the name of each snapshot (for list_exports). */
void
store_foreach_snapshot (void (*fn) (const char *name, void *opaque),
                        void *opaque)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);
  size_t i;

  for (i = 1; i < MAX_SLOTS; ++i) {
    struct layer *l = S.slots[i];
    if (l && !l->active && !l->detached && !l->deleting)
      fn (l->name, opaque);
  }
}
