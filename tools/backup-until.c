/* nbdsnap tool: backup --until CHECKPOINT: a backup of a past instant.
 *
 * `nbdsnap snapshot create URI NAME --checkpoint` (@cbt:create/NAME/
 * snapshot) makes snapshot NAME and checkpoint NAME at one instant.  Any
 * time later, the bytes of that instant are the view @snapshot/NAME and
 * the blocks written between an earlier checkpoint SINCE and NAME are the
 * change map @cbt:diff/SINCE/NAME.  So
 *
 *   nbdsnap backup URI REPO --until NAME [--since SINCE | --full]
 *
 * makes the repository point NAME (full, or with parent point SINCE)
 * from those two views, without a frozen point: no freeze filter, no new
 * checkpoint, nothing on the server changes.  The point is named after
 * its checkpoint, as every point is, so the point made at SINCE is the
 * parent and the next backup --since NAME continues the chain.
 *
 *   until_check_server   @cbt:list: NAME exists, is consistent and newer
 *                        than SINCE; @snapshot:list: snapshot NAME exists
 *                        and was made at checkpoint NAME's instant (the
 *                        creation times, and the changes since both:
 *                        backup-instant.c)
 *   until_extents        which blocks to copy: the snapshot's extents
 *                        (full) or the change map (incremental)
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "backup.h"

/* Seconds the creation times of snapshot and checkpoint NAME may differ
 * (both are taken in one gate hold; the snapshot filter first makes the
 * live disk durable, which may take a while on a busy disk).
 */
#define SAME_INSTANT_SLACK 30

