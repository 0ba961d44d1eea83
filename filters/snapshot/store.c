/* nbdsnap snapshot filter: the store.
 *
 * Layers form a tree rooted at the plugin's disk.  The live disk is the
 * chain from the active layer down to the plugin; a snapshot is the chain
 * from its frozen layer down.  For O(1) lookups whatever the depth, the
 * live disk keeps an owner map (block -> slot of the topmost layer that
 * holds it, 0 = plugin); views compute their own when opened.
 *
 * Concurrency:
 *  - S.lock protects the layer table, connection counts and commands.
 *  - S.gate: every live request enters it; commands that change the live
 *    chain hold it (drain + exclude I/O) for their O(1) switch.
 *  - Stripe locks serialize read-modify-write of partial blocks, and all
 *    writes to the active layer while a merge copies into it.
 *  - Frozen layers never change except by merge, which only fills blocks a
 *    layer lacks with the bytes it already showed through from its parent.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include <nbdkit-filter.h>
#include <gnutls/crypto.h>

#include "exportname.h"
#include "gate.h"
#include "statedir.h"
#include "statefile.h"
#include "store.h"

#define MAX_SLOTS 65535         /* slot 0 is the plugin */
#define NSTRIPES 1024
#define STATE_NAME "state"
#define STATE_MAGIC "nbdsnap-snapshot-state"
#define STATE_VERSION 1

static struct {
  char *dir;
  int dirfd, lockfd;
  struct layer_geom g;
  unsigned shift;
  uint8_t fp[SHA256_LEN];       /* fingerprint of the plugin's disk */
  uint64_t next_id;

  pthread_mutex_t lock;
  pthread_cond_t cond;          /* signalled when a merge finishes */
  struct layer *slots[MAX_SLOTS];
  struct layer *active;
  uint16_t *owner;              /* live owner map (atomic elements) */
  struct gate gate;
  int merge_into_active;        /* atomic */
  pthread_mutex_t stripes[NSTRIPES];
  pthread_mutex_t flush_lock;

  unsigned live_conns, live_writers;
  bool merging, stopping;
  pthread_t merge_tid;
  bool merge_tid_valid;
  char revert_on_close[NAME_MAX_LEN + 1];
} S = {
  .dirfd = -1, .lockfd = -1,
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .cond = PTHREAD_COND_INITIALIZER,
  .gate = GATE_INIT,
  .flush_lock = PTHREAD_MUTEX_INITIALIZER,
};

static inline uint64_t
min64 (uint64_t a, uint64_t b)
{
  return a < b ? a : b;
}

/* Byte length of block b (the last block may be short). */
static inline uint64_t
block_len (uint64_t b)
{
  return min64 (S.g.block_size, S.g.disk_size - (b << S.shift));
}

static inline uint16_t
owner_get (const uint16_t *owner, uint64_t b)
{
  return __atomic_load_n (&owner[b], __ATOMIC_ACQUIRE);
}

static inline void
owner_set (uint16_t *owner, uint64_t b, uint16_t v)
{
  __atomic_store_n (&owner[b], v, __ATOMIC_RELEASE);
}

static pthread_mutex_t *
stripe (uint64_t b)
{
  return &S.stripes[b % NSTRIPES];
}

uint64_t store_size (void) { return S.g.disk_size; }
uint32_t store_block_size (void) { return S.g.block_size; }

/*---------------------------------------------------------------- I/O --*/

static int
pread_full (int fd, char *buf, uint64_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t r = pread (fd, buf, len, off);
    if (r == -1) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) {               /* sparse tail never written: zeroes */
      memset (buf, 0, len);
      return 0;
    }
    buf += r; len -= r; off += r;
  }
  return 0;
}

static int
pwrite_full (int fd, const char *buf, uint64_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t r = pwrite (fd, buf, len, off);
    if (r == -1) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += r; len -= r; off += r;
  }
  return 0;
}

static int flush_locked (int *err);

/* Mark block b of the active layer a as v (DATA or ZERO). */
static void
mark (struct layer *a, uint64_t b, unsigned v)
{
  if (bstate_set (&a->st, b, v) == BSTATE_ABSENT)
    __atomic_add_fetch (&a->held, 1, __ATOMIC_RELAXED);
  owner_set (S.owner, b, a->slot);
}

/* Read [offset, offset+count) through an owner map: runs of blocks held
 * by the same layer in the same state become one pread / memset / plugin
 * read, so big requests stay big.
 */
static int
read_owner (const uint16_t *owner, nbdkit_next *next, char *buf,
            uint64_t count, uint64_t offset, int *err)
{
  const uint64_t end = offset + count;

  while (offset < end) {
    uint64_t b = offset >> S.shift;
    uint16_t o = owner_get (owner, b);
    unsigned st = o ? bstate_get (&S.slots[o]->st, b) : BSTATE_ABSENT;
    uint64_t run_end = min64 (end, (b + 1) << S.shift), len;

    while (run_end < end) {
      uint64_t nb = run_end >> S.shift;
      uint16_t o2 = owner_get (owner, nb);
      if (o2 != o || (o && bstate_get (&S.slots[o]->st, nb) != st))
        break;
      run_end = min64 (end, (nb + 1) << S.shift);
    }
    len = run_end - offset;

    if (o == 0) {
      if (next->pread (next, buf, len, offset, 0, err) == -1)
        return -1;
    }
    else if (st == BSTATE_ZERO)
      memset (buf, 0, len);
    else if (pread_full (S.slots[o]->fd, buf, len, offset) == -1) {
      *err = errno;
      nbdkit_error ("snapshot: read layer %" PRIu64 ": %m", S.slots[o]->id);
      return -1;
    }
    buf += len;
    offset = run_end;
  }
  return 0;
}

int
store_pread (struct view *v, nbdkit_next *next, void *buf,
             uint32_t count, uint64_t offset, int *err)
{
  int r;

  if (!v->live)
    return read_owner (v->owner, next, buf, count, offset, err);
  gate_enter (&S.gate);
  r = read_owner (S.owner, next, buf, count, offset, err);
  gate_leave (&S.gate);
  return r;
}

