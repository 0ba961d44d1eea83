/* nbdsnap cbt filter: what the files of the tracker share.
 *
 * Files in cbt-dir (docs/cbt-format.md has the bytes):
 *   lock              flock'd while nbdkit runs
 *   state             text: geometry, checkpoints, clean/running status
 *   bitmap-ID.bits    one bit per block, as the leaves of a sparse bitmap
 *                     (sbitmap.h) that have a bit set; frozen bitmaps
 *                     carry a SHA-256, the active one is "open" (updated
 *                     in place, new leaves appended) while nbdkit runs
 *                     and sealed with its checksum at shutdown
 *
 * Durability.  strict: before a write passes down, the bits for its blocks
 * are on disk (group commit: one fdatasync serves every writer waiting
 * for it; a block already durably dirty costs two atomic loads: no
 * lock, no syscall).  flush:
 * bits are written at flush and clean shutdown; after an unclean stop the
 * active bitmap is marked inconsistent, and change maps that need it are
 * refused.
 *
 * Failure.  An error that cannot be undone (an in-place write or
 * fdatasync of the active bitmap, a state or bitmap file in place whose
 * directory could not be made durable, a rollback that failed) puts the
 * tracker into the failed state (filters/common/failure.h): tracker_fail
 * marks the active checkpoint inconsistent and saves the state file once
 * more (a new file: a bitmap file's writeback error does not touch it);
 * from then on every mark and flush fails with EIO (the write does not
 * pass down), create and delete fail, no file is removed, and the stop
 * leaves the state "running".  A whole-file replacement that failed
 * without replacing anything (statefile_write -1) only fails its command.
 *
 * The tracker's files, one concept each:
 *   start.c        start and stop: the directory, strays, disk size changes
 *   state.c        the state file
 *   sbitmap.c      sparse bitmaps in memory (leaves allocated on use)
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
#include "failure.h"
#include "gate.h"
#include "geom.h"
#include "sbitmap.h"
#include "tracker.h"

#define STATE_NAME "state"             /* the state file of cbt-dir */
#define PAGE_BYTES LEAF_BYTES           /* unit of in-place bitmap writes */
#define PAGE_BITS LEAF_BITS
/* A leaf record of a bitmap file: le64 leaf number + 1, the leaf. */
#define REC_BYTES (8 + LEAF_BYTES)
#define ROUND_PAGES 64                  /* strict: pages per fdatasync */

/* What the state file says besides the checkpoints. */
struct saved_state {
  uint64_t disk_size;
  uint32_t granularity;
  enum cbt_sync sync;           /* of the run that wrote it */
  uint64_t next_id;
  bool running;                 /* that run did not stop cleanly */
};

struct ckpt {
  uint64_t id;
  char name[NAME_MAX_LEN + 1];
  int64_t created;
  bool inconsistent;            /* may miss writes (atomic: see ckpt_*) */
  bool open_on_disk;            /* its file is open (unsealed): the stop
                                 * must seal it */
  struct sbitmap bits;
  int fd;                       /* active bitmap: open for in-place writes */
  uint64_t *foff;               /* open file: offset of each leaf's record
                                 * (0: none yet), by bm_write */
  uint64_t fend;                /* open file: its length (appends go here) */
};

struct tracker {
  char *dir;
  int dirfd, lockfd;
  struct geom g;                /* the disk in blocks of the granularity */
  enum cbt_sync sync;
  uint64_t next_id;
  bool ready;                   /* tracker_after_fork succeeded */

  /* Between tracker_start (.get_ready) and tracker_after_fork. */
  bool have_state;              /* cbt-dir had a state file ... */
  struct saved_state loaded;    /* ... which said this */
  bool reset_on_shrink;
  uint32_t granularity;         /* of a new cbt-dir */

  struct failure fail;          /* the sticky failed state */
  int fail_recorded;            /* atomic: tracker_fail saved the state */

  pthread_rwlock_t rw;          /* the checkpoint list (readers: views) */
  pthread_mutex_t cmd_lock;     /* serializes commands */
  struct ckpt **cps;            /* oldest first; cps[ncps-1] is active */
  size_t ncps;
  struct gate gate;             /* writes vs checkpoint creation */

  /* Persistence of the active bitmap (mark.c). */
  struct bitset dirty_pages;    /* leaves of it that differ from disk */
  struct sbitmap durable;       /* strict: bits known to be on disk (a
                                 * cache: a bit missing costs a sync) */
  pthread_mutex_t sync_lock;
  pthread_cond_t sync_cond;
  uint64_t req_seq, done_seq;
  bool syncing;
  uint8_t *round_buf;           /* ROUND_PAGES records as written (LE) */
  uint64_t *round_pages;        /* their page numbers */
};

/* The tracker (defined in start.c). */
extern struct tracker T;

/* The newest checkpoint, whose bitmap is the active one; NULL if none. */
static inline struct ckpt *
active_ckpt (void)
{
  return T.ncps ? T.cps[T.ncps - 1] : NULL;
}

