/* nbdsnap cbt filter: starting and stopping the tracker.
 *
 * Start (docs/cbt-format.md section 6.1), in two parts.  In .get_ready
 * (tracker_start), what needs no plugin: lock cbt-dir and read the state
 * file, so that a bad directory stops nbdkit before it serves.  In
 * .after_fork (tracker_after_fork), when nbdkit makes the backend usable:
 * learn the disk size, read every bitmap, take in a change of disk size
 * and an unclean stop, make the newest bitmap the active one, save the
 * state as running, remove strays.  Stop (section 6.7): seal the bitmaps
 * and save the state as clean, unless the tracker failed.
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
  .fail = FAILURE_INIT,
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

/* Does cbt-dir hold a file that looks like a bitmap?  1 or 0, or -1
 * after nbdkit_error if the directory cannot be read.
 */
static int
any_bitmaps (void)
{
  DIR *d = statedir_open (T.dirfd);
  struct dirent *e;
  int any = 0;

  if (d == NULL) {
    nbdkit_error ("cbt-dir %s: cannot read the directory: %m", T.dir);
    return -1;
  }
  errno = 0;
  while ((e = readdir (d)) != NULL) {
    if (strncmp (e->d_name, "bitmap-", 7) == 0)
      any = 1;
    errno = 0;
  }
  if (errno != 0) {
    nbdkit_error ("cbt-dir %s: cannot read the directory: %m", T.dir);
    any = -1;
  }
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
    if (sbm_set (&a->bits, b) == -1) {
      nbdkit_error ("cbt: out of memory");
      return -1;
    }
  /* Older bitmaps: at the new size, and sealed (a crash can leave one
   * open, section 7.3).
   */
  for (i = 0; i + 1 < T.ncps; ++i)
    if ((old_size != T.g.disk_size || T.cps[i]->open_on_disk) &&
        bm_seal (T.cps[i]) != 0) {
      nbdkit_error ("cbt-dir %s: cannot rewrite a bitmap: %m", T.dir);
      return -1;
    }
  if (bm_activate (a) != 0) {
    nbdkit_error ("cbt-dir %s: cannot write the active bitmap: %m", T.dir);
    return -1;
  }
  return 0;
}

/* Start the tracker, the part that needs no plugin (section 6.1 steps
 * 1, 2 and 4).  -1 after nbdkit_error.
 */
int
tracker_start (const struct tracker_config *cfg)
{
  int r;

  T.dir = strdup (cfg->dir);
  if (T.dir == NULL) {
    nbdkit_error ("cbt: out of memory");
    return -1;
  }
  T.sync = cfg->sync;
  T.reset_on_shrink = cfg->reset_on_shrink;
  T.granularity = cfg->granularity ? cfg->granularity : 65536;
  T.loaded.sync = cfg->sync;
  if (open_dir () == -1)
    return -1;
  r = read_state (cfg, &T.loaded);
  if (r == -1)
    return -1;
  T.have_state = r == 1;
  if (!T.have_state && (r = any_bitmaps ()) != 0) {
    if (r == -1)
      return -1;
    nbdkit_error ("cbt-dir %s: holds bitmaps but no state file (was it "
                  "deleted?); restore it from a backup, or empty the "
                  "directory to start again (the next backup must be "
                  "full)", T.dir);
    return -1;
  }
  return 0;
}

/* The rest of the start (section 6.1 steps 3 and 5 to 10).  -1 after
 * nbdkit_error.
 */
int
tracker_after_fork (nbdkit_backend *backend, const char *exportname)
{
  const struct saved_state *st = &T.loaded;
  uint64_t old_size;
  uint32_t gran;
  int64_t size;
  int r;

  size = disk_below_size_of (backend, exportname, "cbt");
  if (size == -1)
    return -1;
  if (T.have_state) {
    gran = st->granularity;
    T.next_id = st->next_id;
    old_size = st->disk_size;
    if ((uint64_t) size < old_size) {
      if (!T.reset_on_shrink) {
        nbdkit_error ("cbt-dir %s: the disk shrank from %" PRIu64 " to %"
                      PRId64 " bytes; the bitmaps cannot describe it.  Add "
                      "cbt-reset-on-shrink=true to drop every checkpoint "
                      "(the next backup must be full)", T.dir, old_size,
                      size);
        return -1;
      }
      /* Their files go after the new state is saved (as strays). */
      nbdkit_debug ("cbt: disk shrank: dropping every checkpoint");
      free_all ();
      old_size = size;
    }
  }
  else {
    gran = T.granularity;
    T.next_id = 1;
    old_size = size;
  }
  geom_init (&T.g, size, gran);

  if (sbm_init (&T.durable, T.g.nblocks) == -1 ||
      bitset_init (&T.dirty_pages, T.g.nblocks / PAGE_BITS + 1) == -1 ||
      (T.round_buf = malloc (ROUND_PAGES * REC_BYTES)) == NULL ||
      (T.round_pages = malloc (ROUND_PAGES * sizeof *T.round_pages)) ==
      NULL) {
    nbdkit_error ("cbt: out of memory");
    return -1;
  }
  if (load_bitmaps (old_size, st) == -1)
    return -1;
  r = save_state (true);
  if (r != 0) {
    nbdkit_error ("cbt-dir %s: cannot write the state file: %m%s", T.dir,
                  r == -2 ? " (the directory could not be made durable)"
                  : "");
    return -1;
  }
  /* Only now that the state names what exists (section 7.1). */
  remove_strays ();
  T.ready = true;
  return 0;
}

/* Stop the tracker (section 6.7) and free everything.  After a failure
 * (or a start that did not finish) the files stay as they are: the
 * state says "running", so the next start takes it as an unclean stop.
 */
void
tracker_stop (void)
{
  size_t i;
  int r = 0;

  if (T.dirfd == -1)
    return;
  if (T.ready && failure_is_set (&T.fail))
    nbdkit_debug ("cbt: stopping in the failed state: cbt-dir keeps status "
                  "running");
  else if (T.ready) {
    for (i = 0; r == 0 && i < T.ncps; ++i)
      if (T.cps[i]->open_on_disk && (r = bm_seal (T.cps[i])) != 0)
        nbdkit_error ("cbt: sealing the bitmap of '%s' at shutdown: %m "
                      "(the next start treats this as an unclean stop)",
                      T.cps[i]->name);
    if (r == 0 && (r = save_state (false)) != 0)
      nbdkit_error ("cbt: writing the state file at shutdown: %m%s",
                    r == -2 ? " (in place, but the directory could not be "
                    "made durable)" : " (the next start treats this as an "
                    "unclean stop)");
  }
  free_all ();
  sbm_free (&T.durable);
  bitset_free (&T.dirty_pages);
  free (T.round_buf);
  free (T.round_pages);
  T.round_buf = NULL;
  T.round_pages = NULL;
  if (T.lockfd >= 0)
    close (T.lockfd);
  close (T.dirfd);
  T.dirfd = -1;
  T.ready = false;
  free (T.dir);
  T.dir = NULL;
}
