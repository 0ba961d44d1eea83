/* nbdsnap cbt filter: what the files of the tracker share.
 *
 * Files in cbt-dir (docs/cbt-format.md has the bytes):
 *   lock              flock'd while nbdkit runs
 *   state             text: geometry, checkpoints, clean/running status
 *   bitmap-ID.bits    one bit per block; frozen bitmaps carry a SHA-256,
 *                     the active one is "open" (updated in place) while
 *                     nbdkit runs and sealed with its checksum at shutdown
 *
 * Durability.  strict: before a write passes down, the bits for its blocks
 * are on disk (group commit: one fdatasync serves every writer waiting
 * for it; a block already durably dirty costs one atomic load).  flush:
 * bits are written at flush and clean shutdown; after an unclean stop the
 * active bitmap is marked inconsistent, and change maps that need it are
 * refused.
 *
 * The tracker's files, one concept each:
 *   start.c        start and stop: the directory, strays, disk size changes
 *   state.c        the state file
 *   bitmapfile.c   the bitmap files
 *   mark.c         the data path: marking writes, making the marks durable
 *   checkpoints.c  the commands create, list, delete
 *   changemap.c    change maps: our views, and a snapshot revert's blocks
 */
#ifndef NBDSNAP_CBT_TRACKER_INTERNAL_H
#define NBDSNAP_CBT_TRACKER_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bitmap.h"
#include "exportname.h"
#include "gate.h"
#include "geom.h"
#include "tracker.h"

#define STATE_NAME "state"             /* the state file of cbt-dir */
#define PAGE_BYTES 4096                 /* unit of in-place bitmap writes */
#define PAGE_BITS (PAGE_BYTES * 8)

struct ckpt {
  uint64_t id;
  char name[NAME_MAX_LEN + 1];
  int64_t created;
  bool inconsistent;            /* may miss writes: see the comment above */
  struct bitset bits;
  int fd;                       /* active bitmap: open for in-place writes */
};

struct tracker {
  char *dir;
  int dirfd, lockfd;
  struct geom g;                /* the disk in blocks of the granularity */
  enum cbt_sync sync;
  uint64_t next_id;

  pthread_rwlock_t rw;          /* the checkpoint list (readers: views) */
  pthread_mutex_t cmd_lock;     /* serializes commands */
  struct ckpt **cps;            /* oldest first; cps[ncps-1] is active */
  size_t ncps;
  struct gate gate;             /* writes vs checkpoint creation */

  /* Persistence of the active bitmap (mark.c). */
  struct bitset dirty_pages;    /* pages of it that differ from disk */
  struct bitset durable;        /* strict: bits known to be on disk */
  pthread_mutex_t sync_lock;
  pthread_cond_t sync_cond;
  uint64_t req_seq, done_seq;
  bool syncing;
};

/* The tracker (defined in start.c). */
extern struct tracker T;

/* The newest checkpoint, whose bitmap is the active one; NULL if none. */
static inline struct ckpt *
active_ckpt (void)
{
  return T.ncps ? T.cps[T.ncps - 1] : NULL;
}

/* Index of the checkpoint called name in T.cps, or -1. */
static inline int
find_ckpt (const char *name)
{
  size_t i;

  for (i = 0; i < T.ncps; ++i)
    if (strcmp (T.cps[i]->name, name) == 0)
      return i;
  return -1;
}

/* Number of 64-bit words of a bitmap of nblocks bits. */
static inline size_t
payload_words (uint64_t nblocks)
{
  return (nblocks + 63) / 64;
}

/* bitmapfile.c: the bitmap files. */

/* Load checkpoint c's bitmap file, which may describe a disk of
 * old_nblocks up to T.g.nblocks blocks.  open_ok: an unsealed file is
 * allowed.  -1 with a reason in why.
 */
int bm_load (struct ckpt *c, uint64_t old_nblocks, bool open_ok,
             char *why, size_t whylen)
  __attribute__ ((nonnull (1, 4)));
/* Make c the active bitmap on disk: write it open and keep an fd.
 * -1 and errno.
 */
int bm_activate (struct ckpt *c) __attribute__ ((nonnull (1)));
/* Seal c (it stops being active): checksum, close the in-place fd.
 * -1 and errno.
 */
int bm_seal (struct ckpt *c) __attribute__ ((nonnull (1)));
/* Remove the bitmap file of checkpoint id (errors ignored). */
void bm_unlink (uint64_t id);
/* Free a checkpoint (NULL: nothing), closing its in-place fd. */
void ckpt_free (struct ckpt *c);

/* state.c: the state file. */

/* What the state file says besides the checkpoints. */
struct saved_state {
  uint64_t disk_size;
  uint32_t granularity;
  enum cbt_sync sync;           /* of the run that wrote it */
  uint64_t next_id;
  bool running;                 /* that run did not stop cleanly */
};

/* Replace the state file with T's: status running or clean.  -1 and
 * errno.
 */
int save_state (bool running);
/* Read the state file into *st, appending its checkpoints to T.cps
 * (without their bitmaps); cfg->granularity, if given, must match.
 * 1 if read, 0 if there is none, -1 after nbdkit_error.
 */
int read_state (const struct tracker_config *cfg, struct saved_state *st)
  __attribute__ ((nonnull (1, 2)));

#endif /* NBDSNAP_CBT_TRACKER_INTERNAL_H */