/* An RFC 3339 UTC time as the filters write it, or -1. */
static time_t
parse_time (const char *s)
{
  struct tm tm;
  const char *end;

  if (s == NULL)
    return -1;
  memset (&tm, 0, sizeof tm);
  end = strptime (s, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (end == NULL || *end != '\0')
    return -1;
  return timegm (&tm);
}

/* Run a read-only list command; its result in *res.  EXIT_OK, or the
 * error printed.
 */
static int
list_of (struct backup *b, const char *exportname, const char *filter,
         struct result *res)
{
  char err[ERRLEN];

  switch (run_command (b->uri, exportname, res, err, sizeof err)) {
  case CMD_DONE:
    if (res->ok)
      return EXIT_OK;
    result_error (res->root, err, sizeof err);
    result_free (res);
    break;
  case CMD_UNREACHABLE:
    return fail (EXIT_USAGE, "cannot connect to %s: %s", b->uri, err);
  default:
    break;
  }
  return fail (EXIT_FAILED, "%s: %s: a backup --until needs the %s filter "
               "(--filter=cbt --filter=snapshot)", exportname, err, filter);
}

/* The element of array key of res whose "name" is name, with its index
 * in *at; NULL if none.
 */
static struct json_object *
find_named (struct result *res, const char *key, const char *name,
            size_t *at)
{
  size_t i;
  const char *n;

  for (i = 0; i < jlen (res->root, key); ++i) {
    n = jstr (jat (res->root, key, i), "name");
    if (n && strcmp (n, name) == 0) {
      *at = i;
      return jat (res->root, key, i);
    }
  }
  return NULL;
}

/* Checkpoints: until exists and is consistent; since (incremental)
 * exists, is consistent and not newer.  *created: until's time.
 */
static int
check_checkpoints (struct backup *b, time_t *created, uint64_t *gran)
{
  struct result res;
  struct json_object *u, *s = NULL;
  size_t iu = 0, is = 0;
  bool cu = false, cs = false;
  int r;

  if ((r = list_of (b, "@cbt:list", "cbt", &res)) != EXIT_OK)
    return r;
  jnum (res.root, "granularity", gran);
  jnum (res.root, "disk_size", &b->size);
  u = find_named (&res, "checkpoints", b->until, &iu);
  if (b->incremental)
    s = find_named (&res, "checkpoints", b->since, &is);
  if (u) {
    jbool (u, "consistent", &cu);
    *created = parse_time (jstr (u, "created"));
  }
  if (s)
    jbool (s, "consistent", &cs);
  result_free (&res);
  if (u == NULL)
    return fail (EXIT_FAILED, "the server has no checkpoint '%s' (--until): "
                 "make the snapshot and the checkpoint together with "
                 "'nbdsnap snapshot create URI NAME --checkpoint'", b->until);
  if (b->incremental && s == NULL)
    return fail (EXIT_FAILED, "the server has no checkpoint '%s' (--since, "
                 "the parent point): the changes between '%s' and '%s' are "
                 "unknown; back up '%s' in full (--until %s --full)",
                 b->since, b->since, b->until, b->until, b->until);
  if (b->incremental && is > iu)
    return fail (EXIT_FAILED, "checkpoint '%s' (--since) is newer than "
                 "checkpoint '%s' (--until): the parent point must be made "
                 "at an earlier checkpoint", b->since, b->until);
  if (b->incremental && !cs)
    return fail (EXIT_FAILED, "checkpoint '%s' is not consistent: writes "
                 "after it may not all be tracked; back up '%s' in full "
                 "(--until %s --full)", b->since, b->until, b->until);
  return EXIT_OK;
}

int
until_check_server (struct backup *b)
{
  struct result res;
  struct json_object *s;
  time_t cp_time = -1, snap_time;
  uint64_t gran = 0, snap_bs = 0;
  size_t at;
  int r;

  if ((r = check_checkpoints (b, &cp_time, &gran)) != EXIT_OK)
    return r;
  if ((r = list_of (b, "@snapshot:list", "snapshot", &res)) != EXIT_OK)
    return r;
  jnum (res.root, "block_size", &snap_bs);
  s = find_named (&res, "snapshots", b->until, &at);
  snap_time = s ? parse_time (jstr (s, "created")) : -1;
  result_free (&res);
  if (s == NULL)
    return fail (EXIT_FAILED, "no snapshot holds the bytes of checkpoint "
                 "'%s': the server has no snapshot '%s' (make both at one "
                 "instant with 'nbdsnap snapshot create URI NAME "
                 "--checkpoint'; without it only a backup of now is "
                 "possible)", b->until, b->until);
  if (cp_time == -1 || snap_time == -1 ||
      labs ((long) (snap_time - cp_time)) > SAME_INSTANT_SLACK)
    return fail (EXIT_FAILED, "snapshot '%s' was not made at the instant of "
                 "checkpoint '%s' (created %lds apart), so its bytes are not "
                 "those of the checkpoint: make both with 'nbdsnap snapshot "
                 "create URI NAME --checkpoint'", b->until, b->until,
                 (long) (snap_time - cp_time));
  if (gran == 0 || snap_bs == 0 || b->size == 0)
    return fail (EXIT_FAILED, "the server's lists give no block sizes or "
                 "disk size");
  return until_same_instant (b, gran, snap_bs);
}

int
until_extents (struct backup *b, struct extent **ext, size_t *n)
{
  char ex[256], err[ERRLEN];
  struct nbd_handle *h;
  size_t i;
  int r;

  if (!b->incremental)          /* the snapshot's own allocation */
    return get_extents (b->h0, b->size, ext, n, err, sizeof err) == -1 ?
      (backup_fail (b, "%s: %s", b->view, err), -1) : 0;

  /* The change map's data and zero describe the live disk: here both
   * mean "changed", to be read from the snapshot.
   */
  snprintf (ex, sizeof ex, "@cbt:diff/%s/%s", b->since, b->until);
  h = connect_export (b->uri, ex, true, NULL, err, sizeof err);
  if (h == NULL) {
    backup_fail (b, "cannot read the changes between checkpoints '%s' and "
                 "'%s' (%s): see the server's log", b->since, b->until, err);
    return -1;
  }
  if (nbd_get_size (h) != (int64_t) b->size)
    r = (backup_fail (b, "%s and %s differ in size", ex, b->view), -1);
  else if (nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1)
    r = (backup_fail (b, "%s: the server sends no change map", ex), -1);
  else if (get_extents (h, b->size, ext, n, err, sizeof err) == -1)
    r = (backup_fail (b, "%s: %s", ex, err), -1);
  else
    r = 0;
  disconnect (h);
  if (r == 0)
    for (i = 0; i < *n; ++i)
      if ((*ext)[i].type != LIBNBD_STATE_HOLE)
        (*ext)[i].type = 0;
  return r;
}
