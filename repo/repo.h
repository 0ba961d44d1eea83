/* nbdsnap repository: the backup repository.
 *
 * The ONLY code that reads or writes a repository (the backup plugin and
 * the nbdsnap tool both go through it).  The on-disk format is described
 * byte by byte in docs/repository-format.md.
 *
 *   REPO/repository             repository header (text, sha256 line)
 *   REPO/points/NAME/manifest   one restore point (text, sha256 line)
 *   REPO/points/NAME/index      sorted block entries (binary, checksummed)
 *   REPO/points/NAME/data       concatenated stored blocks
 *
 * Error convention: functions taking (err, errlen) write one readable
 * sentence there on failure (what is wrong and, where possible, how to
 * fix it) and return -1 / NULL.  errno is also set.
 */
#ifndef NBDSNAP_REPO_H
#define NBDSNAP_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REPO_NAME_MAX 64

enum repo_block { REPO_BLOCK_ZERO = 0, REPO_BLOCK_DATA = 1 };

struct repo;                      /* an open repository */

struct repo_point_info {
  char name[REPO_NAME_MAX + 1], kind[16] /* "full"|"incremental" */,
       parent[REPO_NAME_MAX + 1] /* "" for full */, since[REPO_NAME_MAX + 1];
  uint64_t disk_size, blocks /* index entries */, stored_bytes;
  int64_t created; bool compressed;
};

/* Valid point name: [A-Za-z0-9._-]{1,64}, not starting with '.', no "..".
 * If not, a reason is written to why (if not NULL).
 */
bool repo_name_valid (const char *name, char *why, size_t whylen)
  __attribute__ ((nonnull (1)));

/* ---- the repository (repo.c) ---- */

/* Create an empty repository in dir (created if missing; must be empty
 * otherwise).  block_size: power of two, 4 KiB .. 16 MiB (0 = 64 KiB).
 */
int repo_init (const char *dir, uint32_t block_size, char *err, size_t errlen)
  __attribute__ ((nonnull (1)));

/* Open an existing repository (checks the repository file). */
struct repo *repo_open (const char *dir, char *err, size_t errlen)
  __attribute__ ((nonnull (1)));

/* Close a repository (readers/writers must be closed first). */
void repo_close (struct repo *r);

/* The repository's block size in bytes. */
uint32_t repo_block_size (const struct repo *r) __attribute__ ((nonnull (1)));

/* Remove the repository r if it holds no point and no temporary point:
 * its repository file and points/, and its directory too if remove_dir.
 * (A first backup that failed removes the repository it created.)
 * r must still be closed.  -1 with err set otherwise.
 */
int repo_remove_empty (struct repo *r, bool remove_dir, char *err,
                       size_t errlen)
  __attribute__ ((nonnull (1)));

/* ---- points (manifest.c) ---- */

/* Points sorted oldest first (malloc'd array). */
int repo_list (struct repo *r, struct repo_point_info **out, size_t *n,
               char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2, 3)));

/* Look up one point's manifest.  -1 (ENOENT) with a message if unknown. */
int repo_point_get (struct repo *r, const char *point,
                    struct repo_point_info *info, char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2, 3)));

/* Is point held by a backup in progress based on it (or claimed by a
 * delete or merge)?  1 yes, 0 no (or no such point), -1 cannot tell.
 * Only looks: takes no lock (hold.c).
 */
int repo_point_busy (struct repo *r, const char *point)
  __attribute__ ((nonnull (1, 2)));

/* ---- writing one point (writer.c, commit.c) ----
 *
 * put_* are thread-safe (several connections copy in parallel).
 */
struct repo_writer;
struct repo_writer *repo_writer_begin (struct repo *r, const char *name,
                                       const char *parent /* NULL = full */,
                                       const char *since /* NULL */,
                                       uint64_t disk_size, bool compress,
                                       char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2)));
/* Store one data block (len = block_size, short only for the last block
 * of the disk).  -1 on error: see repo_writer_error.
 */
