/* nbdsnap cbt filter: the tracker (checkpoints and their dirty bitmaps).
 *
 * Checkpoints C1 .. Cn, oldest first.  The bitmap of Ci holds the blocks
 * written from Ci until C(i+1); the bitmap of the newest checkpoint Cn is
 * the active bitmap, which every write marks.  "Changed since Ci" is the
 * union of the bitmaps of Ci .. Cn; "changed between Ci and Cj" is the
 * union of Ci .. C(j-1), bitmaps that can no longer change.  Before the
 * first checkpoint nothing needs tracking.
 */
#ifndef NBDSNAP_CBT_TRACKER_H
#define NBDSNAP_CBT_TRACKER_H

#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "command.h"

enum cbt_sync { CBT_SYNC_FLUSH, CBT_SYNC_STRICT };

struct tracker_config {
  const char *dir;
  uint32_t granularity;         /* 0: not given */
  enum cbt_sync sync;
  bool reset_on_shrink;
};

/* Start, from .get_ready: lock the dir, read the state file.  Needs
 * no plugin.  -1 after nbdkit_error.
 */
int tracker_start (const struct tracker_config *cfg)
  __attribute__ ((nonnull (1)));
/* The rest of the start, from .after_fork: learn the size of the disk
 * (exportname) through backend, load the bitmaps, take in size changes
 * and an unclean stop, save the state.  -1 after nbdkit_error.
 */
int tracker_after_fork (nbdkit_backend *backend, const char *exportname)
  __attribute__ ((nonnull (1, 2)));
/* Save everything and mark the state clean (unless the tracker failed:
 * then the state stays "running").
 */
void tracker_stop (void);

/* The size of the disk, as found at start. */
uint64_t tracker_disk_size (void);

/* Data path.  Mark [offset, offset+count) dirty before the write passes
 * down (in strict mode the bits are durable when this returns 0; in the
 * failed state this fails with EIO).
 * tracker_enter/leave bracket each write so that checkpoints fall between
 * writes, never inside one.
 */
void tracker_enter (void);
void tracker_leave (void);
int tracker_mark (uint64_t offset, uint64_t count, int *err)
  __attribute__ ((nonnull (3)));
/* Persist the active bitmap (after the data below was flushed). */
int tracker_flush (int *err) __attribute__ ((nonnull (1)));
/* 0, or -1 with *err = EIO if the tracker failed: after an I/O error in
 * cbt-dir that cannot be undone, writes, flushes and changing commands
 * fail until nbdkit restarts (filters/common/failure.h).
 */
int tracker_check (int *err) __attribute__ ((nonnull (1)));

/* Change maps.  since: checkpoint name; until: NULL for now, else a later
 * checkpoint.  Checks names and consistency.  -1 with a reason in why.
 */
int tracker_view_check (const char *since, const char *until,
                        char *why, size_t whylen)
  __attribute__ ((nonnull (1, 3)));
/* Extents of a change map: unchanged blocks are HOLE, changed blocks are
 * data or ZERO according to next's own extents.
 */
int tracker_extents (const char *since, const char *until, nbdkit_next *next,
                     uint32_t count, uint64_t offset, uint32_t flags,
                     struct nbdkit_extents *extents, int *err)
  __attribute__ ((nonnull (1, 3, 7, 8)));

/* Commands: append the result members to c->body and return 0, or
 * return command_fail (c, ...).
 */
/* @cbt:create/NAME: a new checkpoint, whose bitmap becomes the active one.
 * below (if not NULL) is the live disk below, flushed at the checkpoint's
 * instant: every write acknowledged before the checkpoint is durable, so
 * a crash cannot take the disk back behind it (a change no map holds).
 */
int tracker_cmd_create (struct command *c, const char *name,
                        nbdkit_next *below)
  __attribute__ ((nonnull (1, 2)));
/* @cbt:create/NAME/snapshot: checkpoint NAME and, at the same instant,
 * snapshot NAME in the snapshot filter below (reached through backend),
 * both or neither (instant.c).
 */
int tracker_cmd_create_snapshot (struct command *c, const char *name,
                                 nbdkit_backend *backend, nbdkit_next *below)
  __attribute__ ((nonnull (1, 2, 3)));
/* @cbt:list: the geometry and every checkpoint. */
int tracker_cmd_list (struct command *c) __attribute__ ((nonnull (1)));
/* @cbt:delete/NAME: merge the checkpoint's bitmap into the one before. */
int tracker_cmd_delete (struct command *c, const char *name)
  __attribute__ ((nonnull (1, 2)));

/* For list_exports: calls fn with each checkpoint name. */
void tracker_foreach (void (*fn) (const char *name, void *opaque),
                      void *opaque)
  __attribute__ ((nonnull (1)));

/* Keep checkpoint commands out while a snapshot revert is marked and
 * passed down, so no checkpoint falls between the two.
 */
void tracker_commands_lock (void);
void tracker_commands_unlock (void);

/* A snapshot revert is about to pass down: ask the snapshot filter below
 * (through backend) which blocks it will change and mark them dirty.
 */
int tracker_mark_revert (nbdkit_backend *backend, const char *snapshot)
  __attribute__ ((nonnull (1, 2)));

#endif /* NBDSNAP_CBT_TRACKER_H */
