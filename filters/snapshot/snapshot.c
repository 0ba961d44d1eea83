/* nbdsnap snapshot filter: nbdkit callbacks.
 *
 * Each connection is one of:
 *   LIVE     the live disk: reads through the owner map, writes into the
 *            active layer (the plugin is only ever read);
 *   VIEW     a read-only snapshot (@snapshot/NAME) or change map
 *            (@snapshot:diff/...);
 *   COMMAND  @snapshot:VERB/...: performed at open, content = JSON result;
 *   PASS     an @name for a filter below us: passed through unchanged.
 */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "fdlimit.h"
#include "filesize.h"
#include "exportname.h"
#include "command.h"
#include "filterhandle.h"
#include "param.h"
#include "policy.h"
#include "stack.h"
#include "store.h"
#include "layer.h"

struct handle {
  struct filter_handle fh;      /* first: see filterhandle.h */
  bool writable;                /* LIVE: counted as a writer */
  struct view view;             /* LIVE and VIEW */
};

static struct store_config cfg;
static unsigned policy = POLICY_DEFAULT;
static unsigned below;          /* nbdsnap filters below (stack.h) */
STACK_EXPORT (snapshot)
POLICY_EXPORT (snapshot)
static nbdkit_backend *backend;         /* for store_ready in .open */

/* Take our parameters; pass the others down. */
static int
snapshot_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  if (strcmp (key, "snapshot-dir") == 0)
    return param_path (value, &cfg.dir);
  if (strcmp (key, "snapshot-block-size") == 0)
    return param_block_size (key, value, &cfg.block_size);
  if (strcmp (key, "snapshot-commands") == 0)
    return param_policy (key, value, &policy);
  if (strcmp (key, "snapshot-revert-on-close") == 0) {
    char why[128];
    if (!name_valid (value, why, sizeof why)) {
      nbdkit_error ("snapshot-revert-on-close=%s: %s", value, why);
      return -1;
    }
    free ((char *) cfg.revert_on_close);
    cfg.revert_on_close = strdup (value);
    if (cfg.revert_on_close == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
    return 0;
  }
  if (param_unknown (key, "snapshot", "snapshot-dir, snapshot-block-size, "
                     "snapshot-commands, snapshot-revert-on-close"))
    return -1;
  return next (nxdata, key, value);
}

/* Check that snapshot-dir was given. */
static int
snapshot_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  if (cfg.dir == NULL) {
    nbdkit_error ("the snapshot filter needs snapshot-dir=DIR");
    return -1;
  }
  backend = nxdata;
  return next (nxdata);
}

#define snapshot_config_help \
  "snapshot-dir=DIR          (required) Where layers and state are kept.\n" \
  "snapshot-block-size=SIZE  Copy-on-write block size (default 64K).\n" \
  "snapshot-commands=WHO     none|unix|tls|unix,tls|any (default unix,tls).\n" \
  "snapshot-revert-on-close=NAME  Revert to NAME when the last client leaves."

/* Free the configuration, once background layer frees have ended. */
static void
snapshot_unload (void)
{
  layer_wait_background ();
  free ((char *) cfg.dir);
  free ((char *) cfg.revert_on_close);
}

/* Start the store: the directory and its state file (before forking
 * into the background; nothing here reads the disk below).
 */
static int
snapshot_get_ready (int thread_model)
{
  below = stack_get_ready (STACK_SNAPSHOT);
  return store_start (&cfg);
}

/* Finish starting: the disk below, the layers; resume interrupted
 * deletes (threads must start after the fork).
 */
static int
snapshot_after_fork (nbdkit_backend *b)
{
  return store_after_fork (b);
}

/* The live disk is the plugin's default export, whatever the plugin
 * calls it: clients asking for "" get "" (see store_live_bind).
 */
static const char *
snapshot_default_export (nbdkit_next_default_export *next,
                         nbdkit_backend *nxdata, int readonly, int is_tls)
{
  return "";
}

