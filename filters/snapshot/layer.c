/* nbdsnap snapshot filter: one copy-on-write layer (data file + map). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layer.h"
#include "statefile.h"

/* Map file: header of MAP_HDR bytes, then the 2-bit state words (LE). */
#define MAP_MAGIC "NBDSNAPM"
#define MAP_VERSION 1
#define MAP_HDR 80

void
layer_data_name (uint64_t id, char *buf, size_t len)
{
  snprintf (buf, len, "layer-%" PRIu64 ".data", id);
}

void
layer_map_name (uint64_t id, char *buf, size_t len)
{
  snprintf (buf, len, "layer-%" PRIu64 ".map", id);
}

struct layer *
layer_open (int dirfd, uint64_t id, const struct layer_geom *g, bool create,
            char *why, size_t whylen)
{
  struct layer *l;
  char name[64];
  int flags = O_RDWR|O_CLOEXEC;

  l = calloc (1, sizeof *l);
  if (l == NULL) {
    snprintf (why, whylen, "out of memory");
    return NULL;
  }
  l->id = id;
  l->fd = -1;
  l->refs = 1;
  pthread_mutex_init (&l->save_lock, NULL);
  if (bstate_init (&l->st, g->nblocks) == -1) {
    snprintf (why, whylen, "out of memory for a map of %" PRIu64 " blocks",
              g->nblocks);
    free (l);
    return NULL;
  }
  layer_data_name (id, name, sizeof name);
  if (create)
    flags |= O_CREAT|O_TRUNC;
  l->fd = openat (dirfd, name, flags, 0644);
  if (l->fd == -1) {
    snprintf (why, whylen, "%s: %s", name, strerror (errno));
    layer_free (l);
    return NULL;
  }
  return l;
}

int
layer_load_map (int dirfd, struct layer *l, const struct layer_geom *g,
                char *why, size_t whylen)
{
  char name[64];
  char *buf = NULL;
  size_t len, i, payload = l->st.nwords * 8;
  uint8_t sum[SHA256_LEN];
  const uint8_t *p;

  layer_map_name (l->id, name, sizeof name);
  if (statefile_read (dirfd, name, &buf, &len) == -1) {
    snprintf (why, whylen, "%s: %s", name, strerror (errno));
    return -1;
  }
  p = (const uint8_t *) buf;
  if (len < MAP_HDR || memcmp (p, MAP_MAGIC, 8) != 0) {
    snprintf (why, whylen, "%s: not an nbdsnap layer map (bad magic)", name);
    goto err;
  }
  if (get_le32 (p + 8) != MAP_VERSION) {
    snprintf (why, whylen, "%s: unsupported map version %u", name,
              get_le32 (p + 8));
    goto err;
  }
  if (len != MAP_HDR + payload || get_le64 (p + 40) != payload) {
    snprintf (why, whylen, "%s: truncated or wrong length (%zu bytes, "
              "expected %zu)", name, len, MAP_HDR + payload);
    goto err;
  }
  memcpy (sum, p + 48, SHA256_LEN);
  memset ((uint8_t *) p + 48, 0, SHA256_LEN);
  {
    uint8_t calc[SHA256_LEN];
    if (sha256_buf (p, len, calc) == -1 || memcmp (calc, sum, SHA256_LEN)) {
      snprintf (why, whylen, "%s: checksum mismatch (file is corrupt)", name);
      goto err;
    }
  }
  if (get_le32 (p + 12) != g->block_size || get_le64 (p + 16) != l->id ||
      get_le64 (p + 24) != g->nblocks || get_le64 (p + 32) != g->disk_size) {
    snprintf (why, whylen, "%s: belongs to another layer or disk geometry",
              name);
    goto err;
  }
  for (i = 0; i < l->st.nwords; ++i) {
    uint64_t w = get_le64 (p + MAP_HDR + 8 * i);
    /* State 3 is not defined; bits past the last block must be clear. */
    if ((w & (w >> 1) & UINT64_C (0x5555555555555555)) ||
        (i == l->st.nwords - 1 && (g->nblocks & 31) &&
         (w >> ((g->nblocks & 31) * 2)))) {
      snprintf (why, whylen, "%s: invalid block state (file is corrupt)",
                name);
      goto err;
    }
    l->st.words[i] = w;
  }
  l->held = bstate_count (&l->st);
  free (buf);
  return 0;

 err:
  free (buf);
  return -1;
}

