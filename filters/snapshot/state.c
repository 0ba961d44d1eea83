/* nbdsnap snapshot filter: the state file and snapshot-dir.
 *
 * The state file (docs/snapshot-format.md, section 5) names the geometry,
 * the fingerprint of the plugin's disk and every layer with its parent
 * and kind.  It is the commit point of every change to the tree: layer
 * files no committed state names are strays, removed at start.
 */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <dirent.h>

#include <nbdkit-filter.h>

#include "fdlimit.h"
#include "json.h"
#include "kvtext.h"
#include "ldata.h"
#include "lockscope.h"
#include "statedir.h"
#include "store-internal.h"

#define STATE_NAME "state"
#define STATE_MAGIC "nbdsnap-snapshot-state"
#define STATE_VERSION 1          /* one data file per layer */
#define STATE_VERSION_SEG 2      /* data in segments: data-segment-size */

/* What to do about a damaged directory. */
#define FIX "restore the directory from a backup, or start with an " \
  "empty snapshot-dir (its snapshots are then lost)"

/* qsort: layers by id (ids are unique). */
static int
by_id (const void *a, const void *b)
{
  const struct layer *x = *(struct layer *const *) a;
  const struct layer *y = *(struct layer *const *) b;

  return x->id < y->id ? -1 : x->id > y->id;
}

/* Commit the table to the state file (store lock held). */
int
save_state (void)
{
  struct jbuf j = { 0 };        /* used as a plain text buffer */
  char hex[2 * SHA256_LEN + 1];
  struct layer **order;
  size_t i, k, n = 0;
  int r, e;

  if (failure_is_set (&S.fail)) {
    errno = EIO;
    return -1;
  }
  jb_printf (&j, "%s\nversion %d\ndisk-size %" PRIu64 "\nblock-size %u\n",
             STATE_MAGIC, ldata_layout.seg_shift ? STATE_VERSION_SEG :
             STATE_VERSION, S.g.disk_size, S.g.block_size);
  if (ldata_layout.seg_shift)
    jb_printf (&j, "data-segment-size %" PRIu64 "\n",
               UINT64_C (1) << ldata_layout.seg_shift);
  hex_encode (S.fp, SHA256_LEN, hex);
  jb_printf (&j, "fingerprint %s\nnext-id %" PRIu64 "\n", hex, S.next_id);
  /* In id order: a parent always has a smaller id than its children.
   * One pass over the slots and a sort, not a pass per layer (65535
   * slots each: 10 ms with 100 layers, twice per revert).
   */
  for (i = 1; i < MAX_SLOTS; ++i)
    if (S.slots[i] && !S.slots[i]->detached)
      ++n;
  order = malloc ((n ? n : 1) * sizeof *order);
  if (order == NULL)
    j.oom = true;
  else {
    for (i = 1, k = 0; i < MAX_SLOTS; ++i)
      if (S.slots[i] && !S.slots[i]->detached)
        order[k++] = S.slots[i];
    qsort (order, n, sizeof *order, by_id);
    for (k = 0; k < n; ++k) {
      const struct layer *l = order[k];
      jb_printf (&j, "layer %" PRIu64 " %" PRIu64 " %" PRId64 " %s %s\n",
                 l->id, l->parent ? l->parent->id : 0, l->created,
                 l->active ? "active" : l->deleting ? "deleting" : "frozen",
                 l->active ? "-" : l->name);
    }
    free (order);
  }
  if (j.oom) {
    jb_free (&j);
    errno = ENOMEM;
    return -1;
  }
  r = kv_write_file (S.dirfd, STATE_NAME, j.p, j.len);
  e = errno;
  jb_free (&j);
  if (r == -1 && !statefile_short_of (e))
    failure_set (&S.fail, "snapshot", e, "writing the state file of "
                 "snapshot-dir %s (the old one is still in place)", S.dir);
  else if (r == -2)
    failure_set (&S.fail, "snapshot", e, "syncing snapshot-dir %s after "
                 "replacing its state file (the change is in place, but a "
                 "crash may undo it)", S.dir);
  errno = e;
  return r;
}

/* Make layer l durable, entering the failed state on an I/O error. */
int
save_layer (struct layer *l, bool force, const char *during)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&l->save_lock);
  char what[128];
  int r, e;

  if (failure_is_set (&S.fail)) {
    errno = EIO;
    return -1;
  }
  r = layer_save (S.dirfd, l, &S.g, force, what, sizeof what);
  if (r == 0)
    return 0;
  e = errno;
  if (r == -2)
    failure_set (&S.fail, "snapshot", e, "%s: %s", during, what);
  else
    nbdkit_debug ("snapshot: %s: %s: %s", during, what, strerror (e));
  errno = e;
  return -1;
}