/* Write (buf) or zero (buf == NULL) whole blocks [b0, b0+nb). */
static int
write_blocks (const char *buf, uint64_t b0, uint64_t nb, int *err)
{
  struct layer *a = S.active;
  uint64_t off = b0 << S.shift;
  uint64_t len = min64 (nb << S.shift, S.g.disk_size - off);
  unsigned v = buf ? BSTATE_DATA : BSTATE_ZERO;
  uint64_t b;

  if (__atomic_load_n (&S.merge_into_active, __ATOMIC_ACQUIRE)) {
    /* A merge is filling the active layer: go block by block under the
     * stripe locks so that it never overwrites a newer write.
     */
    for (b = b0; b < b0 + nb; ++b) {
      uint64_t bl = block_len (b);
      pthread_mutex_lock (stripe (b));
      if (buf && pwrite_full (a->fd, buf + ((b - b0) << S.shift), bl,
                              b << S.shift) == -1) {
        *err = errno;
        pthread_mutex_unlock (stripe (b));
        nbdkit_error ("snapshot: write: %m");
        return -1;
      }
      mark (a, b, v);
      pthread_mutex_unlock (stripe (b));
    }
  }
  else {
    if (buf) {
      if (pwrite_full (a->fd, buf, len, off) == -1) {
        *err = errno;
        nbdkit_error ("snapshot: write: %m");
        return -1;
      }
    }
    else
      /* Give the space back; the state says "zero" whatever is there. */
      fallocate (a->fd, FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE, off, len);
    for (b = b0; b < b0 + nb; ++b)
      mark (a, b, v);
  }
  layer_touch (a);
  return 0;
}

/* Read-modify-write part of block b: n bytes at boff from src (or zero). */
static int
rmw_block (nbdkit_next *next, uint64_t b, uint64_t boff, uint64_t n,
           const char *src, int *err)
{
  struct layer *a = S.active;
  uint64_t bl = block_len (b);
  char *tmp = malloc (S.g.block_size);
  int r = -1;

  if (tmp == NULL) {
    *err = ENOMEM;
    return -1;
  }
  pthread_mutex_lock (stripe (b));
  if (read_owner (S.owner, next, tmp, bl, b << S.shift, err) == -1)
    goto out;
  if (src)
    memcpy (tmp + boff, src, n);
  else
    memset (tmp + boff, 0, n);
  if (pwrite_full (a->fd, tmp, bl, b << S.shift) == -1) {
    *err = errno;
    nbdkit_error ("snapshot: write: %m");
    goto out;
  }
  mark (a, b, BSTATE_DATA);
  layer_touch (a);
  r = 0;
 out:
  pthread_mutex_unlock (stripe (b));
  free (tmp);
  return r;
}

/* Common path of write and zero (buf == NULL). */
static int
modify (nbdkit_next *next, const char *buf, uint32_t count, uint64_t offset,
        bool fua, int *err)
{
  const uint64_t mask = S.g.block_size - 1;
  uint64_t end = offset + count;
  int r = 0;

  gate_enter (&S.gate);
  while (offset < end) {
    uint64_t b = offset >> S.shift, boff = offset & mask;
    uint64_t bl = block_len (b);

    if (boff == 0 && end - offset >= bl) {
      /* As many whole blocks as the request covers. */
      uint64_t nb = 1;
      while (offset + (nb << S.shift) < end &&
             end - (offset + (nb << S.shift)) >= block_len (b + nb))
        nb++;
      if (write_blocks (buf, b, nb, err) == -1) { r = -1; break; }
      uint64_t len = min64 (nb << S.shift, end - offset);
      if (buf) buf += len;
      offset += len;
    }
    else {
      uint64_t n = min64 (bl - boff, end - offset);
      if (rmw_block (next, b, boff, n, buf, err) == -1) { r = -1; break; }
      if (buf) buf += n;
      offset += n;
    }
  }
  if (r == 0 && fua)
    r = flush_locked (err);
  gate_leave (&S.gate);
  return r;
}

int
store_pwrite (nbdkit_next *next, const void *buf, uint32_t count,
              uint64_t offset, bool fua, int *err)
{
  return modify (next, buf, count, offset, fua, err);
}

int
store_zero (nbdkit_next *next, uint32_t count, uint64_t offset, bool fua,
            int *err)
{
  return modify (next, NULL, count, offset, fua, err);
}

/* Make every acknowledged write durable (caller is inside the gate). */
static int
flush_locked (int *err)
{
  int r;

  pthread_mutex_lock (&S.flush_lock);
  r = layer_save (S.dirfd, S.active, &S.g, false);
  if (r == -1) {
    *err = errno;
    nbdkit_error ("snapshot: flush: %m");
  }
  pthread_mutex_unlock (&S.flush_lock);
  return r;
}

int
store_flush (int *err)
{
  int r;

  gate_enter (&S.gate);
  r = flush_locked (err);
  gate_leave (&S.gate);
  return r;
}

/*------------------------------------------------------------ chains --*/

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
static void
compute_owner (struct layer *top, uint16_t *owner)
{
  struct layer **chain = malloc (MAX_SLOTS * sizeof *chain);
  size_t n, i, w;

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
  (void) i;
  free (chain);
}

/*------------------------------------------------------------ extents --*/

/* For change maps: is block b held by any layer in set (n layers)? */
static bool
changed (struct layer **set, size_t n, uint64_t b)
{
  size_t i;
  for (i = 0; i < n; ++i)
    if (bstate_get (&set[i]->st, b) != BSTATE_ABSENT)
      return true;
  return false;
}

/* Layers in exactly one of the chains of a and b. */
static size_t
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

