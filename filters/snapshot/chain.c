/* nbdsnap snapshot filter: chains of layers and their owner maps.
 *
 * The image of a layer is its chain: the layer, its parent, and so on
 * down to the plugin's disk.  An owner map resolves a chain once: for
 * each block, the slot of the topmost layer of the chain that holds it
 * (0: none, the plugin's disk).
 */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "store-internal.h"

/* Collect the chain top..root into out; returns its length. */
static size_t
chain_of (struct layer *top, struct layer **out)
{
  size_t n = 0;
  for (; top; top = top->parent)
    out[n++] = top;
  return n;
}

/* Compute the owner map of the chain ending at top (NULL: the plugin). */
void
compute_owner (struct layer *top, uint16_t *owner)
{
  struct layer **chain = malloc (MAX_SLOTS * sizeof *chain);
  size_t n, w;

  memset (owner, 0, S.g.nblocks * sizeof *owner);
  if (chain == NULL)
    abort ();                   /* 512 KiB; nothing sensible to do */
  n = chain_of (top, chain);
  while (n-- > 0) {             /* root first, so upper layers win */
    struct layer *l = chain[n];
    for (w = 0; w < l->st.nwords; ++w) {
      uint64_t p = bstate_presence (l->st.words[w]);
      while (p) {
        unsigned bit = __builtin_ctzll (p);
        owner[w * 32 + bit / 2] = l->slot;
        p &= p - 1;
      }
    }
  }
  free (chain);
}

/* Layers in exactly one of the chains of a and b. */
size_t
symdiff (struct layer *a, struct layer *b, struct layer **out)
{
  unsigned char *in_a = calloc (MAX_SLOTS + 1, 1);
  struct layer **ca = malloc (MAX_SLOTS * sizeof *ca);
  struct layer **cb = malloc (MAX_SLOTS * sizeof *cb);
  size_t na, nb, i, n = 0;

  if (ca == NULL || cb == NULL || in_a == NULL)
    abort ();
  na = chain_of (a, ca);
  nb = chain_of (b, cb);
  for (i = 0; i < na; ++i) in_a[ca[i]->slot] = 1;
  for (i = 0; i < nb; ++i) {
    if (in_a[cb[i]->slot]) in_a[cb[i]->slot] = 2;   /* common */
    else out[n++] = cb[i];
  }
  for (i = 0; i < na; ++i) {
    if (in_a[ca[i]->slot] == 1) out[n++] = ca[i];
  }
  free (in_a);
  free (ca);
  free (cb);
  return n;
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
