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
#include "statefile.h"

/* Map file (docs/snapshot-format.md section 6): the binhdr header,
 * then the number of leaf entries (u64), one entry per leaf that holds a
 * block, in increasing leaf order: the leaf index (u64), then the leaf's
 * LEAF_WORDS 2-bit state words (u64 each, LE); then the number of
 * partial blocks (u64) and for each, in increasing block order, the
 * block (u64) and its sector mask (u64).  Version 3 was the leaf
 * entries alone (no partial blocks): still read.  Version 1 was a dense
 * array of every word of the disk; 2 was never written.
 */
#define MAP_MAGIC "NBDSNAPM"
#define MAP_VERSION 4
#define MAP_V3 3
#define MAP_OLD_VERSION 1
#define MAP_ENTRY (8 + LEAF_WORDS * 8)
#define MAP_PARTIAL 16
#define PAIRS UINT64_C (0x5555555555555555)

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

/* Allocate a layer and open (create if create) its data file. */
struct layer *
layer_open (int dirfd, uint64_t id, const struct geom *g, bool create,
            char *why, size_t whylen)
{
  struct layer *l;
  char name[64];
  int flags = O_RDWR|O_NOFOLLOW|O_CLOEXEC;

  l = calloc (1, sizeof *l);
  if (l == NULL) {
    snprintf (why, whylen, "out of memory");
    errno = ENOMEM;
    return NULL;
  }
  l->id = id;
  l->fd = -1;
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
  layer_data_name (id, name, sizeof name);
  if (create)
    flags |= O_CREAT|O_TRUNC;
  l->fd = openat (dirfd, name, flags, 0600);
  if (l->fd == -1) {
    int e = errno;
    snprintf (why, whylen, "%s: %s", name, strerror (e));
    layer_free (l);
    errno = e;
    return NULL;
  }
  return l;
}

/* Load the np partial records at e into l->pmask: each names a block
 * whose state is PARTIAL, once, in increasing order, with a mask of
 * sectors of the block that is neither empty nor full; npartial blocks
 * are PARTIAL in the states.  -1 with why.
 */
static int
load_partial (struct layer *l, const struct geom *g, const uint8_t *e,
              uint64_t np, uint64_t npartial, const char *name, char *why,
              size_t whylen)
{
  uint64_t i, prev = 0;

  if (np != npartial) {
    snprintf (why, whylen, "%s: %" PRIu64 " partial blocks but %" PRIu64
              " sector masks (file is corrupt)", name, npartial, np);
    return -1;
  }
  for (i = 0; i < np; ++i, e += MAP_PARTIAL) {
    uint64_t b = get_le64 (e), mask = get_le64 (e + 8), full;
    uint64_t bl, ss = (uint64_t) g->block_size / 16;

    if (b >= g->nblocks || (i > 0 && b <= prev) ||
        smap_get (&l->st, b) != BSTATE_PARTIAL) {
      snprintf (why, whylen, "%s: sector mask of block %" PRIu64 " that is "
                "not partial (file is corrupt)", name, b);
      return -1;
    }
    prev = b;
    bl = b == g->nblocks - 1 ? g->disk_size - b * g->block_size
      : g->block_size;
    full = (UINT64_C (1) << ((bl + ss - 1) / ss)) - 1;
    if (mask == 0 || mask == full || (mask & ~full)) {
      snprintf (why, whylen, "%s: invalid sector mask %#" PRIx64 " of block "
                "%" PRIu64 " (file is corrupt)", name, mask, b);
      return -1;
    }
    if (omap_leaf_make (&l->pmask, b >> LEAF_SHIFT) == NULL) {
      snprintf (why, whylen, "%s: out of memory", name);
      return -1;
    }
    omap_set (&l->pmask, b, (uint16_t) mask);
  }
  return 0;
}