static int
extents_owner (const uint16_t *owner, struct layer *target,
               struct layer *base, nbdkit_next *next, uint64_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  const uint64_t end = offset + count;
  struct layer **set = NULL;
  size_t nset = 0;
  int r = 0;

  if (base) {
    set = malloc (MAX_SLOTS * sizeof *set);
    if (set == NULL) { *err = ENOMEM; return -1; }
    nset = symdiff (target, base, set);
  }

  while (offset < end) {
    uint64_t b = offset >> S.shift;
    uint16_t o = owner_get (owner, b);
    unsigned st = o ? bstate_get (&S.slots[o]->st, b) : BSTATE_ABSENT;
    uint32_t type;
    uint64_t run_end, len;

    if (base)
      type = !changed (set, nset, b) ? NBDKIT_EXTENT_HOLE
        : st == BSTATE_ZERO ? NBDKIT_EXTENT_ZERO : 0;
    else
      type = o == 0 ? UINT32_MAX  /* ask the plugin */
        : st == BSTATE_ZERO ? NBDKIT_EXTENT_HOLE|NBDKIT_EXTENT_ZERO : 0;

    run_end = min64 (end, (b + 1) << S.shift);
    while (run_end < end) {
      uint64_t nb = run_end >> S.shift;
      uint16_t o2 = owner_get (owner, nb);
      unsigned st2 = o2 ? bstate_get (&S.slots[o2]->st, nb) : BSTATE_ABSENT;
      uint32_t t2;
      if (base)
        t2 = !changed (set, nset, nb) ? NBDKIT_EXTENT_HOLE
          : st2 == BSTATE_ZERO ? NBDKIT_EXTENT_ZERO : 0;
      else
        t2 = o2 == 0 ? UINT32_MAX
          : st2 == BSTATE_ZERO ? NBDKIT_EXTENT_HOLE|NBDKIT_EXTENT_ZERO : 0;
      if (t2 != type)
        break;
      run_end = min64 (end, (nb + 1) << S.shift);
    }
    len = run_end - offset;

    if (type == UINT32_MAX) {
      struct nbdkit_extents *pe;
      size_t i;

      pe = nbdkit_extents_full (next, len, offset, 0, err);
      if (pe == NULL) { r = -1; break; }
      for (i = 0; i < nbdkit_extents_count (pe); ++i) {
        struct nbdkit_extent e = nbdkit_get_extent (pe, i);
        uint64_t s = e.offset < offset ? offset : e.offset;
        uint64_t t = min64 (e.offset + e.length, run_end);
        if (t > s && nbdkit_add_extent (extents, s, t - s, e.type) == -1) {
          *err = errno;
          r = -1;
          break;
        }
      }
      nbdkit_extents_free (pe);
      if (r == -1) break;
    }
    else if (nbdkit_add_extent (extents, offset, len, type) == -1) {
      *err = errno;
      r = -1;
      break;
    }
    offset = run_end;
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  free (set);
  return r;
}

int
store_extents (struct view *v, nbdkit_next *next, uint32_t count,
               uint64_t offset, uint32_t flags,
               struct nbdkit_extents *extents, int *err)
{
  int r;

  gate_enter (&S.gate);     /* chains stay still while we look at them */
  if (v->live)
    r = extents_owner (S.owner, S.active, v->base, next, count, offset,
                       flags, extents, err);
  else
    r = extents_owner (v->owner, v->top, v->base, next, count, offset,
                       flags, extents, err);
  gate_leave (&S.gate);
  return r;
}

/*------------------------------------------------------------- table --*/

static struct layer *
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

static int
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
static void
unref (struct layer *l)
{
  if (--l->refs == 0) {
    S.slots[l->slot] = NULL;
    layer_free_background (l);
  }
}

/* Remove l from the table: its files go now, its memory when unused. */
static void
detach (struct layer *l)
{
  l->detached = true;
  layer_unlink (S.dirfd, l->id);
  unref (l);
}

/* Serialize the table to the state file (store lock held). */
static int
save_state (void)
{
  struct jbuf j = { 0 };        /* used as a plain text buffer */
  char hex[2 * SHA256_LEN + 1];
  size_t i;
  int r;

  jb_printf (&j, "%s\nversion %d\ndisk-size %" PRIu64 "\nblock-size %u\n",
             STATE_MAGIC, STATE_VERSION, S.g.disk_size, S.g.block_size);
  hex_encode (S.fp, SHA256_LEN, hex);
  jb_printf (&j, "fingerprint %s\nnext-id %" PRIu64 "\n", hex, S.next_id);
  /* In id order: a parent always has a smaller id than its children. */
  {
    uint64_t last = 0;
    for (;;) {
      struct layer *l = NULL;
      for (i = 1; i < MAX_SLOTS; ++i) {
        struct layer *c = S.slots[i];
        if (c && !c->detached && c->id > last && (!l || c->id < l->id))
          l = c;
      }
      if (l == NULL)
        break;
      jb_printf (&j, "layer %" PRIu64 " %" PRIu64 " %" PRId64 " %s %s\n",
                 l->id, l->parent ? l->parent->id : 0, l->created,
                 l->active ? "active" : l->deleting ? "deleting" : "frozen",
                 l->active ? "-" : l->name);
      last = l->id;
    }
  }
  if (j.oom) {
    jb_free (&j);
    errno = ENOMEM;
    return -1;
  }
  r = state_text_write (S.dirfd, STATE_NAME, j.p, j.len);
  jb_free (&j);
  return r;
}

/* A new empty layer on top of parent, with its empty map on disk. */
static struct layer *
new_layer (struct layer *parent, char *why, size_t whylen)
{
  struct layer *l = layer_open (S.dirfd, S.next_id, &S.g, true, why, whylen);

  if (l == NULL)
    return NULL;
  if (layer_save (S.dirfd, l, &S.g, true) == -1) {
    snprintf (why, whylen, "cannot write layer map: %s", strerror (errno));
    goto err;
  }
  if (alloc_slot (l) == -1) {
    snprintf (why, whylen, "too many layers (at most %d)", MAX_SLOTS - 1);
    goto err;
  }
  S.next_id++;
  l->parent = parent;
  return l;
 err:
  layer_unlink (S.dirfd, l->id);
  layer_free (l);
  return NULL;
}

/* Discard a layer made by new_layer that never got committed. */
static void
drop_new_layer (struct layer *l)
{
  S.slots[l->slot] = NULL;
  layer_unlink (S.dirfd, l->id);
  layer_free (l);
}

static const char *
errno_name (int e)
{
  switch (e) {
  case ENOSPC: return "ENOSPC";
  case EROFS: return "EROFS";
  case EDQUOT: return "ENOSPC";
  case ENOMEM: return "ENOMEM";
  default: return "EIO";
  }
}

/* Wait until no merge runs (store lock held). */
static void
wait_merge (void)
{
  while (S.merging)
    pthread_cond_wait (&S.cond, &S.lock);
}

static void
json_snapshot (struct jbuf *j, struct layer *l)
{
  jb_printf (j, "{\"name\":");
  jb_str (j, l->name);
  jb_printf (j, ",\"parent\":");
  jb_str (j, l->parent ? l->parent->name : NULL);
  jb_printf (j, ",\"created\":");
  jb_time (j, l->created);
  jb_printf (j, ",\"bytes\":%" PRIu64 ",\"merging\":%s}",
             __atomic_load_n (&l->held, __ATOMIC_RELAXED) * S.g.block_size,
             l->deleting ? "true" : "false");
}

/*----------------------------------------------------------- commands --*/

#define FAIL(ename, ...) do {                                   \
    *err_name = (ename);                                        \
    snprintf (why, whylen, __VA_ARGS__);                        \
    goto out;                                                   \
  } while (0)