/* Is checkpoint c inconsistent?  (tracker_fail sets the mark from the
 * data path, without the list's write lock.)
 */
static inline bool
ckpt_inconsistent (const struct ckpt *c)
{
  return __atomic_load_n (&c->inconsistent, __ATOMIC_ACQUIRE);
}

static inline void
ckpt_set_inconsistent (struct ckpt *c, bool v)
{
  __atomic_store_n (&c->inconsistent, v, __ATOMIC_RELEASE);
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
 * allowed (c->open_on_disk says which it was).  -1 with a reason in why.
 */
int bm_load (struct ckpt *c, uint64_t old_nblocks, bool open_ok,
             char *why, size_t whylen)
  __attribute__ ((nonnull (1, 4)));
/* Replace c's bitmap file (statefile_write) with c's bits, ORed with
 * those of extra if not NULL: sealed (with checksum) or open (zero
 * checksum, to be updated in place).  Sets c->open_on_disk when the new
 * file is in place.  0, -1 (errno; the old file is intact) or -2 (errno;
 * the new file is in place but the directory is not durable).
 */
int bm_write (struct ckpt *c, const struct ckpt *extra, bool sealed)
  __attribute__ ((nonnull (1)));
/* Open c's bitmap file for in-place writes into c->fd.  -1 and errno. */
int bm_open (struct ckpt *c) __attribute__ ((nonnull (1)));
/* Start the persistence state of mark.c from c, whose file holds all
 * its bits: c is now the active bitmap.
 */
void bm_make_active (struct ckpt *c) __attribute__ ((nonnull (1)));
/* Make c the active bitmap: bm_write open, bm_open, bm_make_active.
 * 0, -1 or -2 as bm_write (after -2 the rest is done all the same).
 */
int bm_activate (struct ckpt *c) __attribute__ ((nonnull (1)));
/* Seal c (it stops being active): bm_write sealed, close the in-place
 * fd.  0, -1 or -2 as bm_write (the fd is closed after 0 and -2).
 */
int bm_seal (struct ckpt *c) __attribute__ ((nonnull (1)));
/* Remove the bitmap file of checkpoint id.  -1 and errno (the caller
 * decides: a bitmap no state names is a stray, removed at next start).
 */
int bm_unlink (uint64_t id);
/* Free a checkpoint (NULL: nothing), closing its in-place fd. */
void ckpt_free (struct ckpt *c);

/* checkpoints.c: the steps of create and delete, shared with instant.c
 * (a checkpoint and a snapshot at one instant).
 */

/* A new checkpoint called name, not in the list (T.cmd_lock held): the
 * name valid and free, the tracker not failed.  NULL after command_fail.
 */
struct ckpt *new_ckpt (struct command *cmd, const char *name)
  __attribute__ ((nonnull (1, 2)));
/* The instant of new checkpoint c (gate held, list write-locked): flush
 * below (may be NULL), then make c the newest.  -1 after command_fail,
 * c freed unless it was added.
 */
int flush_push_ckpt (struct command *cmd, struct ckpt *c, nbdkit_next *below)
  __attribute__ ((nonnull (1, 2)));
/* Make c the newest checkpoint (gate held, list write-locked).  -1 after
 * command_fail: c was not added (the caller frees it, unless the
 * tracker failed with c active).
 */
int push_ckpt (struct command *cmd, struct ckpt *c)
  __attribute__ ((nonnull (1, 2)));
/* Remove checkpoint i, merging its bitmap into the one before (*prev,
 * NULL if none) (gate held, list write-locked).  -1 after command_fail.
 */
int remove_ckpt (struct command *cmd, size_t i, struct ckpt **prev)
  __attribute__ ((nonnull (1, 3)));
/* Append the JSON objects of checkpoints i .. n-1, comma-separated
 * (list locked); out of memory sets j->oom.
 */
void json_ckpts (struct jbuf *j, size_t i) __attribute__ ((nonnull (1)));

/* state.c: the state file. */

/* Replace the state file with T's: status running or clean.  0, -1 or
 * -2 as statefile_write (errno set).
 */
int save_state (bool running);
/* Enter the failed state (see the comment at the top) because of err;
 * fmt says what failed.  The first call marks the active checkpoint
 * inconsistent and saves the state.  Called from the data path (in the
 * gate) or from a command (gate held, list write-locked): the list does
 * not move meanwhile.
 */
void tracker_fail (int err, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3), nonnull (2)));
/* Read the state file into *st, appending its checkpoints to T.cps
 * (without their bitmaps); cfg->granularity, if given, must match.
 * 1 if read, 0 if there is none, -1 after nbdkit_error.
 */
int read_state (const struct tracker_config *cfg, struct saved_state *st)
  __attribute__ ((nonnull (1, 2)));

#endif /* NBDSNAP_CBT_TRACKER_INTERNAL_H */
