/* nbdsnap filters: what the snapshot, cbt and freeze filters' handles
 * share, and the nbdkit callbacks that work on it alone.
 *
 * Every connection of an nbdsnap filter is one of:
 *   LIVE     the disk (each filter decides what that means);
 *   VIEW     a read-only view (@FILTER/NAME, @FILTER:diff/...);
 *   COMMAND  @FILTER:VERB/...: performed at open, content = JSON result;
 *   PASS     an @name for a filter below, passed down.
 *
 * A filter's struct handle begins with a struct filter_handle (member
 * "fh"), so the callbacks below can be plugged into its struct
 * nbdkit_filter directly, or called from the filter's own callback for
 * the kinds it does not handle itself.
 */
#ifndef NBDSNAP_FILTERHANDLE_H
#define NBDSNAP_FILTERHANDLE_H

#include <stddef.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "command.h"
#include "exportname.h"

enum handle_kind { LIVE, VIEW, COMMAND, PASS };

struct filter_handle {
  enum handle_kind kind;
  char *json;                   /* COMMAND: the result document */
  size_t json_len;
  char desc[160];               /* VIEW, COMMAND: export description */
};

/* .close for a handle that holds nothing but the common part; a filter
 * that holds more releases it first, then calls this.
 */
void fh_close (void *handle);

/* Perform a command.  The filter has checked that en->verb is one of
 * its verbs; "list" is the one that changes nothing, every other verb
 * needs command_allowed.  perform runs the verb (opaque is passed on)
 * and returns 0, or -1 with c->ename and c->why set (command_bad_args
 * when the arguments do not fit).  fh becomes a COMMAND handle whose
 * content is the result.  -1 after nbdkit_error if out of memory.
 */
typedef int fh_perform_fn (struct command *c, const struct export_name *en,
                           void *opaque);
int fh_command (struct filter_handle *fh, const char *filter,
                unsigned policy, const struct export_name *en,
                int readonly, int is_tls, fh_perform_fn *perform,
                void *opaque)
  __attribute__ ((nonnull (1, 2, 4, 7)));

/* For .list_exports: the exports below, then for each NAME that foreach
 * lists the view "@FILTER/NAME", described as before NAME after.
 */
typedef void fh_foreach_fn (void (*fn) (const char *name, void *opaque),
                            void *opaque);
int fh_list_views (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                   int readonly, struct nbdkit_exports *exports,
                   fh_foreach_fn *foreach, const char *filter,
                   const char *before, const char *after)
  __attribute__ ((nonnull (1, 4, 5, 6, 7, 8)));

/* .thread_model: every nbdsnap filter is fully parallel. */
int fh_thread_model (void);

/* COMMAND: the document; otherwise the disk below. */
int64_t fh_get_size (nbdkit_next *next, void *handle);

/* LIVE and PASS: the description below; otherwise fh->desc. */
const char *fh_export_description (nbdkit_next *next, void *handle);

/* COMMAND: no constraints; otherwise those of the disk below. */
int fh_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
                   uint32_t *preferred, uint32_t *maximum);

/* COMMAND: the document; otherwise read below. */
int fh_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err);

/* COMMAND: one data extent; otherwise the extents below. */
int fh_extents (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents, int *err);

/* .cache: passed down. */
int fh_cache (nbdkit_next *next, void *handle, uint32_t count,
              uint64_t offset, uint32_t flags, int *err);

/* Capabilities for a filter whose LIVE and PASS handles are the disk
 * below (cbt, freeze): those pass the answer below through; a VIEW is
 * that disk read-only (no writes, no FUA, no cache; multi-conn and
 * extents yes; rotational as below); a COMMAND is a read-only document
 * with none of these.
 */
int fh_can_write (nbdkit_next *next, void *handle);
int fh_can_flush (nbdkit_next *next, void *handle);
int fh_is_rotational (nbdkit_next *next, void *handle);
int fh_can_trim (nbdkit_next *next, void *handle);
int fh_can_zero (nbdkit_next *next, void *handle);
int fh_can_fast_zero (nbdkit_next *next, void *handle);
int fh_can_fua (nbdkit_next *next, void *handle);
int fh_can_multi_conn (nbdkit_next *next, void *handle);
int fh_can_cache (nbdkit_next *next, void *handle);
int fh_can_extents (nbdkit_next *next, void *handle);

/* Such a filter's struct nbdkit_filter takes all of these unchanged. */
#define FH_PASSTHRU_CALLBACKS                           \
  .get_size           = fh_get_size,                    \
  .export_description = fh_export_description,          \
  .block_size         = fh_block_size,                  \
  .can_write          = fh_can_write,                   \
  .can_flush          = fh_can_flush,                   \
  .is_rotational      = fh_is_rotational,               \
  .can_trim           = fh_can_trim,                    \
  .can_zero           = fh_can_zero,                    \
  .can_fast_zero      = fh_can_fast_zero,               \
  .can_extents        = fh_can_extents,                 \
  .can_fua            = fh_can_fua,                     \
  .can_multi_conn     = fh_can_multi_conn,              \
  .can_cache          = fh_can_cache,                   \
  .cache              = fh_cache

#endif /* NBDSNAP_FILTERHANDLE_H */