/* Stop the store. */
static void
snapshot_cleanup (nbdkit_backend *b)
{
  store_stop ();
}

/* List the live disk and a view of each snapshot. */
static int
snapshot_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                       int readonly, int is_tls,
                       struct nbdkit_exports *exports)
{
  return fh_list_views (next, nxdata, readonly, exports,
                        store_foreach_snapshot, "snapshot", "snapshot ",
                        " (read-only)");
}

/* Run a command (see fh_command). */
static int
perform (struct command *c, const struct export_name *en, void *opaque)
{
  const char *v = en->verb;
  int r;

  if (strcmp (v, "list") == 0 && en->nargs == 0)
    r = store_cmd_list (c);
  else if (strcmp (v, "create") == 0 && en->nargs == 1)
    r = store_cmd_create (c, en->args[0]);
  else if (strcmp (v, "delete") == 0 && en->nargs == 1)
    r = store_cmd_delete (c, en->args[0]);
  else if (strcmp (v, "revert") == 0 &&
           (en->nargs == 1 ||
            (en->nargs == 2 && strcmp (en->args[1], "force") == 0)))
    r = store_cmd_revert (c, en->args[0], en->nargs == 2);
  else {
    command_bad_args (c, "nbdkit-snapshot-filter(1)");
    return -1;
  }
  /* A result that could not be written in full must not say "ok". */
  if (r == 0 && c->body.oom)
    return command_fail (c, "ENOMEM", "out of memory for the result of "
                         "'%s' (the command itself was done)", v);
  return r;
}

/* Open a LIVE, VIEW, COMMAND or PASS handle according to the export name. */
static void *
snapshot_open (nbdkit_next_open *next, nbdkit_context *nxdata,
               int readonly, const char *exportname, int is_tls)
{
  struct handle *h;
  struct export_name en;
  const char *disk;
  char why[512];

  /* Normally done by .after_fork; a filter above that opens us from its
   * own .get_ready gets it done now.
   */
  if (store_ready (backend) == -1)
    return NULL;
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }

  switch (export_name_parse (exportname, "snapshot", &en, why, sizeof why)) {
  case EXPORT_BAD:
    nbdkit_error ("snapshot: bad export name %s", why);
    goto err;

  case EXPORT_OTHER:
    /* For an nbdsnap filter below us (never for the plugin); the
     * handshake in .prepare checks that it understood the name.
     */
    h->fh.kind = PASS;
    if (stack_check_pass (below, exportname, "snapshot") == -1 ||
        next (nxdata, 1, exportname) == -1)
      goto err;
    return h;

  case EXPORT_LIVE:
    h->fh.kind = LIVE;
    h->view.live = true;
    h->writable = !readonly;
    if (store_live_bind (exportname) == -1 ||
        next (nxdata, 1, exportname) == -1)
      goto err;
    store_live_open (h->writable);
    snprintf (h->fh.desc, sizeof h->fh.desc, "live disk");
    return h;

  case EXPORT_VIEW:
    h->fh.kind = VIEW;
    if (store_view_open (&h->view, en.args[0], NULL, why, sizeof why) == -1) {
      nbdkit_error ("snapshot: %s: %s", exportname, why);
      goto err;
    }
    if ((disk = store_disk_name ()) == NULL || next (nxdata, 1, disk) == -1) {
      store_view_close (&h->view);
      goto err;
    }
    snprintf (h->fh.desc, sizeof h->fh.desc, "nbdsnap:snapshot view %s",
              en.args[0]);
    return h;

  case EXPORT_VERB:
    if (strcmp (en.verb, "diff") == 0) {
      if (en.nargs < 1 || en.nargs > 2) {
        nbdkit_error ("snapshot: %s: expected @snapshot:diff/BASE or "
                      "@snapshot:diff/BASE/NAME", exportname);
        goto err;
      }
      h->fh.kind = VIEW;
      if (store_view_open (&h->view, en.nargs == 2 ? en.args[1] : NULL,
                           en.args[0], why, sizeof why) == -1) {
        nbdkit_error ("snapshot: %s: %s", exportname, why);
        goto err;
      }
      if ((disk = store_disk_name ()) == NULL ||
          next (nxdata, 1, disk) == -1) {
        store_view_close (&h->view);
        goto err;
      }
      snprintf (h->fh.desc, sizeof h->fh.desc, "nbdsnap:snapshot change map");
      return h;
    }
    if (strcmp (en.verb, "list") && strcmp (en.verb, "create") &&
        strcmp (en.verb, "revert") && strcmp (en.verb, "delete")) {
      nbdkit_error ("snapshot: %s: unknown command '%s' (known: create, "
                    "list, revert, delete, diff)", exportname, en.verb);
      goto err;
    }
    if (fh_command (&h->fh, "snapshot", policy, &en, readonly, is_tls,
                    perform, NULL) == -1)
      goto err;
    return h;
  }
 err:
  free (h);
  return NULL;
}

