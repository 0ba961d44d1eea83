/* nbdsnap snapshot filter: the store's life: start, after_fork, stop.
 *
 * Starting is in two steps.  .get_ready locks snapshot-dir and reads and
 * checks the state file (state.c): nothing there needs the disk below,
 * and an error stops nbdkit before it serves.  .after_fork (the disk
 * below may only be used from there: nbdkit has no quit pipe before it,
 * and in daemon mode .get_ready runs before the fork) fingerprints the
 * plugin's disk, checks the state against it, loads the layers (or makes
 * a new directory) and resolves the live disk's owner map.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nbdkit-filter.h>
#include <gnutls/crypto.h>

#include "lockscope.h"
#include "statedir.h"
#include "store-internal.h"

/* The store. */
struct store S = {
  .dirfd = -1, .lockfd = -1,
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .cond = PTHREAD_COND_INITIALIZER,
  .gate = GATE_INIT,
  .flush_lock = PTHREAD_MUTEX_INITIALIZER,
  .fail = FAILURE_INIT,
  .disk = DISK_NAME_INIT,
};

/* The block size of a new directory. */
static uint32_t new_block_size;

/* Size of the disk (the plugin's). */
uint64_t
store_size (void)
{
  return S.g.disk_size;
}

/* Block size of the layers. */
uint32_t
store_block_size (void)
{
  return S.g.block_size;
}

/* Fingerprint of the plugin's disk: SHA-256 of its size, first and last
 * 4096 bytes.  A snapshot-dir is only valid on top of the disk it was made on.
 */
#define FP_BYTES 4096             /* bytes hashed at each end of the disk */

/* The size and fingerprint of the disk behind next (prepared).  -1
 * after nbdkit_error.
 */
static int
fingerprint (nbdkit_next *next, int64_t *size, uint8_t fp[SHA256_LEN])
{
  char *buf;
  uint64_t n;
  int err = 0, r = -1;
  gnutls_hash_hd_t h;
  uint8_t le[8];

  *size = next->get_size (next);
  if (*size == -1)
    return -1;
  n = min64 (FP_BYTES, *size);
  buf = malloc (n ? n : 1);
  if (buf == NULL) {
    nbdkit_error ("snapshot: out of memory");
    return -1;
  }
  if (gnutls_hash_init (&h, GNUTLS_DIG_SHA256) < 0) {
    nbdkit_error ("snapshot: cannot compute SHA-256 (gnutls)");
    free (buf);
    return -1;
  }
  put_le64 (le, *size);
  gnutls_hash (h, le, 8);
  if (n > 0 &&
      (next->pread (next, buf, n, 0, 0, &err) == -1 ||
       gnutls_hash (h, buf, n) < 0 ||
       next->pread (next, buf, n, *size - n, 0, &err) == -1 ||
       gnutls_hash (h, buf, n) < 0))
    goto out;
  r = 0;
 out:
  gnutls_hash_deinit (h, fp);
  free (buf);
  return r;
}

/* Read the plugin's disk size into S.g.disk_size and its fingerprint
 * into S.fp, through a context of its own on the export the store keeps
 * (disk_name_get: the default export).  -1 after nbdkit_error.
 */
static int
probe_plugin (nbdkit_backend *backend)
{
  nbdkit_next *next;
  const char *exportname;
  int64_t size;
  int r = -1;

  exportname = disk_name_get (&S.disk, "snapshot");
  if (exportname == NULL)
    return -1;
  next = nbdkit_next_context_open (backend, 1, exportname, 1);
  if (next == NULL) {
    nbdkit_error ("snapshot: cannot open the plugin to check its disk");
    return -1;
  }
  if (next->prepare (next) == 0) {
    r = fingerprint (next, &size, S.fp);
    next->finalize (next);
  }
  nbdkit_next_context_close (next);
  if (r == -1) {
    nbdkit_error ("snapshot: cannot read the plugin's disk to check it");
    return -1;
  }
  S.g.disk_size = size;
  return 0;
}

/* Has a connection's own context of the disk been checked against the
 * probe?  (Clients' contexts name the export as nbdkit resolved it, the
 * probe's is opened outside any connection: a plugin could serve two
 * disks there.)
 */
static int disk_checked;

/* The disk behind a live or view connection's next is the disk of the
 * state.  -1 after nbdkit_error.
 */