/* Load the map file into l->st, validating it against g. */
int
layer_load_map (int dirfd, struct layer *l, const struct geom *g,
                char *why, size_t whylen)
{
  char name[64];
  char *buf = NULL;
  size_t len, i, n, w;
  uint64_t prev = 0, last_words, np, npartial = 0;
  uint32_t version;
  struct binhdr h;
  const uint8_t *p, *body;
  bool ok;

  layer_map_name (l->id, name, sizeof name);
  if (statefile_read (dirfd, name, &buf, &len) == -1) {
    snprintf (why, whylen, "%s: %s", name, strerror (errno));
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
  body = p + BINHDR_SIZE;
  if (version == MAP_V3) {
    n = h.payload_len / MAP_ENTRY;
    np = 0;
    ok = h.payload_len % MAP_ENTRY == 0;
  }
  else {
    n = h.payload_len >= 16 ? get_le64 (body) : 0;
    ok = h.payload_len >= 16 && n <= (h.payload_len - 16) / MAP_ENTRY;
    if (ok) {
      np = get_le64 (body + 8 + n * MAP_ENTRY);
      ok = np <= (h.payload_len - 16 - n * MAP_ENTRY) / MAP_PARTIAL &&
        h.payload_len == 16 + n * MAP_ENTRY + np * MAP_PARTIAL;
    }
    body += 8;
  }
  if (!ok) {
    snprintf (why, whylen, "%s: truncated or wrong length (%zu bytes, "
              "not what its counts of leaves and partial blocks make)",
              name, len);
    goto err;
  }
  if (h.block_size != g->block_size || h.id != l->id ||
      h.nblocks != g->nblocks || h.disk_size != g->disk_size) {
    snprintf (why, whylen, "%s: belongs to another layer or disk geometry",
              name);
    goto err;
  }
  /* Words of the last leaf that hold blocks (the others must be 0). */
  last_words = ((g->nblocks - 1) & (LEAF_BLOCKS - 1)) / 32 + 1;
  for (i = 0; i < n; ++i) {
    const uint8_t *e = body + i * MAP_ENTRY;
    uint64_t li = get_le64 (e), *lf;

    if (li >= l->st.nleaves || (i > 0 && li <= prev)) {
      snprintf (why, whylen, "%s: invalid leaf index %" PRIu64 " (file is "
                "corrupt)", name, li);
      goto err;
    }
    prev = li;
    if ((lf = smap_leaf_make (&l->st, li)) == NULL) {
      snprintf (why, whylen, "%s: out of memory", name);
      goto err;
    }
    for (w = 0; w < LEAF_WORDS; ++w) {
      uint64_t v = get_le64 (e + 8 + 8 * w);
      bool last = li == l->st.nleaves - 1;
      /* State 3 (partial) only from version 4; bits past the last block
       * must be clear.
       */
      if ((version == MAP_V3 && (v & (v >> 1) & PAIRS)) ||
          (last && w >= last_words && v) ||
          (last && w == last_words - 1 && (g->nblocks & 31) &&
           (v >> ((g->nblocks & 31) * 2)))) {
        snprintf (why, whylen, "%s: invalid block state (file is corrupt)",
                  name);
        goto err;
      }
      lf[w] = v;
      npartial += __builtin_popcountll (v & (v >> 1) & PAIRS);
    }
  }
  if (load_partial (l, g, version == MAP_V3 ? NULL
                    : body + n * MAP_ENTRY + 8, np, npartial, name,
                    why, whylen) == -1)
    goto err;
  l->held = smap_count (&l->st);
  free (buf);
  return 0;

 err:
  free (buf);
  return -1;
}

/* Build the map file of l (header left for the caller to fill) in a
 * new *buf of *len bytes, from the states as they are now: the leaves
 * that hold blocks, and the sector mask of each partial block (one
 * whose mask has filled up is written as DATA).  -1 and errno.
 */
static int
map_build (struct layer *l, const struct geom *g, uint8_t **buf,
           size_t *len)
{
  size_t i, w, n = 0, k = 0, np = 0, room = 0;
  uint8_t *ents, *ep, *out;
  uint64_t *recs = NULL;

  /* Room for every leaf present now; leaves that hold no block (or that
   * appear after this count) are left out.
   */
  for (i = sparse_next (l->st.present, l->st.nleaves, 0); i < l->st.nleaves;
       i = sparse_next (l->st.present, l->st.nleaves, i + 1))
    n++;
  ents = malloc (n * MAP_ENTRY + 1);
  if (ents == NULL)
    return -1;
  ep = ents;
  for (i = sparse_next (l->st.present, l->st.nleaves, 0);
       i < l->st.nleaves && k < n;
       i = sparse_next (l->st.present, l->st.nleaves, i + 1)) {
    const uint64_t *lf = smap_leaf (&l->st, i);
    uint64_t any = 0;

    put_le64 (ep, i);
    for (w = 0; w < LEAF_WORDS; ++w) {
      uint64_t v = __atomic_load_n (&lf[w], __ATOMIC_ACQUIRE);
      uint64_t part = v & (v >> 1) & PAIRS;

      while (part) {
        unsigned bit = __builtin_ctzll (part);
        uint64_t b = ((uint64_t) i << LEAF_SHIFT) + w * 32 + bit / 2;
        uint64_t bl = b == g->nblocks - 1
          ? g->disk_size - b * g->block_size : g->block_size;
        uint64_t ss = (uint64_t) g->block_size / 16;
        uint64_t full = (UINT64_C (1) << ((bl + ss - 1) / ss)) - 1;
        uint64_t mask = omap_get (&l->pmask, b) & full;

        part &= part - 1;
        if (mask == full) {     /* every sector is there: DATA */
          v &= ~(UINT64_C (2) << bit);
          continue;
        }
        if (mask == 0) {        /* cannot happen (partial.h) */
          free (ents);
          free (recs);
          errno = EIO;
          return -1;
        }
        if (np + 1 > room) {
          uint64_t *nr = realloc (recs, (room = room * 2 + 64) * 16);
          if (nr == NULL) {
            free (ents);
            free (recs);
            errno = ENOMEM;
            return -1;
          }
          recs = nr;
        }
        recs[2 * np] = b;
        recs[2 * np + 1] = mask;
        np++;
      }
      put_le64 (ep + 8 + 8 * w, v);
      any |= v;
    }
    if (any) {
      ep += MAP_ENTRY;
      k++;
    }
  }
  *len = BINHDR_SIZE + 8 + k * MAP_ENTRY + 8 + np * MAP_PARTIAL;
  out = calloc (1, *len);
  if (out == NULL) {
    free (ents);
    free (recs);
    errno = ENOMEM;
    return -1;
  }
  put_le64 (out + BINHDR_SIZE, k);
  memcpy (out + BINHDR_SIZE + 8, ents, k * MAP_ENTRY);
  ep = out + BINHDR_SIZE + 8 + k * MAP_ENTRY;
  put_le64 (ep, np);
  for (i = 0; i < np; ++i) {
    put_le64 (ep + 8 + i * MAP_PARTIAL, recs[2 * i]);
    put_le64 (ep + 16 + i * MAP_PARTIAL, recs[2 * i + 1]);
  }
  free (ents);
  free (recs);
  *buf = out;
  return 0;
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

  layer_data_name (l->id, name, sizeof name);
  if (!force && gen == l->saved_gen) {
    /* The map on disk is current; only the data may need syncing. */
    if (fdatasync (l->fd) == -1) {
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
  if (map_build (l, g, &buf, &len) == -1) {
    snprintf (what, whatlen, "%s the map of %s", errno == ENOMEM ?
              "memory for" : "internal error building", name);
    return -1;
  }
  hdr.payload_len = len - BINHDR_SIZE;
  memcpy (hdr.magic, MAP_MAGIC, 8);
  binhdr_put (buf, &hdr);
  if (fdatasync (l->fd) == -1) {
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
  if (r == -1 && errno == ENOMEM)
    snprintf (what, whatlen, "memory to write %s", name);
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
  layer_data_name (id, name, sizeof name);
  unlinkat (dirfd, name, 0);
}

/* Background frees still running: the filter must not be unloaded
 * while one of their threads runs its code (layer_wait_background).
 */
static pthread_mutex_t bg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bg_done = PTHREAD_COND_INITIALIZER;
static unsigned bg_running;

/* Thread of layer_free_background. */
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

/* Free a layer in a detached thread. */
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

/* Wait until every background free has finished. */
void
layer_wait_background (void)
{
  pthread_mutex_lock (&bg_lock);
  while (bg_running > 0)
    pthread_cond_wait (&bg_done, &bg_lock);
  pthread_mutex_unlock (&bg_lock);
}

/* Close the data file of a saved layer, checking the close. */
int
layer_close (struct layer *l)
{
  int fd = l->fd;

  l->fd = -1;
  return fd >= 0 ? close_written (fd) : 0;
}

/* Close the data file and free the layer. */
void
layer_free (struct layer *l)
{
  if (l == NULL)
    return;
  if (l->fd >= 0)
    close (l->fd);
  smap_free (&l->st);
  omap_free (&l->pmask);
  pthread_mutex_destroy (&l->save_lock);
  free (l);
}