/* A layer line of the state file. */
struct parsed_layer {
  uint64_t id, parent;
  int64_t created;
  const char *kind, *name;      /* point into the text */
};

/* The state file as read. */
struct parsed_state {
  uint64_t disk_size, next_id;
  uint32_t block_size;
  unsigned seg_shift;           /* log2 (data-segment-size); 0: none */
  uint8_t fp[SHA256_LEN];
  struct parsed_layer *layers;
  size_t nlayers;
};

/* Refuse the directory: nbdkit_error "snapshot-dir DIR: ...".  Returns
 * -1.
 */
static int __attribute__ ((format (printf, 1, 2)))
refuse (const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  nbdkit_error ("snapshot-dir %s: %s", S.dir, msg);
  return -1;
}

/* The value of the next line, which must have key; NULL after refuse. */
static char *
expect (struct kv_reader *kv, const char *key)
{
  char why[256];
  char *v = kv_expect (kv, key, why, sizeof why);

  if (v == NULL)
    refuse ("%s: %s; %s", STATE_NAME, why, FIX);
  return v;
}

/* A line whose value is not what its key needs.  Returns -1. */
static int
malformed (const struct kv_reader *kv, const char *key)
{
  return refuse ("%s: line %u: malformed %s line; %s", STATE_NAME, kv->line,
                 key, FIX);
}

/* Parse the value of a layer line, "ID PARENT CREATED KIND NAME" (changed
 * in place), into p.  -1 if malformed.
 */
static int
parse_layer (char *value, struct parsed_layer *p)
{
  char *f[5];

  if (kv_split (value, f, 5) == -1 || kv_u64 (f[0], &p->id) == -1 ||
      kv_u64 (f[1], &p->parent) == -1 || kv_i64 (f[2], &p->created) == -1)
    return -1;
  p->kind = f[3];
  p->name = f[4];
  return 0;
}

/* Read the lines of the state file (in their one order) into ps.  -1
 * after refuse.
 */
static int
parse_state (char *text, size_t len, struct parsed_state *ps)
{
  struct kv_reader kv;
  char why[256], *key, *v;
  uint32_t version;
  int r;

  if (kv_begin (&kv, text, len, STATE_MAGIC, why, sizeof why) == -1)
    return refuse ("%s: %s; %s", STATE_NAME, why, FIX);
  if ((v = expect (&kv, "version")) == NULL)
    return -1;
  if (kv_u32 (v, &version) == -1 ||
      (version != STATE_VERSION && version != STATE_VERSION_SEG))
    return refuse ("%s: state version %s is not supported by this nbdsnap "
                   "(supports %d and %d)", STATE_NAME, v, STATE_VERSION,
                   STATE_VERSION_SEG);
  if ((v = expect (&kv, "disk-size")) == NULL)
    return -1;
  if (kv_u64 (v, &ps->disk_size) == -1)
    return malformed (&kv, "disk-size");
  if ((v = expect (&kv, "block-size")) == NULL)
    return -1;
  if (kv_u32 (v, &ps->block_size) == -1)
    return malformed (&kv, "block-size");
  ps->seg_shift = 0;
  if (version == STATE_VERSION_SEG) {
    uint64_t seg;

    if ((v = expect (&kv, "data-segment-size")) == NULL)
      return -1;
    if (kv_u64 (v, &seg) == -1 || seg < ps->block_size ||
        (seg & (seg - 1)) != 0 || seg > (UINT64_C (1) << 62) ||
        filesize_nseg (ps->disk_size, __builtin_ctzll (seg)) >
        LDATA_MAX_SEGS)
      return malformed (&kv, "data-segment-size");
    ps->seg_shift = __builtin_ctzll (seg);
  }
  if ((v = expect (&kv, "fingerprint")) == NULL)
    return -1;
  if (strlen (v) != 2 * SHA256_LEN || hex_decode (v, ps->fp, SHA256_LEN) == -1)
    return refuse ("%s: bad fingerprint line", STATE_NAME);
  if ((v = expect (&kv, "next-id")) == NULL)
    return -1;
  if (kv_u64 (v, &ps->next_id) == -1 || ps->next_id == 0)
    return malformed (&kv, "next-id");

  while ((r = kv_next (&kv, &key, &v, why, sizeof why)) == 1) {
    struct parsed_layer *np;

    if (strcmp (key, "layer") != 0)
      return refuse ("%s: line %u: unknown line '%s ...'", STATE_NAME,
                     kv.line, key);
    np = realloc (ps->layers, (ps->nlayers + 1) * sizeof *np);
    if (np == NULL)
      return refuse ("out of memory");
    ps->layers = np;
    if (parse_layer (v, &ps->layers[ps->nlayers]) == -1)
      return malformed (&kv, "layer");
    ps->nlayers++;
  }
  if (r == -1)
    return refuse ("%s: %s; %s", STATE_NAME, why, FIX);
  return 0;
}