int
store_cmd_create (const char *name, struct jbuf *j,
                  const char **err_name, char *why, size_t whylen)
{
  struct layer *old, *n = NULL;
  char buf[256];
  int r = -1;

  if (!name_valid (name, buf, sizeof buf))
    { *err_name = "EINVAL"; snprintf (why, whylen, "%s", buf); return -1; }

  pthread_mutex_lock (&S.lock);
  if (find_snapshot (name))
    FAIL ("EEXIST", "snapshot '%s' already exists", name);

  gate_hold (&S.gate);
  old = S.active;
  if (layer_save (S.dirfd, old, &S.g, true) == -1) {
    int e = errno;
    gate_release (&S.gate);
    FAIL (errno_name (e), "cannot make the live disk durable: %s",
          strerror (e));
  }
  n = new_layer (old, buf, sizeof buf);
  if (n == NULL) {
    gate_release (&S.gate);
    FAIL ("ENOSPC", "%s", buf);
  }
  old->active = false;
  snprintf (old->name, sizeof old->name, "%s", name);
  old->created = time (NULL);
  n->active = true;
  S.active = n;
  if (save_state () == -1) {
    int e = errno;
    S.active = old;
    old->active = true;
    old->name[0] = '\0';
    drop_new_layer (n);
    gate_release (&S.gate);
    FAIL (errno_name (e), "cannot write the state file: %s", strerror (e));
  }
  gate_release (&S.gate);
  nbdkit_debug ("snapshot: created '%s' (layer %" PRIu64 ")", name, old->id);
  jb_printf (j, ",\"snapshot\":");
  json_snapshot (j, old);
  r = 0;
 out:
  pthread_mutex_unlock (&S.lock);
  return r;
}

int
store_cmd_list (struct jbuf *j)
{
  size_t i;
  bool first = true;

  pthread_mutex_lock (&S.lock);
  jb_printf (j, ",\"block_size\":%u,\"disk_size\":%" PRIu64
             ",\"snapshots\":[", S.g.block_size, S.g.disk_size);
  for (i = 1; i < MAX_SLOTS; ++i) {   /* slots are not in id order */
    (void) i;
  }
  {
    /* Emit in creation (id) order. */
    uint64_t last = 0;
    for (;;) {
      struct layer *best = NULL;
      for (i = 1; i < MAX_SLOTS; ++i) {
        struct layer *l = S.slots[i];
        if (l && !l->active && !l->detached && l->id > last &&
            (best == NULL || l->id < best->id))
          best = l;
      }
      if (best == NULL)
        break;
      if (!first) jb_printf (j, ",");
      first = false;
      json_snapshot (j, best);
      last = best->id;
    }
  }
  jb_printf (j, "],\"live\":{\"parent\":");
  jb_str (j, S.active->parent ? S.active->parent->name : NULL);
  jb_printf (j, ",\"bytes\":%" PRIu64 "}",
             __atomic_load_n (&S.active->held, __ATOMIC_RELAXED)
             * S.g.block_size);
  pthread_mutex_unlock (&S.lock);
  return 0;
}

/* Switch the live disk to a new empty layer on top of target (store lock
 * held, no merge running).  The old active layer is discarded.
 */
static int
do_revert (struct layer *target, uint64_t *discarded, char *why,
           size_t whylen, const char **err_name)
{
  struct layer *old, *n;
  char buf[256];

  gate_hold (&S.gate);
  old = S.active;
  n = new_layer (target, buf, sizeof buf);
  if (n == NULL) {
    gate_release (&S.gate);
    *err_name = "ENOSPC";
    snprintf (why, whylen, "%s", buf);
    return -1;
  }
  n->active = true;
  S.active = n;
  old->active = false;
  old->detached = true;         /* keeps it out of the state file */
  if (save_state () == -1) {
    int e = errno;
    old->detached = false;
    old->active = true;
    S.active = old;
    drop_new_layer (n);
    gate_release (&S.gate);
    *err_name = errno_name (e);
    snprintf (why, whylen, "cannot write the state file: %s", strerror (e));
    return -1;
  }
  compute_owner (target, S.owner);
  *discarded = __atomic_load_n (&old->held, __ATOMIC_RELAXED)
    * S.g.block_size;
  old->detached = false;
  detach (old);
  gate_release (&S.gate);
  return 0;
}

int
store_cmd_revert (const char *name, bool force, struct jbuf *j,
                  const char **err_name, char *why, size_t whylen)
{
  struct layer *t;
  uint64_t discarded;
  char buf[256];
  int r = -1;

  if (!name_valid (name, buf, sizeof buf))
    { *err_name = "EINVAL"; snprintf (why, whylen, "%s", buf); return -1; }

  pthread_mutex_lock (&S.lock);
  wait_merge ();
  t = find_snapshot (name);
  if (t == NULL || t->deleting)
    FAIL ("ENOENT", "snapshot '%s' does not exist%s", name,
          t ? " (it is being deleted)" : "");
  if (S.live_writers > 0 && !force)
    FAIL ("EBUSY", "%u connection(s) have the live disk open for writing; "
          "disconnect them or use @snapshot:revert/%s/force",
          S.live_writers, name);
  if (do_revert (t, &discarded, why, whylen, err_name) == -1)
    goto out;
  nbdkit_debug ("snapshot: reverted to '%s'", name);
  jb_printf (j, ",\"snapshot\":");
  jb_str (j, name);
  jb_printf (j, ",\"discarded_bytes\":%" PRIu64, discarded);
  r = 0;
 out:
  pthread_mutex_unlock (&S.lock);
  return r;
}

