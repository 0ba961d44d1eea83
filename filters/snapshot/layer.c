/* nbdsnap snapshot filter: one copy-on-write layer (data file + map). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "binhdr.h"
#include "fileio.h"
#include "layer.h"
#include "ldata.h"
#include "mapfile.h"
#include "statefile.h"

/* Map file: the binhdr header, then the entries (mapfile.c). */
#define MAP_MAGIC "NBDSNAPM"
#define MAP_VERSION 4
#define MAP_V3 3
#define MAP_OLD_VERSION 1

/* The name of layer id's data file. */
void
layer_data_name (uint64_t id, char *buf, size_t len)
{
  snprintf (buf, len, "layer-%" PRIu64 ".data", id);
}

/* The name of layer id's map file. */
void
layer_map_name (uint64_t id, char *buf, size_t len)
{
  snprintf (buf, len, "layer-%" PRIu64 ".map", id);
}

/* Allocate a layer and open (create if create) its data files. */
struct layer *
layer_open (int dirfd, uint64_t id, const struct geom *g, bool create,
            char *why, size_t whylen)
{
  struct layer *l;

  l = calloc (1, sizeof *l);
  if (l == NULL) {
    snprintf (why, whylen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }
  l->id = id;
  l->refs = 1;
  pthread_mutex_init (&l->save_lock, NULL);
  if (smap_init (&l->st, g->nblocks) == -1 ||
      omap_init (&l->pmask, g->nblocks) == -1) {
    snprintf (why, whylen, "out of memory for a map of %" PRIu64 " blocks",
              g->nblocks);
    smap_free (&l->st);
    pthread_mutex_destroy (&l->save_lock);
    free (l);
    errno = ENOMEM;
    return NULL;
  }
  if (ldata_open (dirfd, l, create, why, whylen) == -1) {
    int e = errno;
    if (create)
      ldata_unlink (dirfd, id);
    layer_free (l);
    errno = e;
    return NULL;
  }
  return l;
}

/* Load the map file into l->st, validating it against g. */
int
layer_load_map (int dirfd, struct layer *l, const struct geom *g,
                char *why, size_t whylen)
{
  char name[64];
  char *buf = NULL;
  size_t len;
  uint32_t version;
  struct binhdr h;
  const uint8_t *p;

  layer_map_name (l->id, name, sizeof name);
  if (statefile_read (dirfd, name, &buf, &len) == -1) {
    int e = errno;
    snprintf (why, whylen, "%s: %s", name, strerror (e));
    errno = e;                  /* the caller tells EMFILE from damage */
    return -1;
  }
  p = (const uint8_t *) buf;
  if (len >= 12 && memcmp (buf, MAP_MAGIC, 8) == 0 &&
      get_le32 (p + 8) == MAP_OLD_VERSION) {
    snprintf (why, whylen, "%s: old layer map format %d (dense, written by "
              "nbdsnap before 2026-12); this nbdsnap reads formats 3 and "
              "4 only. Copy out the snapshots you need with the nbdsnap "
              "that wrote this snapshot-dir, then start on an empty one "
              "(see docs/snapshot-format.md, \"Versions\")", name,
              MAP_OLD_VERSION);
    goto err;
  }
  version = len >= 12 && get_le32 (p + 8) == MAP_V3 ? MAP_V3 : MAP_VERSION;
  if (binhdr_check ((uint8_t *) buf, len, MAP_MAGIC, version, false, name,
                    "layer map", &h, NULL, why, whylen) == -1)
    goto err;
  if (h.block_size != g->block_size || h.id != l->id ||
      h.nblocks != g->nblocks || h.disk_size != g->disk_size) {
    snprintf (why, whylen, "%s: belongs to another layer or disk geometry",
              name);
    goto err;
  }
  if (map_decode (l, g, version, p + BINHDR_SIZE, h.payload_len, name,
                  why, whylen) == -1)
    goto err;
  l->held = smap_count (&l->st);
  free (buf);
  return 0;

 err:
  free (buf);
  errno = EINVAL;               /* the file is damaged */
  return -1;
}

/* Make l durable (see layer.h): sync its data, then, if asked, write
 * its map: its states as they were before the sync.
 */
int
layer_save (int dirfd, struct layer *l, const struct geom *g, bool force,
            char *what, size_t whatlen)
{
  uint64_t gen = __atomic_load_n (&l->gen, __ATOMIC_ACQUIRE);
  struct binhdr hdr = {
    .version = MAP_VERSION, .block_size = g->block_size, .id = l->id,
    .nblocks = g->nblocks, .disk_size = g->disk_size,
  };
  char name[64];
  size_t len;
  uint8_t *buf;
  int r, e;

  if (!force && gen == l->saved_gen) {
    /* The map on disk is current; only the data may need syncing. */
    if (ldata_sync (l, name, sizeof name) == -1) {
      snprintf (what, whatlen, "fdatasync %s", name);
      return -2;
    }
    return 0;
  }

  /* Copy the states BEFORE syncing the data: a block marked after the
   * copy is not in this map, a block marked before it had its bytes
   * written before it was marked, so the fdatasync below covers them
   * (the same for the sectors of a partial block and its mask).
   */
  if (map_encode (l, g, &buf, &len) == -1) {
    snprintf (what, whatlen, "%s the map of %s", errno == ENOMEM ?
              "memory for" : "internal error building", name);
    return -1;
  }
  hdr.payload_len = len - BINHDR_SIZE;
  memcpy (hdr.magic, MAP_MAGIC, 8);
  binhdr_put (buf, &hdr);
  if (ldata_sync (l, name, sizeof name) == -1) {
    snprintf (what, whatlen, "fdatasync %s", name);
    r = -2;
    goto out;
  }
  layer_map_name (l->id, name, sizeof name);
  if (binhdr_seal (buf, len) == -1) {
    snprintf (what, whatlen, "checksum of %s", name);
    errno = EIO;
    r = -1;                     /* nothing written */
    goto out;
  }
  r = statefile_write (dirfd, name, buf, len);
  if (r == -1 && statefile_short_of (errno))
    snprintf (what, whatlen, "%s to write %s",
              errno == ENOMEM ? "memory" : "a descriptor", name);
  else if (r == -1) {
    snprintf (what, whatlen, "writing %s", name);
    r = -2;                     /* the old map is intact, but stop here */
  }
  else if (r == -2) {
    /* The new map is in place: it is the one that describes the layer
     * now, durable or not.
     */
    snprintf (what, whatlen, "syncing the directory after writing %s",
              name);
    l->saved_gen = gen;
  }
  else
    l->saved_gen = gen;
 out:
  e = errno;
  free (buf);
  errno = e;
  return r;
}

/* Remove a layer's files (data, map). */
void
layer_unlink (int dirfd, uint64_t id)
{
  char name[64];

  layer_map_name (id, name, sizeof name);
  unlinkat (dirfd, name, 0);
  ldata_unlink (dirfd, id);
}

/* Background frees: one worker thread, started at the first free and
 * joined at unload.  A detached thread per free could still be running
 * the filter's code (returning from its function) after signalling that
 * it was done, and nbdkit unloads the filter with dlclose: a crash at
 * exit, seen once as a SIGSEGV on SIGTERM.  pthread_join returns only
 * once the worker has left our code.
 */
static pthread_mutex_t bg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bg_cond = PTHREAD_COND_INITIALIZER;
static struct layer *bg_head;   /* layers waiting to be freed */
static bool bg_started, bg_stop;
static pid_t bg_pid;            /* the process the worker runs in */
static pthread_t bg_tid;

static void *
free_worker (void *arg)
{
  struct layer *l;

  (void) arg;
  pthread_mutex_lock (&bg_lock);
  for (;;) {
    while (bg_head == NULL && !bg_stop)
      pthread_cond_wait (&bg_cond, &bg_lock);
    if (bg_head == NULL)
      break;
    l = bg_head;
    bg_head = l->bg_next;
    pthread_mutex_unlock (&bg_lock);
    layer_free (l);
    pthread_mutex_lock (&bg_lock);
  }
  pthread_mutex_unlock (&bg_lock);
  return NULL;
}

/* Free a layer on the worker thread (here if it cannot be started, or
 * in a process forked after it was: threads do not survive fork).
 */
void
layer_free_background (struct layer *l)
{
  pthread_mutex_lock (&bg_lock);
  if (bg_started && bg_pid != getpid ())
    goto inline_free;
  if (!bg_started) {
    if (bg_stop || pthread_create (&bg_tid, NULL, free_worker, NULL) != 0)
      goto inline_free;
    bg_started = true;
    bg_pid = getpid ();
  }
  l->bg_next = bg_head;
  bg_head = l;
  pthread_cond_signal (&bg_cond);
  pthread_mutex_unlock (&bg_lock);
  return;

 inline_free:
  pthread_mutex_unlock (&bg_lock);
  layer_free (l);
}

/* Let the worker free what is queued, then wait until it has exited. */
void
layer_wait_background (void)
{
  bool join;

  pthread_mutex_lock (&bg_lock);
  bg_stop = true;
  join = bg_started && bg_pid == getpid ();
  bg_started = false;
  pthread_cond_signal (&bg_cond);
  pthread_mutex_unlock (&bg_lock);
  if (join)
    pthread_join (bg_tid, NULL);
}

/* Close the data files of a saved layer, checking the closes. */
int
layer_close (struct layer *l)
{
  return ldata_close (l);
}

/* Close the data files and free the layer. */
void
layer_free (struct layer *l)
{
  if (l == NULL)
    return;
  ldata_close_quietly (l);
  smap_free (&l->st);
  omap_free (&l->pmask);
  pthread_mutex_destroy (&l->save_lock);
  free (l);
}
