/* nbdsnap cbt filter: starting and stopping the tracker.
 *
 * Start (docs/cbt-format.md section 6.1): lock cbt-dir, learn the disk
 * size, read the state and every bitmap, take in a change of disk size
 * and an unclean stop, make the newest bitmap the active one, remove
 * strays, and save the state as running.  Stop (section 6.7): seal the
 * active bitmap and save the state as clean.
 */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "command.h"
#include "statedir.h"
#include "statefile.h"
#include "tracker-internal.h"

struct tracker T = {
  .dirfd = -1, .lockfd = -1,
  .rw = PTHREAD_RWLOCK_INITIALIZER,
  .cmd_lock = PTHREAD_MUTEX_INITIALIZER,
  .gate = GATE_INIT,
  .sync_lock = PTHREAD_MUTEX_INITIALIZER,
  .sync_cond = PTHREAD_COND_INITIALIZER,
};

/* The disk size found at start. */
uint64_t
tracker_disk_size (void)
{
  return T.g.disk_size;
}

/* Create cbt-dir if missing, open it and take its lock; check that files
 * can be created there.  -1 after nbdkit_error.
 */
static int
open_dir (void)
{
  return statedir_open_locked ("cbt-dir", T.dir, &T.dirfd, &T.lockfd);
}

/* Is id the id of a checkpoint (for statedir_remove_strays)? */
static bool
known_bitmap (uint64_t id)
{
  size_t i;

  for (i = 0; i < T.ncps; ++i)
    if (T.cps[i]->id == id)
      return true;
  return false;
}

/* Remove the files a crash can leave behind (section 7.1). */
static void
remove_strays (void)
{
  static const char *const suffixes[] = { "bits", "bits.tmp", NULL };

  statedir_remove_strays (T.dirfd, STATE_NAME, "bitmap-", suffixes,
                          known_bitmap, "cbt");
}

/* Does cbt-dir hold a file that looks like a bitmap? */
static bool
any_bitmaps (void)
{
  DIR *d = statedir_open (T.dirfd);
  struct dirent *e;
  bool any = false;

  if (d == NULL)
    return false;
  while ((e = readdir (d)) != NULL)
    if (strncmp (e->d_name, "bitmap-", 7) == 0)
      any = true;
  closedir (d);
  return any;
}

/* Forget every checkpoint (their files stay). */
static void
free_all (void)
{
  size_t i;

  for (i = 0; i < T.ncps; ++i)
    ckpt_free (T.cps[i]);
  free (T.cps);
  T.cps = NULL;
  T.ncps = 0;
}

/* Read every checkpoint's bitmap, written for a disk of old_size bytes;
 * st says how the run that wrote them ended.  Then take in an unclean
 * stop and a grown disk, and make the newest bitmap the active one.  -1
 * after nbdkit_error.
 */
static int
load_bitmaps (uint64_t old_size, const struct saved_state *st)
{
  uint64_t old_nblocks = geom_blocks (old_size, T.g.block_size), b;
  struct ckpt *a = active_ckpt ();
  char why[512];
  size_t i;

  for (i = 0; i < T.ncps; ++i) {
    bool newest = i == T.ncps - 1;
    if (bm_load (T.cps[i], old_nblocks, newest || st->running,
                 why, sizeof why) == -1) {
      nbdkit_error ("cbt-dir %s: %s; restore cbt-dir from a backup, or "
                    "start with an empty cbt-dir (the next backup must be "
                    "full)", T.dir, why);
      return -1;
    }
  }
  if (a == NULL)
    return 0;
  if (st->running && st->sync == CBT_SYNC_FLUSH) {
    nbdkit_debug ("cbt: unclean stop in flush mode: the bitmap of '%s' "
                  "may miss writes", a->name);
    a->inconsistent = true;
  }
  /* The disk grew: the new area counts as changed since every
   * checkpoint (the active bitmap is in every "since" union).
   */
  for (b = geom_block (&T.g, old_size);
       old_size < T.g.disk_size && b < T.g.nblocks; ++b)
    bitset_set (&a->bits, b);
  for (i = 0; i + 1 < T.ncps; ++i)
    if ((old_size != T.g.disk_size || st->running) &&
        bm_seal (T.cps[i]) == -1) {
      nbdkit_error ("cbt-dir %s: cannot rewrite a bitmap: %m", T.dir);
      return -1;
    }
  if (bm_activate (a) == -1) {
    nbdkit_error ("cbt-dir %s: cannot write the active bitmap: %m", T.dir);
    return -1;
  }
  return 0;
}

/* Start the tracker (section 6.1).  -1 after nbdkit_error. */
int
tracker_start (const struct tracker_config *cfg, nbdkit_backend *backend)
{
  struct saved_state st = { .sync = cfg->sync };
  uint64_t old_size;
  uint32_t gran;
  int64_t size;
  size_t i;
  int r;

  T.dir = strdup (cfg->dir);
  T.sync = cfg->sync;
  if (open_dir () == -1)
    return -1;
  size = disk_below_size (backend, "cbt");
  if (size == -1)
    return -1;

  r = read_state (cfg, &st);
  if (r == -1)
    return -1;
  if (r == 1) {
    gran = st.granularity;
    T.next_id = st.next_id;
    old_size = st.disk_size;
    if ((uint64_t) size < old_size) {
      if (!cfg->reset_on_shrink) {
        nbdkit_error ("cbt-dir %s: the disk shrank from %" PRIu64 " to %"
                      PRId64 " bytes; the bitmaps cannot describe it.  Add "
                      "cbt-reset-on-shrink=true to drop every checkpoint "
                      "(the next backup must be full)", T.dir, old_size,
                      size);
        return -1;
      }
      nbdkit_debug ("cbt: disk shrank: dropping every checkpoint");
      for (i = 0; i < T.ncps; ++i)
        bm_unlink (T.cps[i]->id);
      free_all ();
      old_size = size;
    }
  }
  else {
    if (any_bitmaps ()) {
      nbdkit_error ("cbt-dir %s: holds bitmaps but no state file (was it "
                    "deleted?); restore it from a backup, or empty the "
                    "directory to start again (the next backup must be "
                    "full)", T.dir);
      return -1;
    }
    gran = cfg->granularity ? cfg->granularity : 65536;
    T.next_id = 1;
    old_size = size;
  }
  geom_init (&T.g, size, gran);

  if (bitset_init (&T.durable, T.g.nblocks) == -1 ||
      bitset_init (&T.dirty_pages, T.g.nblocks / PAGE_BITS + 1) == -1) {
    nbdkit_error ("cbt: out of memory");
    return -1;
  }
  if (load_bitmaps (old_size, &st) == -1)
    return -1;
  remove_strays ();
  if (save_state (true) == -1) {
    nbdkit_error ("cbt-dir %s: cannot write the state file: %m", T.dir);
    return -1;
  }
  return 0;
}

/* Stop the tracker (section 6.7) and free everything. */
void
tracker_stop (void)
{
  struct ckpt *a;

  if (T.dirfd == -1)
    return;
  a = active_ckpt ();
  if (a && bm_seal (a) == -1)
    nbdkit_error ("cbt: sealing the active bitmap at shutdown: %m (the "
                  "next start will treat this as an unclean stop)");
  else if (save_state (false) == -1)
    nbdkit_error ("cbt: writing the state file at shutdown: %m");
  free_all ();
  bitset_free (&T.durable);
  bitset_free (&T.dirty_pages);
  close (T.lockfd);
  close (T.dirfd);
  T.dirfd = -1;
  free (T.dir);
}