static void *merge_thread (void *arg);

static int
start_merge (struct layer *unused)
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

int
store_cmd_delete (const char *name, struct jbuf *j,
                  const char **err_name, char *why, size_t whylen)
{
  struct layer *l;
  char buf[256];
  size_t i;
  bool first = true;
  int r = -1;

  if (!name_valid (name, buf, sizeof buf))
    { *err_name = "EINVAL"; snprintf (why, whylen, "%s", buf); return -1; }

  pthread_mutex_lock (&S.lock);
  wait_merge ();
  l = find_snapshot (name);
  if (l == NULL)
    FAIL ("ENOENT", "snapshot '%s' does not exist", name);
  if (strcmp (S.revert_on_close, name) == 0)
    FAIL ("EBUSY", "snapshot '%s' is the snapshot-revert-on-close target",
          name);
  if (S.merge_tid_valid) {
    pthread_join (S.merge_tid, NULL);
    S.merge_tid_valid = false;
  }
  l->deleting = true;
  if (save_state () == -1) {
    int e = errno;
    l->deleting = false;
    FAIL (errno_name (e), "cannot write the state file: %s", strerror (e));
  }
  jb_printf (j, ",\"snapshot\":");
  jb_str (j, name);
  jb_printf (j, ",\"merged_into\":[");
  for (i = 1; i < MAX_SLOTS; ++i) {
    struct layer *c = S.slots[i];
    if (c && !c->detached && c->parent == l) {
      if (!first) jb_printf (j, ",");
      first = false;
      jb_str (j, c->active ? NULL : c->name);
    }
  }
  jb_printf (j, "]");
  if (start_merge (l) == -1) {
    /* The deleting flag is on disk: the merge resumes at next start. */
    nbdkit_error ("snapshot: cannot start merge thread: %m");
  }
  r = 0;
 out:
  pthread_mutex_unlock (&S.lock);
  return r;
}

/* Is l on the live chain? (store lock or gate held) */
static bool
on_live_chain (struct layer *l)
{
  struct layer *p;
  for (p = S.active; p; p = p->parent)
    if (p == l)
      return true;
  return false;
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
    pthread_mutex_lock (stripe (b));
    if (bstate_get (&c->st, b) == BSTATE_ABSENT) {
      uint64_t bl = block_len (b);
      if (st == BSTATE_DATA &&
          (pread_full (l->fd, buf, bl, b << S.shift) == -1 ||
           pwrite_full (c->fd, buf, bl, b << S.shift) == -1))
        r = -1;
      else {
        uint16_t expect = l->slot;
        if (bstate_set (&c->st, b, st) == BSTATE_ABSENT)
          __atomic_add_fetch (&c->held, 1, __ATOMIC_RELAXED);
        if (on_live)
          __atomic_compare_exchange_n (&S.owner[b], &expect, c->slot, false,
                                       __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
      }
    }
    pthread_mutex_unlock (stripe (b));
  }
  layer_touch (c);
  free (buf);
  if (r == 0 && layer_save (S.dirfd, c, &S.g, true) == -1)
    r = -1;
  return r;
}

