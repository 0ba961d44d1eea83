/* nbdsnap freeze filter: what the frozen-point files share (not for
 * freeze.c, which uses points.h).
 *
 *   points.c    the list of points, their life (start, stop, refs, abort)
 *   save.c      the live data path: copy-before-write into every point
 *   view.c      reading a point (data and extents)
 *   commands.c  begin, end, list
 */
#ifndef NBDSNAP_FREEZE_POINTS_INTERNAL_H
#define NBDSNAP_FREEZE_POINTS_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "bitmap.h"
#include "exportname.h"
#include "firstuse.h"
#include "gate.h"
#include "geom.h"
#include "points.h"
#include "stripes.h"

struct point {
  char name[NAME_MAX_LEN + 1];
  time_t created;
  bool checkpoint;              /* a cbt checkpoint was made with it */
  int *fds;                     /* scratch: unlinked files in freeze-dir,
                                   one per segment (scratch_open) */
  unsigned nseg;
  struct bitset saved;          /* blocks whose frozen content is in fds */
  uint64_t used;                /* scratch bytes (atomic) */
  bool failing;                 /* atomic: fail_point claimed it */
  bool failed;                  /* atomic: aborted (failure is set) */
  bool released;                /* its scratch space was given back */
  char failure[256];
  unsigned refs;                /* list + open views (P.lock) */
};

struct points {
  char *dir;
  int dirfd;
  uint64_t max_size;            /* scratch bytes per point, 0 = no limit */
  struct geom g;                /* g.disk_size: once probed is done */
  unsigned seg_shift;           /* scratch segment size (log2); 0: one
                                   file; set by the first scratch_open */
  bool seg_known;               /* (P.lock) */
  struct first_use probed;

  pthread_mutex_t lock;         /* commands, refs */
  pthread_cond_t unref;         /* signalled when a reference is dropped */
  pthread_rwlock_t rw;          /* the list (writers save under rdlock) */
  struct point **pts;
  size_t npts;                  /* atomic for the fast path */
  struct gate gate;             /* writes vs begin */
  struct stripes stripes;       /* saving vs reading a block */
};

extern struct points P;

/* The point called name, or NULL (P.lock or P.rw held). */
struct point *point_find (const char *name) __attribute__ ((nonnull (1)));

/* Create p's scratch files (P.lock held): block b's saved bytes go at
 * offset b * block_size, in one unlinked file, or, when freeze-dir's file
 * system cannot hold a file as large as the disk (ext4: 16 TiB - 4 KiB),
 * in segments of the largest power of two it holds.  -1 and errno.
 */
int scratch_open (struct point *p) __attribute__ ((nonnull (1)));
/* Write or read the saved bytes of (part of) one block. */
int scratch_pwrite (struct point *p, const void *buf, uint64_t n,
                    uint64_t offset) __attribute__ ((nonnull (1, 2)));
int scratch_pread (struct point *p, void *buf, uint64_t n, uint64_t offset)
  __attribute__ ((nonnull (1, 2)));

/* Close the scratch files and free p. */
void point_free (struct point *p) __attribute__ ((nonnull (1)));

/* Drop a reference (P.lock held); the last one frees p. */
void point_unref (struct point *p) __attribute__ ((nonnull (1)));

/* Abort p: the live disk goes on, p's views fail from now on.  e: the
 * errno behind it (0: none).  Its scratch space is given back later by
 * point_release_scratch, once no writer can be writing to it.
 */
void point_fail (struct point *p, const char *what, int e)
  __attribute__ ((nonnull (1, 2)));

/* Give back the scratch space of p if it was aborted.  No writer may be
 * saving into p: call it with P.rw held for writing, or for a point no
 * longer in the list.
 */
void point_release_scratch (struct point *p) __attribute__ ((nonnull (1)));

/* Is p aborted? */
static inline bool
point_failed (struct point *p)
{
  return __atomic_load_n (&p->failed, __ATOMIC_ACQUIRE);
}

#endif /* NBDSNAP_FREEZE_POINTS_INTERNAL_H */
