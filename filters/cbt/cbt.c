/* nbdsnap cbt filter: nbdkit callbacks.
 *
 * Each connection is one of:
 *   LIVE     the disk: every write, zero and trim marks its blocks in the
 *            active bitmap before it passes down;
 *   VIEW     @cbt/NAME or @cbt:diff/A/B: the disk read-only, with extents
 *            that are a change map;
 *   COMMAND  @cbt:VERB/...: performed at open, content = JSON result
 *            (@cbt:create/NAME/snapshot also makes snapshot NAME below);
 *   PASS     an @name for a filter below (a snapshot revert is watched:
 *            the blocks it will change are marked first).
 */
#include <config.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "exportname.h"
#include "command.h"
#include "diskname.h"
#include "filterhandle.h"
#include "install.h"
#include "param.h"
#include "policy.h"
#include "stack.h"
#include "tracker.h"

struct handle {
  struct filter_handle fh;              /* first: see filterhandle.h */
  char since[NAME_MAX_LEN + 1];         /* VIEW */
  char until[NAME_MAX_LEN + 1];         /* VIEW: "" for now */
  bool upload;                          /* COMMAND: @cbt:upload/COUNT,
                                         * a writable staging area
                                         * (install.c) */
};

static struct tracker_config cfg = { .sync = CBT_SYNC_FLUSH };
static unsigned policy = POLICY_DEFAULT;
static unsigned below;          /* nbdsnap filters below (stack.h) */
STACK_EXPORT (cbt)
POLICY_EXPORT (cbt)
/* The disk whose history the bitmaps hold (filters/common/diskname.h). */
static struct disk_name disk = DISK_NAME_INIT;