/* The next layer waiting to be merged away (store lock held). */
static struct layer *
next_deleting (void)
{
  size_t i;
  for (i = 1; i < MAX_SLOTS; ++i)
    if (S.slots[i] && S.slots[i]->deleting && !S.slots[i]->detached)
      return S.slots[i];
  return NULL;
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
  if (r == 0) {
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
  }
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

#undef FAIL

/*------------------------------------------------------------- views --*/

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

int
store_view_open (struct view *v, const char *name, const char *base,
                 const char **err_name, char *why, size_t whylen)
{
  struct layer *t = NULL, *b = NULL;
  char buf[256];
  int r = -1;

  memset (v, 0, sizeof *v);
  if ((name && !name_valid (name, buf, sizeof buf)) ||
      (base && !name_valid (base, buf, sizeof buf))) {
    *err_name = "EINVAL";
    snprintf (why, whylen, "%s", buf);
    return -1;
  }
  pthread_mutex_lock (&S.lock);
  if (name && ((t = find_snapshot (name)) == NULL || t->deleting)) {
    *err_name = "ENOENT";
    snprintf (why, whylen, "snapshot '%s' does not exist%s", name,
              t ? " (it is being deleted)" : "");
    goto out;
  }
  if (base && ((b = find_snapshot (base)) == NULL || b->deleting)) {
    *err_name = "ENOENT";
    snprintf (why, whylen, "snapshot '%s' does not exist%s", base,
              b ? " (it is being deleted)" : "");
    goto out;
  }
  v->live = (name == NULL);
  v->top = t;
  v->base = b;
  if ((t && pin_chain (v, t) == -1) || (b && pin_chain (v, b) == -1))
    goto oom;
  if (t) {
    v->owner = malloc (S.g.nblocks * sizeof *v->owner + 1);
    if (v->owner == NULL)
      goto oom;
    compute_owner (t, v->owner);
  }
  r = 0;
  goto out;
 oom:
  *err_name = "ENOMEM";
  snprintf (why, whylen, "out of memory");
  pthread_mutex_unlock (&S.lock);
  store_view_close (v);
  return -1;
 out:
  pthread_mutex_unlock (&S.lock);
  return r;
}

void
store_view_close (struct view *v)
{
  size_t i;

  pthread_mutex_lock (&S.lock);
  for (i = 0; i < v->npinned; ++i)
    unref (v->pinned[i]);
  pthread_mutex_unlock (&S.lock);
  free (v->pinned);
  free (v->owner);
  memset (v, 0, sizeof *v);
}

void
store_foreach_snapshot (void (*fn) (const char *name, void *opaque),
                        void *opaque)
{
  size_t i;

  pthread_mutex_lock (&S.lock);
  for (i = 1; i < MAX_SLOTS; ++i) {
    struct layer *l = S.slots[i];
    if (l && !l->active && !l->detached && !l->deleting)
      fn (l->name, opaque);
  }
  pthread_mutex_unlock (&S.lock);
}

void
store_live_open (bool writable)
{
  pthread_mutex_lock (&S.lock);
  S.live_conns++;
  if (writable)
    S.live_writers++;
  pthread_mutex_unlock (&S.lock);
}

void
store_live_close (bool writable)
{
  pthread_mutex_lock (&S.lock);
  S.live_conns--;
  if (writable)
    S.live_writers--;
  if (S.live_conns == 0 && S.revert_on_close[0] && !S.stopping) {
    struct layer *t;
    uint64_t discarded;
    char why[256];
    const char *ename;

    wait_merge ();
    t = find_snapshot (S.revert_on_close);
    if (t == NULL || t->deleting)
      nbdkit_debug ("snapshot: revert-on-close: no snapshot '%s' yet",
                    S.revert_on_close);
    else if (do_revert (t, &discarded, why, sizeof why, &ename) == -1)
      nbdkit_error ("snapshot: revert-on-close to '%s' failed: %s",
                    S.revert_on_close, why);
    else
      nbdkit_debug ("snapshot: last client left: reverted to '%s'",
                    S.revert_on_close);
  }
  pthread_mutex_unlock (&S.lock);
}

/*----------------------------------------------------------- startup --*/

/* Fingerprint of the plugin's disk: SHA-256 of its size, first and last
 * 4096 bytes.  A snapshot-dir is only valid on top of the disk it was made on.
 */
#define FP_BYTES 4096             /* bytes hashed at each end of the disk */

static int
probe_plugin (nbdkit_backend *backend)
{
  nbdkit_next *next;
  int64_t size;
  char *buf = NULL;
  uint64_t n, last;
  int err = 0, r = -1;
  gnutls_hash_hd_t h;

  next = nbdkit_next_context_open (backend, 1, "", 1);
  if (next == NULL) {
    nbdkit_error ("snapshot: cannot open the plugin to check its disk");
    return -1;
  }
  if (next->prepare (next) == -1)
    goto out;
  size = next->get_size (next);
  if (size == -1)
    goto fin;
  S.g.disk_size = size;
  n = min64 (FP_BYTES, size);
  buf = malloc (n ? n : 1);
  if (buf == NULL)
    goto fin;
  if (gnutls_hash_init (&h, GNUTLS_DIG_SHA256) < 0)
    goto fin;
  {
    uint8_t le[8];
    put_le64 (le, size);
    gnutls_hash (h, le, 8);
  }
  if (n > 0) {
    if (next->pread (next, buf, n, 0, 0, &err) == -1)
      goto hfin;
    gnutls_hash (h, buf, n);
    last = size - n;
    if (next->pread (next, buf, n, last, 0, &err) == -1)
      goto hfin;
    gnutls_hash (h, buf, n);
  }
  r = 0;
 hfin:
  gnutls_hash_deinit (h, S.fp);
 fin:
  next->finalize (next);
 out:
  nbdkit_next_context_close (next);
  free (buf);
  if (r == -1)
    nbdkit_error ("snapshot: cannot read the plugin's disk to check it");
  return r;
}

struct parsed_layer {
  uint64_t id, parent;
  int64_t created;
  char kind[16];
  char name[NAME_MAX_LEN + 1];
};

#define BAD(...) do {                                                   \
    nbdkit_error ("snapshot-dir %s: " __VA_ARGS__);                     \
    goto out;                                                           \
  } while (0)

/* Does line consist of exactly its known fields (no trailing junk)? */
static bool
line_ok (const char *line)
{
  int n = -1;
  char w1[16], w2[80], w3[16], w4[80];
  uint64_t a, b;
  int64_t c;

  if (sscanf (line, "layer %" SCNu64 " %" SCNu64 " %" SCNd64 " %15s %64s%n",
              &a, &b, &c, w1, w2, &n) == 5)
    return line[n] == '\0';
  n = -1;
  if (sscanf (line, "%15s %79s%n", w3, w4, &n) == 2)
    return line[n] == '\0';
  return false;
}

