/* nbdsnap snapshot filter: the store's life: start, after_fork, stop.
 *
 * Starting locks snapshot-dir, fingerprints the plugin's disk, loads the
 * state (state.c) and resolves the live disk's owner map.
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
};

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

/* Read the plugin's disk size into S.g.disk_size and its fingerprint
 * into S.fp.  -1 after nbdkit_error.
 */
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

/* Create (if need be), open and lock snapshot-dir, and check that files
 * can be made in it.  -1 after nbdkit_error.
 */
static int
open_dir (void)
{
  return statedir_open_locked ("snapshot-dir", S.dir, &S.dirfd, &S.lockfd);
}

/* Start the store (see store.h). */
int
store_start (const struct store_config *cfg, nbdkit_backend *backend)
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

  if (open_dir () == -1 || probe_plugin (backend) == -1 ||
      load_or_create_state (cfg->block_size,
                            cfg->block_size ? cfg->block_size : 65536) == -1)
    return -1;

  S.owner = malloc (S.g.nblocks * sizeof *S.owner + 1);
  if (S.owner == NULL) {
    nbdkit_error ("snapshot: out of memory for the owner map");
    return -1;
  }
  compute_owner (S.active, S.owner);
  return 0;
}

/* Resume the merge of snapshots whose delete a stop interrupted. */
int
store_after_fork (void)
{
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

  if (S.dirfd == -1)
    return;
  __atomic_store_n (&S.stopping, true, __ATOMIC_RELEASE);
  join_merge ();
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