/* The geometry of the state, as far as it can be checked without the
 * disk below: the block size.
 */
static int
check_block_size (const struct parsed_state *ps, uint32_t want_bs)
{
  uint32_t bs = ps->block_size;

  if (want_bs && want_bs != bs)
    return refuse ("uses snapshot-block-size=%" PRIu32 ", not %" PRIu32
                   "; drop the snapshot-block-size parameter or use a new "
                   "snapshot-dir", bs, want_bs);
  if (!geom_block_size_ok (bs))
    return refuse ("%s: invalid block size %" PRIu32, STATE_NAME, bs);
  return 0;
}

/* The index in ps of the layer with id, or ps->nlayers. */
static size_t
find_parsed (const struct parsed_state *ps, uint64_t id)
{
  size_t i;

  for (i = 0; i < ps->nlayers; ++i)
    if (ps->layers[i].id == id)
      break;
  return i;
}

/* The tree of layers the state describes must make sense: ids, kinds,
 * names, parents, exactly one active layer.
 */
static int
check_layers (const struct parsed_state *ps)
{
  char why[256];
  size_t i, k, nactive = 0;

  if (ps->nlayers >= MAX_SLOTS)
    return refuse ("%s: too many layers (%zu; at most %d)", STATE_NAME,
                   ps->nlayers, MAX_SLOTS - 1);
  for (i = 0; i < ps->nlayers; ++i) {
    const struct parsed_layer *pl = &ps->layers[i];
    bool active = strcmp (pl->kind, "active") == 0;

    if (pl->id == 0 || pl->id >= ps->next_id ||
        (pl->parent != 0 && pl->parent >= pl->id))
      return refuse ("%s: inconsistent layer %" PRIu64 "; %s", STATE_NAME,
                     pl->id, FIX);
    if (!active && strcmp (pl->kind, "frozen") != 0 &&
        strcmp (pl->kind, "deleting") != 0)
      return refuse ("%s: layer %" PRIu64 " has unknown kind '%s'",
                     STATE_NAME, pl->id, pl->kind);
    if (!active && !name_valid (pl->name, why, sizeof why))
      return refuse ("%s: layer %" PRIu64 ": %s", STATE_NAME, pl->id, why);
    if (active && ++nactive > 1)
      return refuse ("%s: more than one active layer", STATE_NAME);
    for (k = 0; k < i; ++k) {
      const struct parsed_layer *o = &ps->layers[k];
      if (o->id == pl->id)
        return refuse ("%s: layer %" PRIu64 " appears twice", STATE_NAME,
                       pl->id);
      if (!active && strcmp (o->kind, "active") != 0 &&
          strcmp (o->name, pl->name) == 0)
        return refuse ("%s: snapshot name '%s' appears twice", STATE_NAME,
                       pl->name);
    }
  }
  for (i = 0; i < ps->nlayers; ++i) {
    const struct parsed_layer *pl = &ps->layers[i];
    size_t p;

    if (pl->parent == 0)
      continue;
    p = find_parsed (ps, pl->parent);
    if (p == ps->nlayers || strcmp (ps->layers[p].kind, "active") == 0)
      return refuse ("%s: layer %" PRIu64 " has a missing parent %" PRIu64,
                     STATE_NAME, pl->id, pl->parent);
  }
  if (nactive == 0)
    return refuse ("%s: no active layer", STATE_NAME);
  return 0;
}

/* Say so when the file system cannot hold the largest data file this
 * directory needs (one made on another file system, or by an nbdsnap
 * that kept the data of a large disk in one file): writes past its
 * limit fail, each on its own, with ENOSPC.  Not a refusal: the
 * snapshots can still be read and copied out.
 */
