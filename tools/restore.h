/* nbdsnap tool: nbdsnap restore, shared by its files.
 *
 *   restore.c          the command: options, reading the point's blocks
 *                      (verified) with N threads, report
 *   restore-target.c   where they are written: file, device or NBD URI
 */
#ifndef NBDSNAP_RESTORE_H
#define NBDSNAP_RESTORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "nbdsnap.h"
#include "repo.h"

#define CHUNK_BYTES (4u << 20)          /* bytes per read (max) */
#define ZERO_MAX (1ULL << 30)           /* bytes per zero request (max) */

/* What is written: a regular file (a new one, renamed over it at the
 * end), a block device or other special file (in place), an NBD export.
 */
enum target_kind { T_FILE, T_DEVICE, T_NBD };

struct item {                   /* a run of blocks: all zero, or to read */
  uint64_t block, n;
  bool zero;
};

struct restore {
  const char *repodir, *point, *target;
  struct repo *repo;
  struct repo_reader *rd;
  uint32_t bs;
  uint64_t size, nblocks;
  int threads;
  bool show_progress;

  enum target_kind kind;
  int fd;                       /* T_FILE, T_DEVICE */
  bool blkdev;
  char *tmpname;                /* T_FILE */
  char *realtarget;             /* T_FILE: target with links resolved */
  struct nbd_handle **h;        /* T_NBD: nh handles */
  int nh;
  bool can_zero;
  uint64_t maxreq;

  struct item *items;
  size_t nitems, next;
  struct progress *pg;

  uint64_t data_blocks, zero_blocks;
  pthread_mutex_t lock, wlock;
  bool failed;
  char err[ERRLEN];
};

/* restore.c */
/* Record the first failure (thread-safe); the others are dropped. */
void restore_fail (struct restore *R, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3), nonnull (1, 2)));

/* restore-target.c */
/* Write len bytes of buf at off (h: this thread's connection, T_NBD).
 * -1 and restore_fail on error.
 */
int write_data (struct restore *R, struct nbd_handle *h, const void *buf,
                uint64_t len, uint64_t off)
  __attribute__ ((nonnull (1, 3)));
/* Make len bytes at off read as zero. */
int write_zero (struct restore *R, struct nbd_handle *h, uint64_t len,
                uint64_t off)
  __attribute__ ((nonnull (1)));
/* Open R->target (and decide its kind).  Prints the error and returns
 * the exit code.
 */
int open_target (struct restore *R) __attribute__ ((nonnull));
/* Make the written target durable; for a file, put it in place. */
int finish_target (struct restore *R) __attribute__ ((nonnull));
/* Close the target; remove a temporary file that was not put in place. */
void close_target (struct restore *R) __attribute__ ((nonnull));

#endif /* NBDSNAP_RESTORE_H */
