/* nbdsnap freeze filter: nbdkit callbacks.
 *
 * Each connection is one of:
 *   LIVE     the disk: before a write, zero or trim passes down, the
 *            frozen content of its blocks is saved for every open point;
 *   VIEW     @freeze/NAME (the disk frozen at NAME, extents = its
 *            allocation) or @freeze:diff/BASE/NAME (extents = the blocks
 *            changed between checkpoints BASE and NAME, from cbt below);
 *   COMMAND  @freeze:begin|end|list: performed at open, JSON content;
 *   PASS     an @name for a filter below.  A snapshot revert is refused
 *            while a frozen point is held.
 */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "filesize.h"
#include "exportname.h"
#include "command.h"
#include "diskname.h"
#include "stack.h"
#include "filterhandle.h"
#include "param.h"
#include "points.h"
#include "policy.h"

struct handle {
  struct filter_handle fh;      /* first: see filterhandle.h */
  struct point *point;          /* VIEW */
  nbdkit_next *changes;         /* VIEW incremental: @cbt:diff/BASE/NAME */
};

static struct freeze_config cfg = { .block_size = 65536 };
static unsigned policy = POLICY_DEFAULT;
static nbdkit_backend *backend;
static struct disk_name disk = DISK_NAME_INIT;
static unsigned below;          /* nbdsnap filters below (stack.h) */
STACK_EXPORT (freeze)
POLICY_EXPORT (freeze)

static void
freeze_unload (void)
{
  disk_name_free (&disk);
  free ((char *) cfg.dir);
}

static int
freeze_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  if (strcmp (key, "freeze-dir") == 0)
    return param_path (value, &cfg.dir);
  if (strcmp (key, "freeze-max-size") == 0)
    return param_size (key, value, &cfg.max_size);
  if (strcmp (key, "freeze-block-size") == 0)
    return param_block_size (key, value, &cfg.block_size);
  if (strcmp (key, "freeze-commands") == 0)
    return param_policy (key, value, &policy);
  if (strcmp (key, "snapshot-revert-on-close") == 0) {
    nbdkit_error ("snapshot-revert-on-close cannot be used under the freeze "
                  "filter: its automatic revert would change a frozen disk "
                  "behind the filter's back");
    return -1;
  }
  if (param_unknown (key, "freeze", "freeze-dir, freeze-max-size, "
                     "freeze-block-size, freeze-commands"))
    return -1;
  return next (nxdata, key, value);
}

static int
freeze_config_complete (nbdkit_next_config_complete *next,
                        nbdkit_backend *nxdata)
{
  if (cfg.dir == NULL) {
    nbdkit_error ("the freeze filter needs freeze-dir=DIR (scratch space)");
    return -1;
  }
  backend = nxdata;
  return next (nxdata);
}

#define freeze_config_help \
  "freeze-dir=DIR            (required) Scratch space for frozen points.\n" \
  "freeze-max-size=SIZE      Scratch limit per point (default none).\n" \
  "freeze-block-size=SIZE    Copy-before-write unit (default 64K).\n" \
  "freeze-commands=WHO       none|unix|tls|unix,tls|any (default unix,tls)."

static int
freeze_get_ready (int thread_model)
{
  below = stack_get_ready (STACK_FREEZE);
  return points_start (&cfg);
}

static void
freeze_cleanup (nbdkit_backend *b)
{
  points_stop ();
}

static int
freeze_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                     int readonly, int is_tls,
                     struct nbdkit_exports *exports)
{
  return fh_list_views (next, nxdata, readonly, exports, points_foreach,
                        "freeze", "disk frozen at ", " (read-only)");
}

/* Run a command (see fh_command); b is the backend below. */
static int
perform (struct command *c, const struct export_name *en, void *b)
{
  const char *v = en->verb;

  if (strcmp (v, "list") == 0 && en->nargs == 0)
    return points_cmd_list (c);
  if (strcmp (v, "begin") == 0 && en->nargs == 1) {
    /* A command may be the first connection: learn the disk size. */
    const char *name = disk_name_get (&disk, "freeze");
    if (name == NULL || points_use_disk (NULL, b, name) == -1)
      return command_fail (c, "EIO", "cannot get the size of the disk "
                           "below (see the server's log)");
    return points_cmd_begin (c, en->args[0], b, below & STACK_CBT);
  }
  if (strcmp (v, "end") == 0 && en->nargs == 1)
    return points_cmd_end (c, en->args[0]);
  command_bad_args (c, "nbdkit-freeze-filter(1)");
  return -1;
}

