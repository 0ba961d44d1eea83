/* nbdsnap tool: migrate --snapshots: recreating the source's snapshot
 * tree on the destination.
 *
 * The snapshot filter has no upload of layers, but its views and
 * commands are enough: for each snapshot S of the source, oldest first
 * (a parent is always older than its children), the destination's live
 * disk is made S's parent (@snapshot:revert/PARENT; the plugin's disk
 * itself for a snapshot without parent, of which every byte of S is then
 * copied), S's changes are copied (@snapshot:diff/PARENT/S), and
 * @snapshot:create/S freezes it.  At the end the destination is reverted
 * to the live disk's parent, over which migrate.c copies the live disk.
 * The destination's snapshots get new creation times; their bytes and
 * parents are the source's.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migrate.h"

/* What must not change while the point begins: the names, their
 * parents and the live disk's parent, as one string into sig.
 */
static void
signature (struct result *res, char *sig, size_t len)
{
  struct json_object *s;
  size_t i, n = jlen (res->root, "snapshots"), k = 0;
  const char *p;

  sig[0] = '\0';
  for (i = 0; i <= n && k < len; ++i) {
    s = i < n ? jat (res->root, "snapshots", i) : jget (res->root, "live");
    p = jstr (s, "parent");
    k += snprintf (sig + k, len - k, "%s<%s;", i < n && jstr (s, "name") ?
                   jstr (s, "name") : "", p ? p : "");
  }
}

/* @snapshot:list of uri into res (ok).  Prints the error on failure. */
static int
snap_list (const char *uri, const char *which, struct result *res)
{
  char err[ERRLEN];

  if (run_command (uri, "@snapshot:list", res, err, sizeof err) != CMD_DONE)
    return fail (EXIT_FAILED, "cannot list the %s's snapshots (--snapshots "
                 "needs the snapshot filter on both servers): %s", which,
                 err);
  if (!res->ok) {
    result_error (res->root, err, sizeof err);
    result_free (res);
    return fail (EXIT_FAILED, "cannot list the %s's snapshots: %s", which,
                 err);
  }
  return EXIT_OK;
}

int
check_snapshots (struct migrate *m)
{
  struct result res;
  bool merging;
  size_t i, n;
  int r;

  if ((r = snap_list (m->src, "source", &res)) != EXIT_OK)
    return r;
  n = jlen (res.root, "snapshots");
  for (i = 0; i < n; ++i) {
    merging = false;
    jbool (jat (res.root, "snapshots", i), "merging", &merging);
    if (merging) {
      result_free (&res);
      return fail (EXIT_FAILED, "a deleted snapshot of the source is being "
                   "merged: migrate when the merge has ended");
    }
  }
  signature (&res, m->snap_sig, sizeof m->snap_sig);
  result_free (&res);
  if (n > MIG_MAX_CKPTS)
    return fail (EXIT_FAILED, "the source has too many snapshots (%zu)", n);
  if ((r = snap_list (m->dst, "destination", &res)) != EXIT_OK)
    return r;
  n = jlen (res.root, "snapshots");
  result_free (&res);
  if (n)
    return fail (EXIT_FAILED, "the destination already has %zu snapshot(s): "
                 "--snapshots needs a destination without any (delete "
                 "them, or start it on an empty snapshot-dir)", n);
  return EXIT_OK;
}

/* Run a snapshot command on the destination.  A revert is refused
 * (EBUSY) while a connection of ours is still closing on the server
 * side: retried for up to 5 seconds.
 */
static int
dst_command (struct migrate *m, const char *verb, const char *name)
{
  char ex[160], err[ERRLEN];
  struct result res;
  const char *e;
  int i;

  snprintf (ex, sizeof ex, "@snapshot:%s/%s", verb, name);
  for (i = 0; i < 50; ++i) {
    if (run_command (m->dst, ex, &res, err, sizeof err) != CMD_DONE)
      return fail (EXIT_FAILED, "%s on the destination: %s", ex, err);
    if (res.ok) {
      result_free (&res);
      return EXIT_OK;
    }
    e = jstr (res.root, "errno");
    result_error (res.root, err, sizeof err);
    result_free (&res);
    if (e == NULL || strcmp (e, "EBUSY") != 0)
      break;
    usleep (100000);
  }
  return fail (EXIT_FAILED, "the destination refused %s: %s", ex, err);
}

int
carry_snapshots (struct migrate *m)
{
  struct result res;
  struct json_object *s;
  const char *name, *parent;
  char view[256], sig[sizeof m->snap_sig];
  size_t i, n;
  int r;

  /* The list again: the frozen point holds it still from now on (no
   * revert while a point is held; a create only adds).
   */
  if ((r = snap_list (m->src, "source", &res)) != EXIT_OK)
    return r;
  signature (&res, sig, sizeof sig);
  if (strcmp (sig, m->snap_sig) != 0) {
    result_free (&res);
    return fail (EXIT_FAILED, "the source's snapshots changed while the "
                 "migration began (a snapshot was created, reverted to or "
                 "deleted): try again");
  }
  n = jlen (res.root, "snapshots");
  for (i = 0; i < n && r == EXIT_OK; ++i) {
    s = jat (res.root, "snapshots", i);
    name = jstr (s, "name");
    parent = jstr (s, "parent");
    if (name == NULL) {
      r = fail (EXIT_FAILED, "the source's snapshot list has no name");
      break;
    }
    verbose ("snapshot '%s' (parent %s)", name, parent ? parent : "none");
    if (parent) {
      r = dst_command (m, "revert", parent);
      snprintf (view, sizeof view, "@snapshot:diff/%s/%s", parent, name);
      if (r == EXIT_OK)
        r = copy_view (m, view, NULL, COPY_DIFF);
    }
    else {
      if (i > 0)
        msg ("note: snapshot '%s' has no parent on the source; on the "
             "destination its parent is '%s' (its bytes are the same)",
             name, m->nsnaps ? m->snaps[m->nsnaps - 1] : "?");
      snprintf (view, sizeof view, "@snapshot/%s", name);
      r = copy_view (m, view, NULL, COPY_ALL);
    }
    if (r == EXIT_OK)
      r = dst_command (m, "create", name);
    if (r == EXIT_OK && (m->snaps[m->nsnaps] = strdup (name)) != NULL)
      m->nsnaps++;
  }
  parent = jstr (jget (res.root, "live"), "parent");
  snprintf (m->live_parent, sizeof m->live_parent, "%s", parent ? parent : "");
  result_free (&res);
  if (r == EXIT_OK && m->live_parent[0])
    r = dst_command (m, "revert", m->live_parent);
  return r;
}
