/* nbdsnap repository: scratch buffers and zstd contexts.
 *
 * Compressing, decompressing and reading a block that must be cut need
 * a buffer of a compressed block's size and a zstd context.  Each reader
 * and writer keeps those it made in a pool, from which the threads of
 * the plugin or the tool take one for each block and give it back.
 */
#include <config.h>

#include <stdlib.h>

#include "lockscope.h"
#include "repo-internal.h"

void
pool_init (struct pool *p, uint32_t block_size)
{
  pthread_mutex_init (&p->lock, NULL);
  p->free = NULL;
  p->size = ZSTD_compressBound (block_size) + 64;
}

/* Take a scratch from the free list, or NULL if it is empty. */
static struct scratch *
pool_take (struct pool *p)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&p->lock);
  struct scratch *s = p->free;

  if (s)
    p->free = s->next;
  return s;
}

/* Free a scratch and what it holds. */
static void
scratch_free (struct scratch *s)
{
  free (s->a);
  free (s->b);
  ZSTD_freeCCtx (s->cctx);
  ZSTD_freeDCtx (s->dctx);
  free (s);
}

struct scratch *
pool_get (struct pool *p)
{
  struct scratch *s = pool_take (p);

  if (s)
    return s;
  s = calloc (1, sizeof *s);
  if (s == NULL)
    return NULL;
  s->a = malloc (p->size);
  s->b = malloc (p->size);
  if (s->a == NULL || s->b == NULL) {
    scratch_free (s);
    return NULL;
  }
  return s;
}

void
pool_put (struct pool *p, struct scratch *s)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&p->lock);

  s->next = p->free;
  p->free = s;
}

void
pool_destroy (struct pool *p)
{
  struct scratch *s, *next;

  for (s = p->free; s; s = next) {
    next = s->next;
    scratch_free (s);
  }
  p->free = NULL;
  pthread_mutex_destroy (&p->lock);
}
