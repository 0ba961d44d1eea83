/* nbdsnap repository: what the files of repo/ share (not for users).
 *
 * The format is described byte by byte in docs/repository-format.md; the
 * short version:
 *
 *   REPO/repository            text, "sha256 HEX" last line
 *   REPO/points/NAME/manifest  text, "sha256 HEX" last line
 *   REPO/points/NAME/index     "NBDSNAPI" header, sorted 53-byte entries,
 *                              SHA-256 trailer
 *   REPO/points/NAME/data      "NBDSNAPD" header, stored blocks
 *
 * A point is built in points/.tmp-NAME-PID and renamed into place; a
 * point being deleted is first renamed to points/.del-NAME-PID.  Every
 * name starting with '.' under points/ is ignored by readers.
 *
 *   repo.c      the repository: init, open, close, the points/ lock
 *   manifest.c  a point's manifest: format, read, list
 *   pool.c      scratch buffers and zstd contexts of readers and writers
 *   writer.c    writing a point: begin, put_*
 *   commit.c    the index, the manifest and the rename that make it a point
 *   member.c    one point's index and data, loaded and checked
 *   reader.c    reading a point's disk through its chain
 *   verify.c    checking points and chains
 *   remove.c    deleting points, cleaning up what crashed processes left
 *   hold.c      a backup in progress holds its parent; delete and merge
 *               claim what they remove or replace
 *   merge.c     folding a point into its parent
 */
#ifndef NBDSNAP_REPO_INTERNAL_H
#define NBDSNAP_REPO_INTERNAL_H

#include <dirent.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <zstd.h>

#include "geom.h"
#include "statefile.h"
#include "repo.h"

#define REPO_MAGIC "nbdsnap-repository"
#define POINT_MAGIC "nbdsnap-point"
#define REPO_VERSION 1
#define POINT_VERSION 2
#define INDEX_VERSION 1
#define DATA_VERSION 2

#define INDEX_MAGIC "NBDSNAPI"
#define DATA_MAGIC "NBDSNAPD"
#define INDEX_HDR 32
#define ENTRY_SIZE 53
/* The data file's header fills its first page so that uncompressed
 * blocks are page-aligned in the file: aligned writes are much cheaper
 * for the page cache than writes straddling pages.
 */
#define DATA_HDR 4096

/* Kinds of index entries. */
#define KIND_DATA 1
#define KIND_ZERO 2

/* Size of the index buffers of writer and commit. */
#define IOBUF (1024 * 1024)

/* An index entry (ENTRY_SIZE bytes): where its fields are. */
#define ENTRY_BLOCK 0           /* u64 block number */
#define ENTRY_KIND 8            /* u8 KIND_* */
#define ENTRY_SLEN 9            /* u32 stored length */
#define ENTRY_OFF 13            /* u64 offset in data */
#define ENTRY_SHA 21            /* SHA-256 of the block */

/* ------------------------------------------------------------ repo.c */

struct repo {
  char *dir;
  int dirfd, pointsfd;
  uint32_t block_size;
};

/* Write a message to err (if not NULL), like snprintf. */
void seterr (char *err, size_t errlen, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* Take the exclusive flock(2) on points/ that serializes the processes
 * changing it: r, or NULL with err set.  Release it with points_unlock,
 * or declare the result POINTS_LOCKED to release it at the end of the
 * scope.
 */
struct repo *points_lock (struct repo *r, char *err, size_t errlen)
  __attribute__ ((nonnull (1)));

/* Release the lock points_lock took (errno is kept). */
void points_unlock (struct repo *r) __attribute__ ((nonnull (1)));

/* The cleanup of POINTS_LOCKED. */
static inline void
points_unlock_cleanup (struct repo **r)
{
  if (*r)
    points_unlock (*r);
}

/* A struct repo * holding points_lock until the end of its scope. */
#define POINTS_LOCKED __attribute__ ((cleanup (points_unlock_cleanup)))

/* points/ opened for readdir, or NULL and errno. */
DIR *points_opendir (struct repo *r) __attribute__ ((nonnull (1)));

/* -------------------------------------------------------- manifest.c */

struct manifest {
  char name[REPO_NAME_MAX + 1], kind[16], parent[REPO_NAME_MAX + 1],
    checkpoint[REPO_NAME_MAX + 1], since[REPO_NAME_MAX + 1];
  uint64_t sequence, disk_size, blocks, data_size;
  uint32_t block_size;
  bool compressed, full;
  int64_t created;
  uint8_t index_sha[SHA256_LEN];
};

/* t as "YYYY-MM-DDTHH:MM:SSZ" (UTC) into out (len bytes). */
void format_time (int64_t t, char *out, size_t len)
  __attribute__ ((nonnull (2)));

/* Room for a formatted manifest (the body is under 1 KiB). */
#define MANIFEST_MAX 2048

/* Format m as the text of its manifest file, sha256 line included, into
 * buf (MANIFEST_MAX bytes).  Its length, or -1 if hashing failed.
 */
ssize_t manifest_format (const struct manifest *m, char *buf)
  __attribute__ ((nonnull (1, 2)));

/* Read and check points/DIRNAME/manifest into m (its name line must be
 * dirname).  -1 with err and errno: ENOENT if there is no such point,
 * EINVAL for another format version, EIO if it is damaged.
 */
int manifest_read (struct repo *r, const char *dirname, struct manifest *m,
                   char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2, 3)));