/* Open the cbt change map between base and name below us. */
static nbdkit_next *
open_changes (nbdkit_backend *b, const char *base, const char *name)
{
  char ex[2 * NAME_MAX_LEN + 32];
  nbdkit_next *next;
  const char *d;

  if (!(below & STACK_CBT))
    goto fail;
  snprintf (ex, sizeof ex, "@cbt:diff/%s/%s", base, name);
  next = nbdkit_next_context_open (b, 1, ex, 1);
  if (next == NULL)
    goto fail;
  if (next->prepare (next) == -1) {
    nbdkit_next_context_close (next);
    goto fail;
  }
  d = next->export_description (next);
  if (d == NULL || strncmp (d, "nbdsnap:cbt", 11) != 0 ||
      next->get_size (next) == -1 || next->can_extents (next) != 1) {
    next->finalize (next);
    nbdkit_next_context_close (next);
    goto fail;
  }
  return next;
 fail:
  nbdkit_error ("freeze: an incremental backup since '%s' needs the cbt "
                "filter below the freeze filter, with checkpoints '%s' and "
                "'%s' (see the messages above)", base, base, name);
  return NULL;
}

static void *
freeze_open (nbdkit_next_open *next, nbdkit_context *nxdata,
             int readonly, const char *exportname, int is_tls)
{
  struct handle *h;
  struct export_name en;
  const char *dname;
  char why[512];

  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  switch (export_name_parse (exportname, "freeze", &en, why, sizeof why)) {
  case EXPORT_BAD:
    nbdkit_error ("freeze: bad export name %s", why);
    goto err;

  case EXPORT_OTHER: {
    struct export_name sn;
    char w2[256];
    bool revert = export_name_parse (exportname, "snapshot", &sn, w2,
                                     sizeof w2) == EXPORT_VERB &&
      strcmp (sn.verb, "revert") == 0;
    int r;

    if (stack_check_pass (below, exportname, "freeze") == -1)
      goto err;
    /* Inside the gate, no point can begin between the check and the
     * revert below.
     */
    if (revert)
      points_enter ();
    if (revert && points_any ()) {
      points_leave ();
      nbdkit_error ("freeze: a snapshot revert is refused while a frozen "
                    "point is held (end the backup first with "
                    "@freeze:end/NAME)");
      goto err;
    }
    h->fh.kind = PASS;
    r = next (nxdata, readonly, exportname);
    if (revert)
      points_leave ();
    if (r == -1)
      goto err;
    return h;
  }

  case EXPORT_LIVE:
    h->fh.kind = LIVE;
    if (disk_name_bind (&disk, exportname, "freeze") == -1 ||
        next (nxdata, readonly, exportname) == -1)
      goto err;
    return h;

  case EXPORT_VIEW:
  case EXPORT_VERB:
    if (en.kind == EXPORT_VIEW || strcmp (en.verb, "diff") == 0) {
      const char *name = en.kind == EXPORT_VIEW ? en.args[0] : en.args[1];
      if (en.kind == EXPORT_VERB && en.nargs != 2) {
        nbdkit_error ("freeze: %s: expected @freeze:diff/BASE/NAME",
                      exportname);
        goto err;
      }
      if (!name_valid (name, why, sizeof why) ||
          (en.kind == EXPORT_VERB && !name_valid (en.args[0], why,
                                                  sizeof why))) {
        nbdkit_error ("freeze: %s: %s", exportname, why);
        goto err;
      }
      h->fh.kind = VIEW;
      h->point = points_get (name, why, sizeof why);
      if (h->point == NULL) {
        nbdkit_error ("freeze: %s: %s", exportname, why);
        goto err;
      }
      if (en.kind == EXPORT_VERB &&
          (h->changes = open_changes (nbdkit_context_get_backend (nxdata),
                                      en.args[0], name)) == NULL) {
        points_put (h->point);
        goto err;
      }
      if ((dname = disk_name_get (&disk, "freeze")) == NULL ||
          next (nxdata, 1, dname) == -1) {
        if (h->changes) {
          h->changes->finalize (h->changes);
          nbdkit_next_context_close (h->changes);
        }
        points_put (h->point);
        goto err;
      }
      snprintf (h->fh.desc, sizeof h->fh.desc, "nbdsnap:freeze view %s",
                name);
      return h;
    }
    if (strcmp (en.verb, "list") && strcmp (en.verb, "begin") &&
        strcmp (en.verb, "end")) {
      nbdkit_error ("freeze: %s: unknown command '%s' (known: begin, end, "
                    "list, diff)", exportname, en.verb);
      goto err;
    }
    if (fh_command (&h->fh, "freeze", policy, &en, readonly, is_tls,
                    perform, nbdkit_context_get_backend (nxdata)) == -1)
      goto err;
    return h;
  }
 err:
  free (h);
  return NULL;
}