/* Close a handle: uncount a live connection, release a view. */
static void
snapshot_close (void *handle)
{
  struct handle *h = handle;

  if (h->fh.kind == LIVE)
    store_live_close (h->writable);
  else if (h->fh.kind == VIEW)
    store_view_close (&h->view);
  fh_close (h);
}

/* Check the disk below (or, for PASS, that a filter below took the name). */
static int
snapshot_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;

  if (h->fh.kind == PASS)
    return command_check_below (next, "snapshot");
  if ((h->fh.kind == LIVE || h->fh.kind == VIEW) &&
      store_check_disk (next) == -1)
    return -1;
  /* nbdkit asserts that can_extents was asked before extents is used. */
  if ((h->fh.kind == LIVE || h->fh.kind == VIEW) &&
      next->can_extents (next) == -1)
    return -1;
  return 0;
}

/* Size: the disk's for LIVE and VIEW, the result's for COMMAND. */
static int64_t
snapshot_get_size (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;

  if (h->fh.kind == LIVE || h->fh.kind == VIEW)
    return store_size ();
  return fh_get_size (next, handle);
}

/* Block size constraints: any alignment, the layers' block preferred. */
static int
snapshot_block_size (nbdkit_next *next, void *handle,
                     uint32_t *minimum, uint32_t *preferred,
                     uint32_t *maximum)
{
  struct handle *h = handle;

  if (h->fh.kind != LIVE && h->fh.kind != VIEW)
    return fh_block_size (next, handle, minimum, preferred, maximum);
  *minimum = 1;
  *preferred = store_block_size () > 32 * 1024 * 1024 ? 32 * 1024 * 1024
    : store_block_size ();
  *maximum = 0xffffffff;
  return 0;
}

/* Capabilities: only the live disk is written; the live disk and views
 * have extents and multi-conn (all connections share one store, and
 * flush covers them all).  A PASS handle (opened read-only below) and a
 * COMMAND handle have none of these.
 */
static int
snapshot_live (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  return h->fh.kind == LIVE;
}

/* True for LIVE and VIEW handles. */
static int
snapshot_live_or_view (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  return h->fh.kind == LIVE || h->fh.kind == VIEW;
}

/* Never rotational (layers are sparse files). */
static int
snapshot_is_rotational (nbdkit_next *next, void *handle)
{
  return 0;
}

/* Only the live disk can be zeroed, natively. */
static int
snapshot_can_zero (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  return h->fh.kind == LIVE ? NBDKIT_ZERO_NATIVE : NBDKIT_ZERO_NONE;
}

/* Only the live disk takes FUA, natively. */
static int
snapshot_can_fua (nbdkit_next *next, void *handle)
{
  struct handle *h = handle;
  return h->fh.kind == LIVE ? NBDKIT_FUA_NATIVE : NBDKIT_FUA_NONE;
}

/* No cache requests. */
static int
snapshot_can_cache (nbdkit_next *next, void *handle)
{
  return NBDKIT_CACHE_NONE;
}