/* Every manifest under points/ (names not starting with '.') into a
 * malloc'd array, unsorted.  Damaged ones (and directories with invalid
 * names) are skipped when skip_bad, else the first one is an error; a
 * manifest that cannot be read (out of memory, I/O error) is always an
 * error.
 */
int manifest_all (struct repo *r, struct manifest **out, size_t *n,
                  bool skip_bad, char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2, 3)));

/* 1 + the largest sequence number of the points (1 if none); 0 with
 * err set if a manifest cannot be read (damaged ones are skipped) or
 * there is no next number.
 */
uint64_t next_sequence (struct repo *r, char *err, size_t errlen)
  __attribute__ ((nonnull (1)));

/* ------------------------------------------------------------ pool.c */

/* Scratch buffers and a zstd context of one thread at a time. */
struct scratch {
  struct scratch *next;
  void *a, *b;                  /* pool.size bytes each */
  ZSTD_CCtx *cctx;              /* created on first use */
  ZSTD_DCtx *dctx;
};

/* A reader's or writer's free scratches (no thread-local storage: the
 * plugin may be unloaded while threads live).
 */
struct pool {
  pthread_mutex_t lock;
  struct scratch *free;
  size_t size;                  /* a compressed block fits */
};

/* An empty pool for blocks of block_size. */
void pool_init (struct pool *p, uint32_t block_size)
  __attribute__ ((nonnull (1)));

/* A scratch for the calling thread, or NULL (out of memory). */
struct scratch *pool_get (struct pool *p) __attribute__ ((nonnull (1)));

/* Give back a scratch pool_get returned. */
void pool_put (struct pool *p, struct scratch *s)
  __attribute__ ((nonnull (1, 2)));

/* Free the pool and its scratches (all given back). */
void pool_destroy (struct pool *p) __attribute__ ((nonnull (1)));

/* ---------------------------------------------------------- writer.c */

struct repo_writer {
  struct repo *r;
  struct manifest m;
  struct geom g;                /* the point's disk */
  char tmpname[REPO_NAME_MAX + 32];
  int dirfd, datafd, spillfd;
  int directfd;                 /* data with O_DIRECT, -1 if unavailable */
  bool no_direct;               /* O_DIRECT writes failed: do not use */
  bool merge;                   /* replaces m.name, whose merge holds
                                   the points/ lock */
  int parentfd;                 /* points/PARENT, held (hold.c) for the
                                   writer's life; -1 if none */
  struct pool pool;

  pthread_mutex_t lock;         /* protects everything below */
  bool failed;
  char err[512];
  uint64_t data_end;            /* next offset in data */
  uint64_t alloc_end;           /* data allocated up to here (fallocate) */
  bool no_alloc;                /* fallocate is not supported */
  uint8_t *spill;               /* buffered index records */
  size_t spill_len;
  uint64_t nrecords;
  struct pair { uint64_t block, rec; } *pairs;
  size_t npairs, cappairs;
};

/* One index record for writer_append. */
struct rec {
  uint64_t block;
  int kind;
  uint32_t slen;                /* stored length, 0 for a zero */
  uint8_t sha[SHA256_LEN];
};