/* Release what a view holds. */
static void
release_view (struct handle *h)
{
  if (h->changes) {
    h->changes->finalize (h->changes);
    nbdkit_next_context_close (h->changes);
    h->changes = NULL;
  }
  if (h->point) {
    points_put (h->point);
    h->point = NULL;
  }
}

/* nbdkit calls .finalize before it closes the client's socket, .close
 * after: a client that waits for the server to close (libnbd's
 * nbd_shutdown does) must find its view released, or its next
 * @freeze:end would count the view as still open.
 */
static int
freeze_finalize (nbdkit_next *next, void *handle)
{
  release_view (handle);
  return 0;
}

static void
freeze_close (void *handle)
{
  release_view (handle);
  fh_close (handle);
}

static int
freeze_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;

  if (h->fh.kind == PASS && command_check_below (next, "freeze") == -1)
    return -1;
  if (h->fh.kind == LIVE || h->fh.kind == VIEW) {
    /* The first connection to the disk tells its size (firstuse.h). */
    if (points_use_disk (next, NULL, NULL) == -1)
      return -1;
    if (next->can_extents (next) == -1)
      return -1;
  }
  return 0;
}

static int
freeze_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
              uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind == VIEW)
    return points_pread (h->point, next, buf, count, offset, err);
  return fh_pread (next, handle, buf, count, offset, flags, err);
}

/* Writes of the live disk: save frozen content first, inside the gate so
 * a point never begins in the middle of a write.
 */
#define SAVED(call)                                                     \
  do {                                                                  \
    struct handle *h = handle;                                          \
    int r;                                                              \
    if (h->fh.kind != LIVE && h->fh.kind != PASS) {                     \
      *err = EROFS;                                                     \
      return -1;                                                        \
    }                                                                   \
    /* PASS: a writable export of a filter below (@cbt:upload), not    \
     * the disk: nothing to save.                                       \
     */                                                                 \
    if (h->fh.kind == PASS)                                             \
      return (call);                                                    \
    points_enter ();                                                    \
    points_save (next, offset, count);                                  \
    r = (call);                                                         \
    points_leave ();                                                    \
    return r;                                                           \
  } while (0)

static int
freeze_pwrite (nbdkit_next *next, void *handle, const void *buf,
               uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  SAVED (next->pwrite (next, buf, count, offset, flags, err));
}

static int
freeze_zero (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  SAVED (next->zero (next, count, offset, flags, err));
}

static int
freeze_trim (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags, int *err)
{
  SAVED (next->trim (next, count, offset, flags, err));
}

static int
freeze_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind != LIVE && h->fh.kind != PASS)
    return 0;
  return next->flush (next, flags, err);
}

static int
freeze_extents (nbdkit_next *next, void *handle, uint32_t count,
                uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind == VIEW)
    return points_extents (h->point, next, h->changes, count, offset, flags,
                           extents, err);
  return fh_extents (next, handle, count, offset, flags, extents, err);
}

/* A write past a file size limit fails with EFBIG (reported), rather
 * than killing nbdkit with SIGXFSZ.
 */
static void
freeze_load (void)
{
  filesize_ignore_sigxfsz ();
}

static struct nbdkit_filter filter = {
  .name               = "freeze",
  .load               = freeze_load,
  .longname           = "nbdsnap checkpoint freezing filter",
  .unload             = freeze_unload,
  .config             = freeze_config,
  .config_complete    = freeze_config_complete,
  .config_help        = freeze_config_help,
  .thread_model       = fh_thread_model,
  .get_ready          = freeze_get_ready,
  .cleanup            = freeze_cleanup,
  .list_exports       = freeze_list_exports,
  .open               = freeze_open,
  .close              = freeze_close,
  .prepare            = freeze_prepare,
  .finalize           = freeze_finalize,
  FH_PASSTHRU_CALLBACKS,
  .pread              = freeze_pread,
  .pwrite             = freeze_pwrite,
  .zero               = freeze_zero,
  .trim               = freeze_trim,
  .flush              = freeze_flush,
  .extents            = freeze_extents,
};

NBDKIT_REGISTER_FILTER (filter)