/* Load the state file and every layer it names. */
static int
load_state (char *text, size_t len, uint32_t want_bs)
{
  char *line, *save = NULL;
  struct parsed_layer *pl = NULL;
  size_t npl = 0, i, k;
  uint64_t disk_size = 0, next_id = 0;
  uint32_t bs = 0;
  uint8_t fp[SHA256_LEN];
  bool have_fp = false, have_size = false;
  int version = 0, r = -1;
  char why[512];
  const char *fix = "restore the directory from a backup, or start with an "
    "empty snapshot-dir (its snapshots are then lost)";

  if (state_text_check (text, len, why, sizeof why) == -1)
    BAD ("%s: %s; %s", S.dir, STATE_NAME, why, fix);

  for (line = strtok_r (text, "\n", &save), k = 0; line;
       line = strtok_r (NULL, "\n", &save), ++k) {
    char hex[2 * SHA256_LEN + 2];
    if (k == 0) {
      if (strcmp (line, STATE_MAGIC) != 0)
        BAD ("%s: not an nbdsnap snapshot state file", S.dir, STATE_NAME);
    }
    else if (!line_ok (line))
      BAD ("%s: malformed line '%s'", S.dir, STATE_NAME, line);
    else if (sscanf (line, "version %d", &version) == 1) {
      if (version != STATE_VERSION)
        BAD ("%s: state version %d is not supported by this nbdsnap "
             "(supports %d)", S.dir, STATE_NAME, version, STATE_VERSION);
    }
    else if (sscanf (line, "disk-size %" SCNu64, &disk_size) == 1)
      have_size = true;
    else if (sscanf (line, "block-size %" SCNu32, &bs) == 1) ;
    else if (sscanf (line, "next-id %" SCNu64, &next_id) == 1) ;
    else if (sscanf (line, "fingerprint %65s", hex) == 1) {
      if (strlen (hex) != 2 * SHA256_LEN ||
          hex_decode (hex, fp, SHA256_LEN) == -1)
        BAD ("%s: bad fingerprint line", S.dir, STATE_NAME);
      have_fp = true;
    }
    else if (strncmp (line, "layer ", 6) == 0) {
      struct parsed_layer *np = realloc (pl, (npl + 1) * sizeof *np), *p;
      if (np == NULL)
        BAD ("out of memory", S.dir);
      pl = np;
      p = &pl[npl];
      if (sscanf (line, "layer %" SCNu64 " %" SCNu64 " %" SCNd64
                  " %15s %64s", &p->id, &p->parent, &p->created, p->kind,
                  p->name) != 5)
        BAD ("%s: malformed line '%s'", S.dir, STATE_NAME, line);
      npl++;
    }
    else
      BAD ("%s: unknown line '%s'", S.dir, STATE_NAME, line);
  }
  if (version == 0 || bs == 0 || !have_fp || next_id == 0 || !have_size)
    BAD ("%s: incomplete state file; %s", S.dir, STATE_NAME, fix);

  /* The disk below must be the disk the directory was made for. */
  if (disk_size != S.g.disk_size)
    BAD ("was made for a disk of %" PRIu64 " bytes, but the plugin's disk "
         "now has %" PRIu64 " bytes; start nbdkit on the original disk, or "
         "use a new snapshot-dir", S.dir, disk_size, S.g.disk_size);
  if (want_bs && want_bs != bs)
    BAD ("uses snapshot-block-size=%" PRIu32 ", not %" PRIu32 "; drop "
         "the snapshot-block-size parameter or use a new snapshot-dir",
         S.dir, bs, want_bs);
  S.g.block_size = bs;
  S.shift = __builtin_ctz (bs);
  if (bs < 4096 || (bs & (bs - 1)) != 0 || bs > 16 * 1024 * 1024)
    BAD ("%s: invalid block size %" PRIu32, S.dir, STATE_NAME, bs);
  S.g.nblocks = (disk_size + bs - 1) / bs;
  if (memcmp (fp, S.fp, SHA256_LEN) != 0)
    BAD ("was made for another disk (the first/last blocks of the plugin's "
         "disk differ from when it was created); start nbdkit on the "
         "original disk, or use a new snapshot-dir", S.dir);
  S.next_id = next_id;

  /* Layers: parents always have smaller ids, so one pass links them. */
  for (i = 0; i < npl; ++i) {
    struct layer *l;
    bool active = strcmp (pl[i].kind, "active") == 0;

    if (pl[i].id == 0 || pl[i].id >= next_id ||
        (pl[i].parent != 0 && pl[i].parent >= pl[i].id))
      BAD ("%s: inconsistent layer %" PRIu64, S.dir, STATE_NAME, pl[i].id);
    if (!active && strcmp (pl[i].kind, "frozen") != 0 &&
        strcmp (pl[i].kind, "deleting") != 0)
      BAD ("%s: layer %" PRIu64 " has unknown kind '%s'", S.dir, STATE_NAME,
           pl[i].id, pl[i].kind);
    if (!active && !name_valid (pl[i].name, why, sizeof why))
      BAD ("%s: layer %" PRIu64 ": %s", S.dir, STATE_NAME, pl[i].id, why);
    if (!active && find_snapshot (pl[i].name))
      BAD ("%s: snapshot name '%s' appears twice", S.dir, STATE_NAME,
           pl[i].name);
    if (active && S.active)
      BAD ("%s: more than one active layer", S.dir, STATE_NAME);
    l = layer_open (S.dirfd, pl[i].id, &S.g, false, why, sizeof why);
    if (l == NULL)
      BAD ("%s (listed in the state file); %s", S.dir, why, fix);
    if (alloc_slot (l) == -1) {
      layer_free (l);
      BAD ("too many layers", S.dir);
    }
    if (layer_load_map (S.dirfd, l, &S.g, why, sizeof why) == -1)
      BAD ("%s; %s", S.dir, why, fix);
    l->saved_gen = l->gen = 0;
    l->created = pl[i].created;
    l->active = active;
    l->deleting = strcmp (pl[i].kind, "deleting") == 0;
    if (!active)
      snprintf (l->name, sizeof l->name, "%s", pl[i].name);
    if (active)
      S.active = l;
  }
  /* Link parents once every layer is known (lines may come in any order). */
  for (i = 0; i < npl; ++i) {
    struct layer *l = NULL, *p = NULL;
    size_t s;
    for (s = 1; s < MAX_SLOTS; ++s) {
      if (S.slots[s] && S.slots[s]->id == pl[i].id) {
        if (l)
          BAD ("%s: layer %" PRIu64 " appears twice", S.dir, STATE_NAME,
               pl[i].id);
        l = S.slots[s];
      }
      if (pl[i].parent && S.slots[s] && S.slots[s]->id == pl[i].parent)
        p = S.slots[s];
    }
    if (pl[i].parent && (p == NULL || p->active))
      BAD ("%s: layer %" PRIu64 " has a missing parent %" PRIu64,
           S.dir, STATE_NAME, pl[i].id, pl[i].parent);
    l->parent = p;
  }
  if (S.active == NULL)
    BAD ("%s: no active layer", S.dir, STATE_NAME);
  r = 0;
 out:
  free (pl);
  return r;
}

static bool
known_layer (uint64_t id)
{
  size_t s;

  for (s = 1; s < MAX_SLOTS; ++s)
    if (S.slots[s] && S.slots[s]->id == id)
      return true;
  return false;
}

/* Remove files no committed state refers to (left by a crash between
 * creating a layer and committing the state that names it).
 */
static void
remove_strays (void)
{
  static const char *const suffixes[] = { "data", "map", "map.tmp", NULL };

  statedir_remove_strays (S.dirfd, STATE_NAME, "layer-", suffixes,
                          known_layer, "snapshot");
}