/* Take the cbt-* parameters; pass the others on. */
static int
cbt_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
            const char *key, const char *value)
{
  if (strcmp (key, "cbt-dir") == 0)
    return param_path (value, &cfg.dir);
  if (strcmp (key, "cbt-granularity") == 0)
    return param_block_size (key, value, &cfg.granularity);
  if (strcmp (key, "cbt-sync") == 0) {
    if (strcmp (value, "strict") == 0) cfg.sync = CBT_SYNC_STRICT;
    else if (strcmp (value, "flush") == 0) cfg.sync = CBT_SYNC_FLUSH;
    else {
      nbdkit_error ("cbt-sync=%s: expected strict or flush", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "cbt-commands") == 0)
    return param_policy (key, value, &policy);
  if (strcmp (key, "cbt-reset-on-shrink") == 0) {
    int r = nbdkit_parse_bool (value);
    if (r == -1)
      return -1;
    cfg.reset_on_shrink = r;
    return 0;
  }
  if (strcmp (key, "snapshot-revert-on-close") == 0) {
    nbdkit_error ("snapshot-revert-on-close cannot be used under the cbt "
                  "filter: its automatic revert would change blocks the "
                  "dirty bitmaps never see");
    return -1;
  }
  if (param_unknown (key, "cbt", "cbt-dir, cbt-granularity, cbt-sync, "
                     "cbt-commands, cbt-reset-on-shrink"))
    return -1;
  return next (nxdata, key, value);
}

/* cbt-dir is required. */
static int
cbt_config_complete (nbdkit_next_config_complete *next,
                     nbdkit_backend *nxdata)
{
  if (cfg.dir == NULL) {
    nbdkit_error ("the cbt filter needs cbt-dir=DIR");
    return -1;
  }
  return next (nxdata);
}

#define cbt_config_help \
  "cbt-dir=DIR               (required) Where bitmaps and state are kept.\n" \
  "cbt-granularity=SIZE      Bytes per bitmap bit (default 64K).\n" \
  "cbt-sync=strict|flush     When bits become durable (default flush).\n" \
  "cbt-commands=WHO          none|unix|tls|unix,tls|any (default unix,tls).\n" \
  "cbt-reset-on-shrink=BOOL  Drop all checkpoints if the disk shrank."

/* Free the configuration. */
static void
cbt_unload (void)
{
  free ((char *) cfg.dir);
  disk_name_free (&disk);
  upload_free ();
}

/* Start the tracker, the part that needs no plugin: cbt-dir, its lock,
 * the state file.  An error here stops nbdkit before it serves.
 */
static int
cbt_get_ready (int thread_model)
{
  below = stack_get_ready (STACK_CBT);
  return tracker_start (&cfg);
}

/* The disk below is probed here, not in .get_ready: nbdkit makes the
 * backend usable from .after_fork (before it, a filter below that
 * sleeps aborts nbdkit, and in daemon mode the probe would run in the
 * parent process).  The probe reads the disk of the default export, to
 * which the live disk is bound from now on.
 */
static int
cbt_after_fork (nbdkit_backend *b)
{
  const char *name = disk_name_get (&disk, "cbt");

  if (name == NULL)
    return -1;
  return tracker_after_fork (b, name);
}

/* Stop the tracker: seal the active bitmap, state clean. */
static void
cbt_cleanup (nbdkit_backend *b)
{
  tracker_stop ();
}

/* The exports below, then a view @cbt/NAME per checkpoint. */
static int
cbt_list_exports (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
                  int readonly, int is_tls, struct nbdkit_exports *exports)
{
  return fh_list_views (next, nxdata, readonly, exports, tracker_foreach,
                        "cbt", "changes since checkpoint ", "");
}

/* Run a command (see fh_command). */
static int
perform (struct command *c, const struct export_name *en, void *backend)
{
  const char *v = en->verb;

  if (strcmp (v, "list") == 0 && en->nargs == 0)
    return tracker_cmd_list (c);
  if (strcmp (v, "create") == 0 &&
      (en->nargs == 1 ||
       (en->nargs == 2 && strcmp (en->args[1], "snapshot") == 0))) {
    /* The live disk below, to flush at the checkpoint's instant. */
    nbdkit_next *live;
    int r;

    if (en->nargs == 2 && !(below & STACK_SNAPSHOT))
      return command_fail (c, "EINVAL", "there is no snapshot filter below "
                           "the cbt filter (--filter=cbt --filter=snapshot): "
                           "no checkpoint was made");
    live = nbdkit_next_context_open (backend, 0,
                                     disk_name_get (&disk, "cbt"), 1);
    if (live == NULL)
      return command_fail (c, "EIO", "cannot open the disk below");
    if (live->prepare (live) == -1) {
      nbdkit_next_context_close (live);
      return command_fail (c, "EIO", "cannot open the disk below");
    }
    if (en->nargs == 1)
      r = tracker_cmd_create (c, en->args[0], live);
    else
      r = tracker_cmd_create_snapshot (c, en->args[0], backend, live);
    live->finalize (live);
    nbdkit_next_context_close (live);
    return r;
  }
  if (strcmp (v, "delete") == 0 && en->nargs == 1)
    return tracker_cmd_delete (c, en->args[0]);
  if (strcmp (v, "install") == 0 && (en->nargs == 1 || en->nargs == 2))
    return tracker_cmd_install (c, en->args[0],
                                en->nargs == 2 ? en->args[1] : NULL);
  command_bad_args (c, "nbdkit-cbt-filter(1)");
  return -1;
}

/* Open an @name for a filter below: pass it down.  A snapshot revert
 * below changes blocks we never see written: mark them first, and let no
 * checkpoint fall between the marking and the revert.  -1 after
 * nbdkit_error.
 */
static int
open_pass (nbdkit_next_open *next, nbdkit_context *nxdata, int readonly,
           const char *exportname)
{
  struct export_name sn;
  char why[256];
  bool revert;
  int r;

  if (stack_check_pass (below, exportname, "cbt") == -1)
    return -1;
  revert = export_name_parse (exportname, "snapshot", &sn, why,
                              sizeof why) == EXPORT_VERB &&
    strcmp (sn.verb, "revert") == 0 && sn.nargs >= 1 &&
    name_valid (sn.args[0], why, sizeof why);
  if (revert) {
    tracker_commands_lock ();
    if (tracker_mark_revert (nbdkit_context_get_backend (nxdata),
                             sn.args[0]) == -1) {
      tracker_commands_unlock ();
      nbdkit_error ("cbt: cannot record the blocks the revert to '%s' "
                    "changes; refusing to pass it down", sn.args[0]);
      return -1;
    }
  }
  r = next (nxdata, readonly, exportname);
  if (revert)
    tracker_commands_unlock ();
  return r;
}

/* Open the change map @cbt/SINCE or @cbt:diff/SINCE/UNTIL (en) as the
 * VIEW h: the disk below, read-only.  -1 after nbdkit_error.
 */
static int
open_view (nbdkit_next_open *next, nbdkit_context *nxdata,
           const char *exportname, const struct export_name *en,
           struct handle *h)
{
  const char *since, *until = NULL, *name;
  char why[512];

  if (en->kind == EXPORT_VIEW)
    since = en->args[0];
  else if (en->nargs == 2) {
    since = en->args[0];
    until = en->args[1];
  }
  else {
    nbdkit_error ("cbt: %s: expected @cbt:diff/SINCE/UNTIL", exportname);
    return -1;
  }
  if (tracker_view_check (since, until, why, sizeof why) == -1) {
    nbdkit_error ("cbt: %s: %s", exportname, why);
    return -1;
  }
  h->fh.kind = VIEW;
  snprintf (h->since, sizeof h->since, "%s", since);
  snprintf (h->until, sizeof h->until, "%s", until ? until : "");
  name = disk_name_get (&disk, "cbt");
  if (name == NULL || next (nxdata, 1, name) == -1)
    return -1;
  snprintf (h->fh.desc, sizeof h->fh.desc, "nbdsnap:cbt change map");
  return 0;
}

/* Open @cbt:upload/COUNT: a COMMAND handle whose content is the staged
 * upload, writable.  A mutating command: the policy applies.  -1 after
 * nbdkit_error.
 */
static int
open_upload (const struct export_name *en, int readonly, int is_tls,
             struct handle *h)
{
  struct command c = { .filter = "cbt", .verb = en->verb };
  char why[256];

  if (en->nargs != 1) {
    nbdkit_error ("cbt: expected @cbt:upload/COUNT");
    return -1;
  }
  if (command_allowed (&c, true, policy, readonly, is_tls) == -1) {
    nbdkit_error ("cbt: upload: %s", c.why);
    return -1;
  }
  if (upload_open (en->args[0], why, sizeof why) == -1) {
    nbdkit_error ("cbt: upload: %s", why);
    return -1;
  }
  h->fh.kind = COMMAND;
  h->upload = true;
  snprintf (h->fh.desc, sizeof h->fh.desc, "nbdsnap:cbt upload");
  return 0;
}

/* Open a connection: LIVE, VIEW, COMMAND (performed now) or PASS. */
static void *
cbt_open (nbdkit_next_open *next, nbdkit_context *nxdata,
          int readonly, const char *exportname, int is_tls)
{
  struct handle *h;
  struct export_name en;
  char why[512];

  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  switch (export_name_parse (exportname, "cbt", &en, why, sizeof why)) {
  case EXPORT_BAD:
    nbdkit_error ("cbt: bad export name %s", why);
    goto err;

  case EXPORT_OTHER:
    h->fh.kind = PASS;
    if (open_pass (next, nxdata, readonly, exportname) == -1)
      goto err;
    return h;

  case EXPORT_LIVE:
    /* One disk: the bitmaps of two would mix. */
    h->fh.kind = LIVE;
    if (disk_name_bind (&disk, exportname, "cbt") == -1 ||
        next (nxdata, readonly, exportname) == -1)
      goto err;
    return h;

  case EXPORT_VIEW:
  case EXPORT_VERB:
    if (en.kind == EXPORT_VIEW || strcmp (en.verb, "diff") == 0) {
      if (open_view (next, nxdata, exportname, &en, h) == -1)
        goto err;
      return h;
    }
    if (strcmp (en.verb, "upload") == 0) {
      if (open_upload (&en, readonly, is_tls, h) == -1)
        goto err;
      return h;
    }
    if (strcmp (en.verb, "list") && strcmp (en.verb, "create") &&
        strcmp (en.verb, "delete") && strcmp (en.verb, "install")) {
      nbdkit_error ("cbt: %s: unknown command '%s' (known: create, list, "
                    "delete, diff, upload, install)", exportname, en.verb);
      goto err;
    }
    if (fh_command (&h->fh, "cbt", policy, &en, readonly, is_tls, perform,
                    nbdkit_context_get_backend (nxdata)) == -1)
      goto err;
    return h;
  }
 err:
  free (h);
  return NULL;
}

/* Check what is below: a PASS name was understood; the live disk and
 * views see the size the tracker started with.
 */
static int
cbt_prepare (nbdkit_next *next, void *handle, int readonly)
{
  struct handle *h = handle;

  if (h->fh.kind == PASS && command_check_below (next, "cbt") == -1)
    return -1;
  if (h->fh.kind == LIVE || h->fh.kind == VIEW) {
    if (next->get_size (next) != (int64_t) tracker_disk_size ()) {
      nbdkit_error ("cbt: the disk below changed size while nbdkit runs");
      return -1;
    }
    if (next->can_extents (next) == -1)
      return -1;
  }
  return 0;
}

/* Writes of the live disk: mark, then pass down, inside the gate so a
 * checkpoint never splits a write.
 */
#define MARKED(call)                                                    \
  do {                                                                  \
    struct handle *h = handle;                                          \
    int r;                                                              \
    if (h->fh.kind != LIVE && h->fh.kind != PASS) {                     \
      *err = EROFS;                                                     \
      return -1;                                                        \
    }                                                                   \
    tracker_enter ();                                                   \
    r = tracker_mark (offset, count, err);                              \
    if (r == 0)                                                         \
      r = (call);                                                       \
    tracker_leave ();                                                   \
    return r;                                                           \
  } while (0)

/* Write (MARKED), or into the upload. */
static int
cbt_pwrite (nbdkit_next *next, void *handle, const void *buf,
            uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  if (((struct handle *) handle)->upload)
    return upload_rw ((void *) buf, count, offset, true, err);
  MARKED (next->pwrite (next, buf, count, offset, flags, err));
}

/* Zero (MARKED). */
static int
cbt_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  MARKED (next->zero (next, count, offset, flags, err));
}