int
layer_save (int dirfd, struct layer *l, const struct layer_geom *g,
            bool force)
{
  char name[64];
  size_t i, len = MAP_HDR + l->st.nwords * 8;
  uint8_t *buf = NULL;
  uint64_t gen;
  int r = -1;

  pthread_mutex_lock (&l->save_lock);
  gen = __atomic_load_n (&l->gen, __ATOMIC_ACQUIRE);
  if (!force && gen == l->saved_gen) {
    /* The map on disk is current; only the data may need syncing. */
    r = fdatasync (l->fd);
    goto out;
  }
  /* Copy the states BEFORE syncing the data: a block marked after the
   * copy is not in this map, a block marked before it had its bytes
   * written before it was marked, so the fdatasync below covers them.
   */
  buf = calloc (1, len);
  if (buf == NULL)
    goto out;
  memcpy (buf, MAP_MAGIC, 8);
  put_le32 (buf + 8, MAP_VERSION);
  put_le32 (buf + 12, g->block_size);
  put_le64 (buf + 16, l->id);
  put_le64 (buf + 24, g->nblocks);
  put_le64 (buf + 32, g->disk_size);
  put_le64 (buf + 40, l->st.nwords * 8);
  for (i = 0; i < l->st.nwords; ++i)
    put_le64 (buf + MAP_HDR + 8 * i,
              __atomic_load_n (&l->st.words[i], __ATOMIC_ACQUIRE));
  if (fdatasync (l->fd) == -1)
    goto out;
  if (sha256_buf (buf, len, buf + 48) == -1)
    goto out;
  layer_map_name (l->id, name, sizeof name);
  r = statefile_write (dirfd, name, buf, len);
  if (r == 0)
    l->saved_gen = gen;
 out:
  free (buf);
  pthread_mutex_unlock (&l->save_lock);
  return r;
}

void
layer_unlink (int dirfd, uint64_t id)
{
  char name[64];

  layer_map_name (id, name, sizeof name);
  unlinkat (dirfd, name, 0);
  layer_data_name (id, name, sizeof name);
  unlinkat (dirfd, name, 0);
}

/* Background frees still running: the filter must not be unloaded
 * while one of their threads runs its code (layer_wait_background).
 */
static pthread_mutex_t bg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bg_done = PTHREAD_COND_INITIALIZER;
static unsigned bg_running;

static void *
free_thread (void *l)
{
  layer_free (l);
  pthread_mutex_lock (&bg_lock);
  if (--bg_running == 0)
    pthread_cond_broadcast (&bg_done);
  pthread_mutex_unlock (&bg_lock);
  return NULL;
}

void
layer_free_background (struct layer *l)
{
  pthread_t t;
  pthread_attr_t a;

  pthread_mutex_lock (&bg_lock);
  bg_running++;
  pthread_mutex_unlock (&bg_lock);
  pthread_attr_init (&a);
  pthread_attr_setdetachstate (&a, PTHREAD_CREATE_DETACHED);
  if (pthread_create (&t, &a, free_thread, l) != 0)
    free_thread (l);
  pthread_attr_destroy (&a);
}

void
layer_wait_background (void)
{
  pthread_mutex_lock (&bg_lock);
  while (bg_running > 0)
    pthread_cond_wait (&bg_done, &bg_lock);
  pthread_mutex_unlock (&bg_lock);
}

void
layer_free (struct layer *l)
{
  if (l == NULL)
    return;
  if (l->fd >= 0)
    close (l->fd);
  bstate_free (&l->st);
  pthread_mutex_destroy (&l->save_lock);
  free (l);
}