/* A directory without a state file must hold no layers, except what an
 * interrupted first start leaves (an empty layer 1), which is removed.
 */
static int
check_no_layers (void)
{
  DIR *d = statedir_open (S.dirfd);
  struct dirent *e;
  bool first_start_leftover = true, any = false;
  struct stat st;

  if (d == NULL) {
    nbdkit_error ("snapshot-dir %s: %m", S.dir);
    return -1;
  }
  while ((e = readdir (d)) != NULL) {
    if (strncmp (e->d_name, "layer-", 6) != 0)
      continue;
    any = true;
    if (strncmp (e->d_name, "layer-1.", 8) != 0 ||
        (strcmp (e->d_name, "layer-1.data") == 0 &&
         (fstatat (S.dirfd, e->d_name, &st, 0) == -1 || st.st_size != 0)))
      first_start_leftover = false;
  }
  closedir (d);
  if (!any)
    return 0;
  if (!first_start_leftover) {
    nbdkit_error ("snapshot-dir %s: holds layer files but no state file "
                  "(was it deleted?); restore the state file from a backup, "
                  "or empty the directory to start again without the "
                  "snapshots", S.dir);
    return -1;
  }
  nbdkit_debug ("snapshot: removing what an interrupted first start left");
  layer_unlink (S.dirfd, 1);
  return 0;
}

int
store_start (const struct store_config *cfg, nbdkit_backend *backend)
{
  uint32_t bs = cfg->block_size ? cfg->block_size : 65536;
  char *text = NULL;
  size_t len, i;
  char why[512];
  int r = -1;

  for (i = 0; i < NSTRIPES; ++i)
    pthread_mutex_init (&S.stripes[i], NULL);
  S.dir = strdup (cfg->dir);
  if (cfg->revert_on_close)
    snprintf (S.revert_on_close, sizeof S.revert_on_close, "%s",
              cfg->revert_on_close);

  if (mkdir (S.dir, 0755) == -1 && errno != EEXIST) {
    nbdkit_error ("snapshot-dir %s: cannot create it: %m", S.dir);
    return -1;
  }
  S.dirfd = open (S.dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC);
  if (S.dirfd == -1) {
    nbdkit_error ("snapshot-dir %s: %m", S.dir);
    return -1;
  }
  S.lockfd = openat (S.dirfd, "lock", O_RDWR|O_CREAT|O_CLOEXEC, 0644);
  if (S.lockfd == -1) {
    nbdkit_error ("snapshot-dir %s: not writable (%m): nbdkit needs to "
                  "write its layers there; fix the permissions or the mount",
                  S.dir);
    return -1;
  }
  if (flock (S.lockfd, LOCK_EX|LOCK_NB) == -1) {
    nbdkit_error ("snapshot-dir %s: in use by another nbdkit process (its "
                  "lock file is held); stop it first or use another "
                  "directory", S.dir);
    return -1;
  }
  if (dir_check_writable (S.dirfd) == -1) {
    nbdkit_error ("snapshot-dir %s: not writable (%m): nbdkit needs to create, "
                  "rename and remove files there; fix the permissions, the "
                  "mount or the immutable attribute", S.dir);
    return -1;
  }
  if (probe_plugin (backend) == -1)
    return -1;

  if (statefile_read (S.dirfd, STATE_NAME, &text, &len) == 0) {
    r = load_state (text, len, cfg->block_size);
    free (text);
    if (r == -1)
      return -1;
  }
  else if (errno != ENOENT) {
    nbdkit_error ("snapshot-dir %s: cannot read %s: %m", S.dir, STATE_NAME);
    return -1;
  }
  else {
    /* A new directory.  Refuse one that holds layers without a state. */
    struct layer *a;

    if (check_no_layers () == -1)
      return -1;
    S.g.block_size = bs;
    S.shift = __builtin_ctz (bs);
    S.g.nblocks = (S.g.disk_size + bs - 1) / bs;
    S.next_id = 1;
    a = new_layer (NULL, why, sizeof why);
    if (a == NULL) {
      nbdkit_error ("snapshot-dir %s: %s", S.dir, why);
      return -1;
    }
    a->active = true;
    S.active = a;
    if (save_state () == -1) {
      nbdkit_error ("snapshot-dir %s: cannot write the state file: %m",
                    S.dir);
      drop_new_layer (a);
      S.active = NULL;
      return -1;
    }
    nbdkit_debug ("snapshot: new snapshot-dir %s (%" PRIu64 " blocks of %"
                  PRIu32 ")", S.dir, S.g.nblocks, bs);
  }
  remove_strays ();

  S.owner = malloc (S.g.nblocks * sizeof *S.owner + 1);
  if (S.owner == NULL) {
    nbdkit_error ("snapshot: out of memory for the owner map");
    return -1;
  }
  compute_owner (S.active, S.owner);
  return 0;
}

int
store_after_fork (void)
{
  int r = 0;

  pthread_mutex_lock (&S.lock);
  if (next_deleting () != NULL) {
    nbdkit_debug ("snapshot: resuming interrupted deletes");
    if (start_merge (NULL) == -1) {
      nbdkit_error ("snapshot: cannot start merge thread: %m");
      r = -1;
    }
  }
  pthread_mutex_unlock (&S.lock);
  return r;
}

void
store_stop (void)
{
  size_t i;

  if (S.dirfd == -1)
    return;
  __atomic_store_n (&S.stopping, true, __ATOMIC_RELEASE);
  if (S.merge_tid_valid) {
    pthread_join (S.merge_tid, NULL);
    S.merge_tid_valid = false;
  }
  if (S.active && layer_save (S.dirfd, S.active, &S.g, false) == -1)
    nbdkit_error ("snapshot: saving the live disk at shutdown: %m");
  for (i = 1; i < MAX_SLOTS; ++i)
    if (S.slots[i]) {
      layer_free (S.slots[i]);
      S.slots[i] = NULL;
    }
  free (S.owner);
  S.owner = NULL;
  if (S.lockfd >= 0)
    close (S.lockfd);
  close (S.dirfd);
  S.dirfd = -1;
  free (S.dir);
}