int repo_writer_put_data (struct repo_writer *w, uint64_t block,
                          const void *buf /* block_size bytes, short for the last block */,
                          size_t len)
  __attribute__ ((nonnull (1, 3)));
/* Store the data blocks [block, block + n) read into buf, len bytes (n
 * whole blocks, the last one short only at the end of the disk): the
 * same as repo_writer_put_data for each, in one write to the repository
 * (without O_DIRECT's page cache bypass unless buf is page-aligned).
 */
int repo_writer_put_data_run (struct repo_writer *w, uint64_t block,
                              const void *buf, size_t len)
  __attribute__ ((nonnull (1, 3)));
/* Record that block reads as zeroes at this point. */
int repo_writer_put_zero (struct repo_writer *w, uint64_t block)
  __attribute__ ((nonnull (1)));
/* The first error a put_* call met (NULL if none).  Valid until commit or
 * abort.
 */
const char *repo_writer_error (struct repo_writer *w)
  __attribute__ ((nonnull (1)));
/* Bytes stored in the point so far (its data file without header). */
uint64_t repo_writer_stored_bytes (struct repo_writer *w)
  __attribute__ ((nonnull (1)));
/* fsync, rename: the point exists after this.  Frees w (also on
 * error).  0 done; -1 not done (the temporary directory is removed, the
 * repository is as before); -2 the point is in place but it may not
 * survive a crash, or (merge) what it replaced could not be removed:
 * err says which.
 */
int repo_writer_commit (struct repo_writer *w, char *err, size_t errlen)
  __attribute__ ((nonnull (1)));
/* Removes the temp dir and frees w. */
void repo_writer_abort (struct repo_writer *w);

/* ---- reading a restore point through its chain (reader.c) ----
 *
 * Reads verify SHA-256.
 */
struct repo_reader;
struct repo_reader *repo_reader_open (struct repo *r, const char *point,
                                      char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2)));
/* The point's disk size in bytes. */
uint64_t repo_reader_size (const struct repo_reader *rd)
  __attribute__ ((nonnull (1)));
/* The block size of the repository a reader reads from. */
uint32_t repo_reader_block_size (const struct repo_reader *rd)
  __attribute__ ((nonnull (1)));
/* Number of blocks of the reader's disk (last one possibly short). */
uint64_t repo_reader_blocks (const struct repo_reader *rd)
  __attribute__ ((nonnull (1)));
/* REPO_BLOCK_ZERO / REPO_BLOCK_DATA (O(1)). */
int repo_reader_kind (const struct repo_reader *rd, uint64_t block)
  __attribute__ ((nonnull (1)));
/* Read one whole block (block_size bytes; the last block of the disk is
 * short: repo_reader_size - block * block_size).  -1 on damage/IO;
 * thread-safe (pread).
 */
int repo_reader_read (struct repo_reader *rd, uint64_t block, void *buf,
                      char *err, size_t errlen)
  __attribute__ ((nonnull (1, 3)));
/* Close a reader. */
void repo_reader_close (struct repo_reader *rd);

/* ---- whole-repository operations (verify.c, merge.c, remove.c) ---- */

/* Check points and chains.  report() gets one line per problem; returns
 * the number of problems (0 = clean), -1 and errno if it could not run
 * (ENOMEM: out of memory, which is no damage and is never reported as
 * a problem).
 */
int repo_verify (struct repo *r, const char *point /* NULL = all */,
                 void (*report) (const char *line, void *opaque),
                 void *opaque)
  __attribute__ ((nonnull (1)));
/* Fold incremental point into its parent: a new combined point with the
 * child's name replaces the child; the parent is removed if no other
 * point depends on it.
 */
int repo_merge (struct repo *r, const char *point, char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2)));
/* Remove a point; refused if another point has it as parent. */
int repo_delete (struct repo *r, const char *point, char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2)));
/* Remove leftover points/.tmp-* directories of crashed backups or merges
 * whose process is gone.  Returns the number removed, -1 on error.
 */
int repo_clean_tmp (struct repo *r, char *err, size_t errlen)
  __attribute__ ((nonnull (1)));

#endif /* NBDSNAP_REPO_H */
