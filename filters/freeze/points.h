/* nbdsnap freeze filter: frozen points (copy-before-write).
 *
 * A frozen point NAME keeps the disk as it was at one instant while
 * writes go on: before a block is first changed after the instant, its
 * old content is copied into the point's scratch file.  The point's view
 * reads saved blocks from scratch and the others from the disk below,
 * which still holds their frozen content.
 */
#ifndef NBDSNAP_FREEZE_POINTS_H
#define NBDSNAP_FREEZE_POINTS_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "command.h"

struct freeze_config {
  const char *dir;
  uint64_t max_size;            /* scratch bytes per point, 0 = no limit */
  uint32_t block_size;
};

struct point;

/* Open and check freeze-dir (.get_ready).  -1 after nbdkit_error. */
int points_start (const struct freeze_config *cfg)
  __attribute__ ((nonnull (1)));
/* Learn the size of the disk below, once (see firstuse.h): through next,
 * the context of a connection to the disk, or if next is NULL through a
 * shared context of backend opened on export name.  Later calls check
 * that next still has that size.  -1 after nbdkit_error.
 */
int points_use_disk (nbdkit_next *next, nbdkit_backend *backend,
                     const char *name);
/* Drop every point. */
void points_stop (void);
/* The copy-before-write block size. */
uint32_t points_block_size (void);

/* Live data path: bracket every write; points_save copies the frozen
 * content of [offset, offset+count) into every point that lacks it,
 * reading it through next.  Never fails the write: a point that cannot
 * save (scratch full) is aborted instead.
 */
void points_enter (void);
void points_leave (void);
void points_save (nbdkit_next *next, uint64_t offset, uint64_t count);
/* Are frozen points held (for refusing a snapshot revert below)? */
bool points_any (void);

/* Views.  points_get takes a reference (NULL + why if unknown). */
struct point *points_get (const char *name, char *why, size_t whylen);
void points_put (struct point *p);
int points_pread (struct point *p, nbdkit_next *next, void *buf,
                  uint32_t count, uint64_t offset, int *err);
/* Extents of the frozen disk; changes: NULL for a full backup (frozen
 * allocation), else the change map context (@cbt:diff/BASE/NAME below):
 * blocks it reports as unchanged are HOLE.
 */
int points_extents (struct point *p, nbdkit_next *next, nbdkit_next *changes,
                    uint32_t count, uint64_t offset, uint32_t flags,
                    struct nbdkit_extents *extents, int *err);

/* Commands: 0 with the result members appended to c->body, or -1 after
 * command_fail.  begin freezes the disk (and makes a cbt checkpoint of
 * the same name through backend, if a cbt filter is below); end
 * releases a point (views still open on it start failing).  cbt_below:
 * whether a cbt filter is below (only then is a checkpoint asked for).
 */
int points_cmd_begin (struct command *c, const char *name,
                      nbdkit_backend *backend, bool cbt_below)
  __attribute__ ((nonnull (1, 2, 3)));
int points_cmd_end (struct command *c, const char *name)
  __attribute__ ((nonnull (1, 2)));
int points_cmd_list (struct command *c) __attribute__ ((nonnull (1)));

/* For list_exports: calls fn with each point's name. */
void points_foreach (void (*fn) (const char *name, void *opaque),
                     void *opaque);

#endif /* NBDSNAP_FREEZE_POINTS_H */