/* Read: through the store for LIVE and VIEW. */
static int
snapshot_pread (nbdkit_next *next, void *handle, void *buf,
                uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind == LIVE || h->fh.kind == VIEW)
    return store_pread (&h->view, next, buf, count, offset, err);
  return fh_pread (next, handle, buf, count, offset, flags, err);
}

/* Write: only the live disk. */
static int
snapshot_pwrite (nbdkit_next *next, void *handle, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind != LIVE) {
    *err = EROFS;
    return -1;
  }
  return store_pwrite (next, buf, count, offset, flags & NBDKIT_FLAG_FUA,
                       err);
}

/* Zero: only the live disk. */
static int
snapshot_zero (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind != LIVE) {
    *err = EROFS;
    return -1;
  }
  return store_zero (next, count, offset, flags & NBDKIT_FLAG_FUA, err);
}

/* Trim: as zero. */
static int
snapshot_trim (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  /* A trimmed range reads as zeroes, in this layer and every view. */
  return snapshot_zero (next, handle, count, offset, flags, err);
}

/* Flush: the live disk's layer (others have nothing to flush). */
static int
snapshot_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind != LIVE)
    return 0;
  return store_flush (err);
}

/* Extents: through the store for LIVE and VIEW. */
static int
snapshot_extents (nbdkit_next *next, void *handle, uint32_t count,
                  uint64_t offset, uint32_t flags,
                  struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind == LIVE || h->fh.kind == VIEW)
    return store_extents (&h->view, next, count, offset, flags, extents, err);
  return fh_extents (next, handle, count, offset, flags, extents, err);
}

/* A write past a file size limit fails with EFBIG (reported), rather
 * than killing nbdkit with SIGXFSZ.  Every layer keeps its data files
 * open: the soft limit on open files goes up to the hard one, so that
 * the number of snapshots is bounded by the hard limit, not by the
 * usual soft 1024.
 */
static void
snapshot_load (void)
{
  rlim_t before, after;

  filesize_ignore_sigxfsz ();
  if (fdlimit_raise (&before, &after) == -1)
    nbdkit_debug ("cannot raise the limit of open files: %m");
  else if (before != after)
    nbdkit_debug ("limit of open files raised from %llu to %llu",
                  (unsigned long long) before, (unsigned long long) after);
}

static struct nbdkit_filter filter = {
  .name               = "snapshot",
  .load               = snapshot_load,
  .longname           = "nbdsnap snapshot filter",
  .unload             = snapshot_unload,
  .config             = snapshot_config,
  .config_complete    = snapshot_config_complete,
  .config_help        = snapshot_config_help,
  .thread_model       = fh_thread_model,
  .get_ready          = snapshot_get_ready,
  .after_fork         = snapshot_after_fork,
  .cleanup            = snapshot_cleanup,
  .default_export     = snapshot_default_export,
  .list_exports       = snapshot_list_exports,
  .open               = snapshot_open,
  .close              = snapshot_close,
  .prepare            = snapshot_prepare,
  .get_size           = snapshot_get_size,
  .export_description = fh_export_description,
  .block_size         = snapshot_block_size,
  .can_write          = snapshot_live,
  .can_flush          = snapshot_live,
  .is_rotational      = snapshot_is_rotational,
  .can_trim           = snapshot_live,
  .can_zero           = snapshot_can_zero,
  .can_fast_zero      = snapshot_live,
  .can_extents        = snapshot_live_or_view,
  .can_fua            = snapshot_can_fua,
  .can_multi_conn     = snapshot_live_or_view,
  .can_cache          = snapshot_can_cache,
  .pread              = snapshot_pread,
  .pwrite             = snapshot_pwrite,
  .zero               = snapshot_zero,
  .trim               = snapshot_trim,
  .flush              = snapshot_flush,
  .extents            = snapshot_extents,
};

NBDKIT_REGISTER_FILTER (filter)