int
store_check_disk (nbdkit_next *next)
{
  uint8_t fp[SHA256_LEN];
  int64_t size = next->get_size (next);

  if (size == -1)
    return -1;
  if (size != (int64_t) S.g.disk_size) {
    nbdkit_error ("snapshot: the plugin's disk changed size under us "
                  "(%" PRIi64 " bytes, not %" PRIu64 ")", size,
                  S.g.disk_size);
    return -1;
  }
  if (__atomic_load_n (&disk_checked, __ATOMIC_ACQUIRE))
    return 0;
  if (fingerprint (next, &size, fp) == -1)
    return -1;
  if (memcmp (fp, S.fp, SHA256_LEN) != 0) {
    nbdkit_error ("snapshot: the disk the plugin serves to clients is not "
                  "the disk it showed at start (first/last blocks differ): "
                  "this plugin serves its default export differently "
                  "outside client connections, which this filter cannot "
                  "work with");
    return -1;
  }
  __atomic_store_n (&disk_checked, 1, __ATOMIC_RELEASE);
  return 0;
}

/* Create (if need be), open and lock snapshot-dir, and check that files
 * can be made in it.  -1 after nbdkit_error.
 */
static int
open_dir (void)
{
  return statedir_open_locked ("snapshot-dir", S.dir, &S.dirfd, &S.lockfd);
}

/* Start the store (see store.h): the directory and its state file. */
int
store_start (const struct store_config *cfg)
{
  stripes_init (&S.stripes);
  S.dir = strdup (cfg->dir);
  if (S.dir == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  if (cfg->revert_on_close)
    snprintf (S.revert_on_close, sizeof S.revert_on_close, "%s",
              cfg->revert_on_close);
  new_block_size = cfg->block_size ? cfg->block_size : 65536;

  if (open_dir () == -1 || read_state (cfg->block_size) == -1)
    return -1;
  return 0;
}

/* Has the store been loaded (1), or failed to (-1)?  (load_lock) */
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static int loaded;

/* The disk below, the layers, the owner map: once. */
int
store_ready (nbdkit_backend *backend)
{
  if (__atomic_load_n (&loaded, __ATOMIC_ACQUIRE) == 1)
    return 0;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&load_lock);
  if (loaded)
    return loaded == 1 ? 0 : -1;
  __atomic_store_n (&loaded, -1, __ATOMIC_RELEASE);
  if (probe_plugin (backend) == -1 ||
      load_or_create_state (new_block_size) == -1)
    return -1;
  if (compute_owner (S.active, &S.owner) == -1) {
    nbdkit_error ("snapshot: out of memory for the owner map");
    return -1;
  }
  __atomic_store_n (&loaded, 1, __ATOMIC_RELEASE);
  return 0;
}

/* Finish starting (see store.h); then resume the merge of snapshots
 * whose delete a stop interrupted.
 */
int
store_after_fork (nbdkit_backend *backend)
{
  if (store_ready (backend) == -1)
    return -1;

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&S.lock);
  if (next_deleting () != NULL) {
    nbdkit_debug ("snapshot: resuming interrupted deletes");
    if (start_merge () == -1) {
      nbdkit_error ("snapshot: cannot start merge thread: %m");
      return -1;
    }
  }
  return 0;
}

/* Stop the merge, make the live disk durable, release everything. */
void
store_stop (void)
{
  size_t i;

  forget_state ();
  if (S.dirfd == -1)
    return;
  __atomic_store_n (&S.stopping, true, __ATOMIC_RELEASE);
  join_merge ();
  if (S.active) {
    if (failure_is_set (&S.fail))
      nbdkit_debug ("snapshot: not saving the live disk at shutdown: the "
                    "store failed (%s)", S.fail.why);
    else if (save_layer (S.active, false, "saving the live disk at "
                         "shutdown") == -1) {
      if (!failure_is_set (&S.fail))
        nbdkit_error ("snapshot: saving the live disk at shutdown: %m");
    }
    else if (layer_close (S.active) == -1)
      nbdkit_error ("snapshot: closing the live disk's layer at "
                    "shutdown: %m");
  }
  for (i = 1; i < MAX_SLOTS; ++i)
    if (S.slots[i]) {
      layer_free (S.slots[i]);
      S.slots[i] = NULL;
    }
  omap_free (&S.owner);
  if (S.lockfd >= 0)
    close (S.lockfd);
  close (S.dirfd);
  S.dirfd = -1;
  free (S.dir);
  S.dir = NULL;
  disk_name_free (&S.disk);
}
