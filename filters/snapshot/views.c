/* nbdsnap snapshot filter: views and live connections.
 *
 * A view (@snapshot/NAME, @snapshot:diff/...) pins every layer of the
 * chains it reads, so that neither a delete nor a revert frees them
 * under it, and resolves its snapshot's chain into a private owner map.
 * Live connections are counted: revert refuses while writers are
 * connected, and revert-on-close acts when the last one leaves.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "lockscope.h"
#include "store-internal.h"

/* Take a reference on every layer of the chain from top (store lock
 * held).  -1 if out of memory.
 */
static int
pin_chain (struct view *v, struct layer *top)
{
  for (; top; top = top->parent) {
    struct layer **np = realloc (v->pinned,
                                 (v->npinned + 1) * sizeof *np);
    if (np == NULL)
      return -1;
    v->pinned = np;
    v->pinned[v->npinned++] = top;
    top->refs++;
  }
  return 0;
}

/* The snapshot name for a view, or NULL with a reason in why. */
static struct layer *
view_snapshot (const char *name, char *why, size_t whylen)
{
  struct layer *l = find_snapshot (name);

  if (l == NULL || l->deleting) {
    snprintf (why, whylen, "snapshot '%s' does not exist%s", name,
              l ? " (it is being deleted)" : "");
    return NULL;
  }
  return l;
}

/* Set up view v (store lock held).  -1 with a reason in why, leaving
 * in v what store_view_close releases.
 */
static int
view_open_locked (struct view *v, const char *name, const char *base,
                  char *why, size_t whylen)
{
  struct layer *t = NULL, *b = NULL;

  if (name && (t = view_snapshot (name, why, whylen)) == NULL)
    return -1;
  if (base && (b = view_snapshot (base, why, whylen)) == NULL)
    return -1;
  v->live = (name == NULL);
  v->top = t;
  v->base = b;
  if (t && pin_chain (v, t) == -1)
    goto oom;
  v->ntop = v->npinned;
  if (b && pin_chain (v, b) == -1)
    goto oom;
  if (t) {
    if (compute_owner (t, &v->owner) == -1)
      goto oom;
  }
  return 0;
 oom:
  snprintf (why, whylen, "out of memory");
  return -1;
}

/* Open a view of snapshot name (NULL: the live disk), or the change map
 * since base.
 */
int
store_view_open (struct view *v, const char *name, const char *base,
                 char *why, size_t whylen)
{
  int r;

  memset (v, 0, sizeof *v);
  if ((name && !name_valid (name, why, whylen)) ||
      (base && !name_valid (base, why, whylen)))
    return -1;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);
    r = view_open_locked (v, name, base, why, whylen);
  }
  if (r == -1)
    store_view_close (v);
  return r;
}

/* Release what a view holds. */
void
store_view_close (struct view *v)
{
  size_t i;

  pthread_mutex_lock (&S.lock);
  for (i = 0; i < v->npinned; ++i)
    unref (v->pinned[i]);
  pthread_mutex_unlock (&S.lock);
  free (v->pinned);
  omap_free (&v->owner);
  memset (v, 0, sizeof *v);
}

/* A connection to the live disk opens. */
void
store_live_open (bool writable)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);

  S.live_conns++;
  if (writable)
    S.live_writers++;
}

/* The last client left: revert to the snapshot-revert-on-close target
 * (store lock held).
 */
static void
revert_on_close (void)
{
  struct command c = { .filter = "snapshot", .verb = "revert" };
  struct layer *t;
  uint64_t discarded;

  wait_merge ();
  t = find_snapshot (S.revert_on_close);
  if (t == NULL || t->deleting)
    nbdkit_debug ("snapshot: revert-on-close: no snapshot '%s' yet",
                  S.revert_on_close);
  else if (do_revert (&c, t, &discarded) == -1)
    nbdkit_error ("snapshot: revert-on-close to '%s' failed: %s",
                  S.revert_on_close, c.why);
  else
    nbdkit_debug ("snapshot: last client left: reverted to '%s'",
                  S.revert_on_close);
}

/* A connection to the live disk closes. */
void
store_live_close (bool writable)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);

  S.live_conns--;
  if (writable)
    S.live_writers--;
  if (S.live_conns == 0 && S.revert_on_close[0] && !S.stopping)
    revert_on_close ();
}

/* A live connection opens exportname: it must be the disk we keep. */
int
store_live_bind (const char *exportname)
{
  return disk_name_bind (&S.disk, exportname, "snapshot");
}

/* The export views read. */
const char *
store_disk_name (void)
{
  return disk_name_get (&S.disk, "snapshot");
}