/* Trim (MARKED). */
static int
cbt_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  MARKED (next->trim (next, count, offset, flags, err));
}

/* Flush below, then make the active bitmap durable.  After a failure
 * no flush succeeds (a later fdatasync would return 0 over lost pages).
 */
static int
cbt_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind != LIVE && h->fh.kind != PASS)
    return 0;                   /* also the upload: it is in memory */
  if (tracker_check (err) == -1 ||
      next->flush (next, flags, err) == -1)
    return -1;
  return tracker_flush (err);
}

/* A VIEW's extents are its change map; others are the disk's. */
static int
cbt_extents (nbdkit_next *next, void *handle, uint32_t count,
             uint64_t offset, uint32_t flags,
             struct nbdkit_extents *extents, int *err)
{
  struct handle *h = handle;

  if (h->fh.kind == VIEW)
    return tracker_extents (h->since, h->until[0] ? h->until : NULL, next,
                            count, offset, flags, extents, err);
  return fh_extents (next, handle, count, offset, flags, extents, err);
}

/* The upload: its own size, content, and writable; the rest as any
 * COMMAND.
 */
static void
cbt_close (void *handle)
{
  if (((struct handle *) handle)->upload)
    upload_close ();
  fh_close (handle);
}

static int64_t
cbt_get_size (nbdkit_next *next, void *handle)
{
  if (((struct handle *) handle)->upload)
    return upload_size ();
  return fh_get_size (next, handle);
}