static void
warn_file_size (void)
{
  uint64_t need = ldata_layout.seg_shift ?
    UINT64_C (1) << ldata_layout.seg_shift : S.g.disk_size;
  char d[160];

  if (ldata_fits (S.dirfd, need) != 0)
    return;                     /* it fits, or could not be probed */
  ldata_describe (S.g.disk_size, ldata_layout.seg_shift, d, sizeof d);
  nbdkit_error ("snapshot-dir %s: warning: it keeps %s, but its file "
                "system cannot hold a file of %" PRIu64 " bytes: writes "
                "to the disk past that limit will fail (ENOSPC). Copy the "
                "live disk and the snapshots you need out, then start on "
                "a new snapshot-dir, which this nbdsnap sets up to fit "
                "(see nbdkit-snapshot-filter(1), \"Large disks\")",
                S.dir, d, need);
}

/* The disk below must be the disk the directory was made for. */
static int
check_disk (const struct parsed_state *ps)
{
  if (ps->disk_size != S.g.disk_size)
    return refuse ("was made for a disk of %" PRIu64 " bytes, but the "
                   "plugin's disk now has %" PRIu64 " bytes; start nbdkit "
                   "on the original disk, or use a new snapshot-dir",
                   ps->disk_size, S.g.disk_size);
  if (memcmp (ps->fp, S.fp, SHA256_LEN) != 0)
    return refuse ("was made for another disk (the first/last blocks of "
                   "the plugin's disk differ from when it was created); "
                   "start nbdkit on the original disk, or use a new "
                   "snapshot-dir");
  geom_init (&S.g, ps->disk_size, ps->block_size);
  S.next_id = ps->next_id;
  if (ldata_set_layout (ps->seg_shift, ps->disk_size) == -1)
    return refuse ("%s: bad data-segment-size; %s", STATE_NAME, FIX);
  warn_file_size ();
  return 0;
}

/* Refuse to start because a layer could not be opened or loaded: out
 * of memory or descriptors says so (the directory is fine), anything
 * else is the directory's fault.
 */
static void
refuse_layer (char *why, size_t whylen, size_t nlayers, const char *where)
{
  if (errno == ENOMEM)
    refuse ("%s", why);
  else if (fdlimit_exhausted (errno)) {
    hint_open_files (why, whylen, nlayers);
    refuse ("%s", why);
  }
  else
    refuse ("%s%s; %s", why, where, FIX);
}

/* Open every layer the state names, with its map, and link them (the
 * tree was checked by check_layers).
 */
static int
open_layers (const struct parsed_state *ps)
{
  struct layer **ls;
  char why[512];
  size_t i;
  int r = -1;

  ls = calloc (ps->nlayers + 1, sizeof *ls);
  if (ls == NULL)
    return refuse ("out of memory");
  for (i = 0; i < ps->nlayers; ++i) {
    const struct parsed_layer *pl = &ps->layers[i];
    bool active = strcmp (pl->kind, "active") == 0;
    struct layer *l;

    l = layer_open (S.dirfd, pl->id, &S.g, false, why, sizeof why);
    if (l == NULL) {
      refuse_layer (why, sizeof why, ps->nlayers, " (listed in the state "
                    "file)");
      goto out;
    }
    if (alloc_slot (l) == -1) {
      layer_free (l);
      refuse ("too many layers");
      goto out;
    }
    ls[i] = l;
    if (layer_load_map (S.dirfd, l, &S.g, why, sizeof why) == -1) {
      refuse_layer (why, sizeof why, ps->nlayers, "");
      goto out;
    }
    l->saved_gen = l->gen = 0;
    l->created = pl->created;
    l->active = active;
    l->deleting = strcmp (pl->kind, "deleting") == 0;
    if (active)
      S.active = l;
    else
      snprintf (l->name, sizeof l->name, "%s", pl->name);
  }
  for (i = 0; i < ps->nlayers; ++i)
    if (ps->layers[i].parent)
      ls[i]->parent = ls[find_parsed (ps, ps->layers[i].parent)];
  r = 0;
 out:
  free (ls);
  return r;
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
        (strncmp (e->d_name, "layer-1.data", 12) == 0 &&
         (fstatat (S.dirfd, e->d_name, &st, 0) == -1 || st.st_size != 0)))
      first_start_leftover = false;
  }
  if (!any || !first_start_leftover)
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
  /* Every file of it, whatever segments it had (the layout of the
   * directory is not known yet: it is chosen after this).
   */
  nbdkit_debug ("snapshot: removing what an interrupted first start left");
  rewinddir (d);
  while ((e = readdir (d)) != NULL)
    if (strncmp (e->d_name, "layer-1.", 8) == 0)
      unlinkat (S.dirfd, e->d_name, 0);
  closedir (d);
  return 0;
}

