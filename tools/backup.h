/* nbdsnap tool: nbdsnap backup, shared by its files.
 *
 *   backup.c          the command: options, the steps in order, report
 *   backup-repo.c     the repository: open, or initialize for a first
 *                     backup (and remove it again if that backup fails)
 *   backup-server.c   the server's command exports: checks, freeze
 *                     begin/end, undoing a failed backup's checkpoint
 *   backup-plan.c     the view's extents into runs of blocks and chunks
 *   backup-copy.c     worker threads reading chunks into the repository
 *   backup-until.c    --until: a past instant, from a snapshot made with
 *                     its checkpoint
 *   backup-instant.c  --until: were that snapshot and checkpoint made at
 *                     one instant?
 */
#ifndef NBDSNAP_BACKUP_H
#define NBDSNAP_BACKUP_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "nbdsnap.h"
#include "quiesce.h"
#include "repo.h"

#define CHUNK_BYTES (1u << 20)          /* bytes per read request (max) */

/* What a run of blocks is to the backup. */
enum { KIND_NONE, KIND_ZERO, KIND_DATA };

struct run {                    /* a run of repository blocks */
  uint64_t block, n;
  int kind;
};

struct backup {
  /* options */
  const char *uri, *repodir;
  char name[REPO_NAME_MAX + 1], since[REPO_NAME_MAX + 1];
  bool name_generated;          /* no --name: b-TIME, -2, -3... if taken */
  char until[REPO_NAME_MAX + 1];        /* --until: a past checkpoint */
  bool incremental, compress;
  int connections;
  bool show_progress;

  /* state */
  struct repo *repo;
  struct repo_writer *w;
  uint32_t bs;
  uint64_t size;
  bool begun;                   /* the frozen point is held */
  bool end_lost;                /* @freeze:end ran, its result lost */
  bool frozen_before;           /* a frozen point of that name was there
                                 * before the backup began (not ours) */
  bool checkpoint;              /* ... with checkpoint name, ours */
  bool need_init;               /* create the repository once the
                                 * server has answered */
  bool made_repo;               /* this run created the repository */
  bool point_left;              /* the commit failed after the point was
                                 * put in place (not durable) */
  bool dir_was_missing;         /* ... and its directory */
  uint32_t init_bs;
  char view[256];               /* the export read */
  struct nbd_handle *h0;        /* the first connection to it */
  uint64_t maxreq;              /* the server's largest request */

  /* work: runs of blocks, then data chunks to read */
  struct run *runs;
  size_t nruns, caprun;
  size_t next;                  /* atomic: next chunk */
  struct progress *pg;

  /* results */
  uint64_t data_blocks, zero_blocks, bytes_read;  /* atomic */
  uint64_t stored;              /* bytes stored in the point */
  pthread_mutex_t lock;
  bool failed;
  char err[ERRLEN];

  /* quiesce hooks and checkpoint retention (quiesce.h) */
  struct quiesce q;
  unsigned keep_checkpoints;    /* 0: no pruning */
  struct prune_plan plan;       /* decided before the commit */
  char pruned[4096];            /* JSON strings of the deleted ones */
  int npruned;
};

/* backup.c */
/* Record the first failure (thread-safe); the others are dropped. */
void backup_fail (struct backup *b, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3), nonnull (1, 2)));
/* Has the backup failed or been interrupted? */
bool backup_stopping (struct backup *b) __attribute__ ((nonnull));

/* backup-repo.c */
/* Open the repository (mode -1: full wanted, 1: incremental, 0:
 * automatic), or note that the first backup will initialize it.
 * Prints the error and returns the exit code.
 */
int open_backup_repo (struct backup *b, int mode, uint32_t init_bs)
  __attribute__ ((nonnull));
/* Initialize the repository noted by open_backup_repo, and open it. */
int init_repo_now (struct backup *b) __attribute__ ((nonnull));
/* After a failed first backup: remove the repository it created. */
void remove_made_repo (struct backup *b) __attribute__ ((nonnull));

/* backup-server.c */
/* The server has a freeze filter and (incremental) a consistent base
 * checkpoint.  Prints the error and returns the exit code.
 */
int check_server (struct backup *b) __attribute__ ((nonnull));
/* @freeze:begin/NAME.  Prints the error and returns the exit code. */
int begin_point (struct backup *b) __attribute__ ((nonnull));
/* @freeze:end/NAME; the point must not have been aborted.  -1 and
 * backup_fail on failure.
 */
int end_point (struct backup *b) __attribute__ ((nonnull));
/* Undo what a failed backup did on the server and in the repository. */
void cleanup (struct backup *b) __attribute__ ((nonnull));

/* backup-plan.c */
/* Turn the view's extents into runs of repository blocks. */
int classify (struct backup *b, const struct extent *v, size_t n)
  __attribute__ ((nonnull (1)));
/* Split the data runs into chunks of at most CHUNK_BYTES (one block at
 * least), dropping the zero runs; *total: bytes to read.
 */
int make_chunks (struct backup *b, uint64_t *total)
  __attribute__ ((nonnull));

/* backup-until.c */
/* --until: checkpoint until (and since) on the server, and a snapshot
 * made at until's instant.  Prints the error and returns the exit code.
 */
int until_check_server (struct backup *b) __attribute__ ((nonnull));
/* --until: the extents that say which blocks to copy from the snapshot
 * view (b->h0): its own (full) or the change map since..until.  -1 and
 * backup_fail on failure.
 */
int until_extents (struct backup *b, struct extent **ext, size_t *n)
  __attribute__ ((nonnull));

/* backup-instant.c */
/* --until: do the changes since snapshot b->until and since checkpoint
 * b->until agree (made at one instant)?  gran, snap_bs: the filters'
 * block sizes; b->size must be set.  Prints the error and returns the
 * exit code.
 */
int until_same_instant (struct backup *b, uint64_t gran, uint64_t snap_bs)
  __attribute__ ((nonnull));

/* backup-copy.c */
/* Store the zero runs as zero entries.  -1 and backup_fail on failure. */
int store_zero_runs (struct backup *b) __attribute__ ((nonnull));
/* Copy the chunks over nconn connections (the first is b->h0). */
void copy_chunks (struct backup *b, int nconn) __attribute__ ((nonnull));

#endif /* NBDSNAP_BACKUP_H */
