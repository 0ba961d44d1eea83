/* nbdsnap snapshot filter: chains of layers and their owner maps.
 *
 * The image of a layer is its chain: the layer, its parent, and so on
 * down to the plugin's disk.  An owner map resolves a chain once: for
 * each block, the slot of the topmost layer of the chain that holds it
 * (0: none, the plugin's disk).
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store-internal.h"

/* Build the owner map of the chain ending at top (NULL: the plugin):
 * from the top down, a block takes the first layer that holds it.
 * Slots start at 1, so 0 (the plugin) means "not seen yet".  Only the
 * leaves the layers hold are visited: the cost follows the written data.
 */
int
compute_owner (struct layer *top, struct omap *owner)
{
  struct layer *l;
  size_t i, w;

  if (omap_init (owner, S.g.nblocks) == -1)
    return -1;
  for (l = top; l; l = l->parent) {
    const struct smap *m = &l->st;

    for (i = sparse_next (m->present, m->nleaves, 0); i < m->nleaves;
         i = sparse_next (m->present, m->nleaves, i + 1)) {
      const uint64_t *lf = smap_leaf (m, i);
      uint16_t *ol = NULL;

      for (w = 0; w < LEAF_WORDS; ++w) {
        uint64_t p = bstate_presence (__atomic_load_n (&lf[w],
                                                       __ATOMIC_ACQUIRE));
        if (p && ol == NULL && (ol = omap_leaf_make (owner, i)) == NULL) {
          omap_free (owner);
          errno = ENOMEM;
          return -1;
        }
        while (p) {
          unsigned bit = __builtin_ctzll (p);
          uint16_t *o = &ol[w * 32 + bit / 2];
          if (*o == 0)
            *o = l->slot;
          p &= p - 1;
        }
      }
    }
  }
  return 0;
}

/* Make sure the leaves that blocks [b0, b0+nb) need in the active
 * layer a's map and in the live owner map exist.  Called before a
 * request changes anything, so that marking the blocks afterwards
 * cannot fail.  -1 on ENOMEM.
 */
int
leaves_ready (struct layer *a, uint64_t b0, uint64_t nb)
{
  size_t i, last = (b0 + nb - 1) >> LEAF_SHIFT;

  for (i = b0 >> LEAF_SHIFT; nb > 0 && i <= last; ++i) {
    if ((smap_leaf (&a->st, i) == NULL &&
         smap_leaf_make (&a->st, i) == NULL) ||
        (__atomic_load_n (&S.owner.leaf[i], __ATOMIC_ACQUIRE) == NULL &&
         omap_leaf_make (&S.owner, i) == NULL)) {
      errno = ENOMEM;
      return -1;
    }
  }
  return 0;
}

/* The number of layers of the chain from l down. */
static size_t
depth (struct layer *l)
{
  size_t n = 0;
  for (; l; l = l->parent)
    n++;
  return n;
}

/* Layers in exactly one of the chains of a and b: those above the
 * nearest common ancestor on each side.
 */
struct layer **
symdiff (struct layer *a, struct layer *b, size_t *n)
{
  size_t da = depth (a), db = depth (b);
  struct layer **out = malloc ((da + db + 1) * sizeof *out);

  *n = 0;
  if (out == NULL)
    return NULL;
  for (; da > db; da--, a = a->parent)
    out[(*n)++] = a;
  for (; db > da; db--, b = b->parent)
    out[(*n)++] = b;
  for (; a != b; a = a->parent, b = b->parent) {
    out[(*n)++] = a;
    out[(*n)++] = b;
  }
  return out;
}

/* Is l on the live chain? (store lock or gate held) */
bool
on_live_chain (struct layer *l)
{
  struct layer *p;
  for (p = S.active; p; p = p->parent)
    if (p == l)
      return true;
  return false;
}