/* A new directory (no state file, no layers: see check_no_layers): one
 * empty active layer, in blocks of bs, and the state that names it.
 */
static int
create_state (uint32_t bs)
{
  struct layer *a;
  char why[512], d[160];
  unsigned seg_shift;

  geom_init (&S.g, S.g.disk_size, bs);
  if (ldata_choose (S.dirfd, S.g.disk_size, bs, &seg_shift, why,
                    sizeof why) == -1 ||
      ldata_set_layout (seg_shift, S.g.disk_size) == -1) {
    nbdkit_error ("snapshot-dir %s: %s", S.dir, why);
    return -1;
  }
  ldata_describe (S.g.disk_size, seg_shift, d, sizeof d);
  nbdkit_debug ("snapshot: snapshot-dir %s: %s", S.dir, d);
  S.next_id = 1;
  a = new_layer (NULL, why, sizeof why);
  if (a == NULL) {
    hint_open_files (why, sizeof why, 1);
    nbdkit_error ("snapshot-dir %s: %s", S.dir, why);
    return -1;
  }
  a->active = true;
  S.active = a;
  switch (save_state ()) {
  case 0:
    break;
  case -1:
    nbdkit_error ("snapshot-dir %s: cannot write the state file: %m",
                  S.dir);
    drop_new_layer (a);
    S.active = NULL;
    return -1;
  default:
    /* In place, but not durable: do not start on it.  The next start
     * finds it, or what an interrupted first start leaves (which
     * check_no_layers removes).
     */
    nbdkit_error ("snapshot-dir %s: the new state file could not be made "
                  "durable: %m", S.dir);
    S.slots[a->slot] = NULL;
    layer_free (a);
    S.active = NULL;
    return -1;
  }
  nbdkit_debug ("snapshot: new snapshot-dir %s (%" PRIu64 " blocks of %"
                PRIu32 ")", S.dir, S.g.nblocks, bs);
  return 0;
}

/* Is id a layer of the table?  (For remove_strays.) */
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
  /* "map", "map.tmp", "data", then the data segments "data.K". */
  char segs[LDATA_MAX_SEGS][16];
  const char *suffixes[LDATA_MAX_SEGS + 3] = { "map", "map.tmp" };
  unsigned k;

  for (k = 0; k < ldata_layout.nseg; ++k) {
    if (k == 0)
      snprintf (segs[k], sizeof segs[k], "data");
    else
      snprintf (segs[k], sizeof segs[k], "data.%u", k);
    suffixes[2 + k] = segs[k];
  }
  suffixes[2 + k] = NULL;
  statedir_remove_strays (S.dirfd, STATE_NAME, "layer-", suffixes,
                          known_layer, "snapshot");
}

/* What read_state found, for load_or_create_state. */
static struct {
  char *text;                   /* the state file; NULL: there is none */
  struct parsed_state ps;       /* its lines (pointing into text) */
} found;

/* Free what read_state kept. */
void
forget_state (void)
{
  free (found.text);
  free (found.ps.layers);
  memset (&found, 0, sizeof found);
}

/* .get_ready: read and check the state file, or check that a directory
 * without one holds no layers.
 */
int
read_state (uint32_t want_bs)
{
  size_t len;

  forget_state ();
  if (statefile_read (S.dirfd, STATE_NAME, &found.text, &len) == -1) {
    found.text = NULL;
    if (errno != ENOENT) {
      nbdkit_error ("snapshot-dir %s: cannot read %s: %m", S.dir,
                    STATE_NAME);
      return -1;
    }
    return check_no_layers ();
  }
  if (parse_state (found.text, len, &found.ps) == -1 ||
      check_block_size (&found.ps, want_bs) == -1 ||
      check_layers (&found.ps) == -1) {
    forget_state ();
    return -1;
  }
  return 0;
}

/* .after_fork: load the state read (or create one); remove strays. */
int
load_or_create_state (uint32_t new_bs)
{
  int r;

  if (found.text)
    r = check_disk (&found.ps) == 0 && open_layers (&found.ps) == 0 ? 0 : -1;
  else
    r = create_state (new_bs);
  forget_state ();
  if (r == 0)
    remove_strays ();
  return r;
}