static int
cbt_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
           uint64_t offset, uint32_t flags, int *err)
{
  if (((struct handle *) handle)->upload)
    return upload_rw (buf, count, offset, false, err);
  return fh_pread (next, handle, buf, count, offset, flags, err);
}

static int
cbt_can_write (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->upload ? 1 : fh_can_write (next, handle);
}

static int
cbt_can_flush (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->upload ? 1 : fh_can_flush (next, handle);
}

static struct nbdkit_filter filter = {
  .name               = "cbt",
  .longname           = "nbdsnap changed block tracking filter",
  .unload             = cbt_unload,
  .config             = cbt_config,
  .config_complete    = cbt_config_complete,
  .config_help        = cbt_config_help,
  .thread_model       = fh_thread_model,
  .get_ready          = cbt_get_ready,
  .after_fork         = cbt_after_fork,
  .cleanup            = cbt_cleanup,
  .list_exports       = cbt_list_exports,
  .open               = cbt_open,
  .close              = cbt_close,
  .prepare            = cbt_prepare,
  /* FH_PASSTHRU_CALLBACKS, but for the upload's size and writes. */
  .get_size           = cbt_get_size,
  .export_description = fh_export_description,
  .block_size         = fh_block_size,
  .can_write          = cbt_can_write,
  .can_flush          = cbt_can_flush,
  .is_rotational      = fh_is_rotational,
  .can_trim           = fh_can_trim,
  .can_zero           = fh_can_zero,
  .can_fast_zero      = fh_can_fast_zero,
  .can_extents        = fh_can_extents,
  .can_fua            = fh_can_fua,
  .can_multi_conn     = fh_can_multi_conn,
  .can_cache          = fh_can_cache,
  .cache              = fh_cache,
  .pread              = cbt_pread,
  .pwrite             = cbt_pwrite,
  .zero               = cbt_zero,
  .trim               = cbt_trim,
  .flush              = cbt_flush,
  .extents            = cbt_extents,
};

NBDKIT_REGISTER_FILTER (filter)