/* Begin a writer of the point m describes (name, kind, parent,
 * checkpoint, since, disk_size, compressed, created filled in), in
 * points/.tmp-NAME-PID.  NULL with err set.
 */
struct repo_writer *writer_start (struct repo *r, const struct manifest *m,
                                  char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2)));

/* Append n records whose stored bytes lie back to back in stored (NULL
 * if they are all zeroes).  -1 (errno EIO) and w failed on error.
 */
int writer_append (struct repo_writer *w, const struct rec *recs, size_t n,
                   const void *stored)
  __attribute__ ((nonnull (1, 2)));

/* Close w's files, remove its temporary directory (if it still has
 * one) and free it.
 */
void writer_free (struct repo_writer *w) __attribute__ ((nonnull (1)));

/* ---------------------------------------------------------- member.c */

/* One point of a chain, loaded. */
struct member {
  struct manifest m;
  struct geom g;                /* the point's disk */
  struct geom eff;              /* the part visible through newer points */
  uint64_t base;                /* global number of its first entry */
  uint8_t *idx;                 /* mmap of the index file */
  size_t idxlen;
  int datafd;
};

/* Entry i of a member's index. */
static inline const uint8_t *
member_entry (const struct member *mb, uint64_t i)
{
  return mb->idx + INDEX_HDR + i * ENTRY_SIZE;
}

/* Open and check point name's manifest, index and data file (the
 * structure of every entry, not the block data).  mb->eff is the whole
 * disk.  -1 with err and errno (ENOENT: no such point).
 */
int member_load (struct repo *r, const char *name, struct member *mb,
                 char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2, 3)));

/* Unmap and close what member_load opened. */
void member_unload (struct member *mb) __attribute__ ((nonnull (1)));

/* Read, decompress and check the data entry e of mb into out (room for
 * block_size bytes) using scratch s.  asked: the point being read, if
 * another than mb (for the message).  -1 with err and errno.
 */
int member_read_entry (struct repo *r, const struct member *mb,
                       const uint8_t *e, struct scratch *s, void *out,
                       const char *asked, char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2, 3, 4, 5)));

/* ---------------------------------------------------------- remove.c */

/* Remove the directory parentfd/name holding only plain files (a point
 * directory).  0 if it is gone (or was never there), -1 and errno.
 */
int remove_flat_dir (int parentfd, const char *name)
  __attribute__ ((nonnull (2)));

/* Remove point: rename it to .del-NAME-PID (atomic), sync, remove the
 * files.  Call with the points/ lock held.  0 done; -1 not done (the
 * point is still there); -2 the point is gone, but not durably or its
 * files are left behind (err says which).  err is set, errno too.
 */
int remove_point (struct repo *r, const char *point, char *err,
                  size_t errlen)
  __attribute__ ((nonnull (1, 2)));

/* The number of points whose parent is point, their names comma
 * separated in out; -1 if points/ cannot be read.
 */
int dependents (struct repo *r, const char *point, char *out, size_t outlen)
  __attribute__ ((nonnull (1, 2, 3)));

/* ------------------------------------------------------------ hold.c */

/* Hold point (a backup in progress is based on it): a shared flock on
 * points/POINT, kept in *fd until it is closed.  Call with the points/
 * lock held.  -1 with err and errno (ENOENT: no such point).
 */
int point_hold (struct repo *r, const char *point, int *fd, char *err,
                size_t errlen)
  __attribute__ ((nonnull (1, 2, 3)));

/* Claim point for removing or replacing it: an exclusive, non-blocking
 * flock on points/POINT, kept in *fd until it is closed.  Call with the
 * points/ lock held.  -1 with err and errno: EBUSY if a backup in
 * progress holds it (err names its pid and says why, which tells what
 * would have been done), ENOENT if there is no such point.
 */
int point_claim (struct repo *r, const char *point, const char *why,
                 int *fd, char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2, 3, 4)));

/* Is points/POINT still the directory fd was opened on?  1 yes, 0 no
 * (gone or replaced), -1 and errno if that cannot be told.
 */
int point_still_there (struct repo *r, const char *point, int fd)
  __attribute__ ((nonnull (1, 2)));

#endif /* NBDSNAP_REPO_INTERNAL_H */
