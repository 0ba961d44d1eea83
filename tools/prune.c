/* nbdsnap tool: checkpoint retention on the server.
 *
 *   nbdsnap prune URI REPO [--keep-checkpoints N] [--dry-run]
 *   (and nbdsnap backup, after a successful backup)
 *
 * The rule (nbdsnap(1), RETENTION):
 *
 *  - Only checkpoints the repository made are candidates: those named as
 *    a point of REPO (a backup names its checkpoint after its point).
 *    Checkpoints with any other name (made by hand, by snapshot create
 *    --checkpoint, by backups into another repository, or whose point
 *    was deleted from REPO) are never touched.
 *  - Kept: the checkpoints of the N newest points (N >= 1; default 7: a
 *    differential since any of the last 7 points works, and the next
 *    incremental still does after up to 6 newest points were deleted from
 *    the repository); the base of the
 *    newest points that are differentials (parent not the point just
 *    before them: the next differential starts there too); every point a
 *    backup in progress holds (its parent, repo_point_busy).
 *  - Nothing at all is deleted while the server holds a frozen point: a
 *    backup in progress, whose base is not known here, may need it.
 *
 * Deleting a checkpoint merges its bitmap into the previous one, so the
 * changes since every kept checkpoint stay complete.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdsnap.h"
#include "quiesce.h"
#include "repo.h"

void
keep_option (int *argc, char **argv, unsigned *keep)
{
  char *t = take_option (argc, argv, "keep-checkpoints"), *end;
  unsigned long v;

  if (t == NULL)
    return;
  v = strtoul (t, &end, 10);
  if (end == t || *end || t[0] == '-' || v > 1000000)
    usage_error ("%s: --keep-checkpoints must be a number (0: do not "
                 "prune), not '%s'", argv[0], t);
  *keep = v;
}

/* Index of point name in v, or -1. */
static long
find_point (const struct repo_point_info *v, size_t n, const char *name)
{
  size_t i;

  for (i = 0; i < n; ++i)
    if (strcmp (v[i].name, name) == 0)
      return i;
  return -1;
}

/* Which points' checkpoints are needed (needed[i] for v[i]). */
static void
mark_needed (struct repo *repo, const struct repo_point_info *v, size_t n,
             unsigned keep, bool *needed)
{
  size_t i;
  long p;

  for (i = n > keep ? n - keep : 0; i < n; ++i) {
    needed[i] = true;
    /* A differential: its base is the base of the next one too. */
    if (v[i].parent[0] && (i == 0 || strcmp (v[i].parent, v[i - 1].name))
        && (p = find_point (v, n, v[i].parent)) >= 0)
      needed[p] = true;
  }
  for (i = 0; i < n; ++i)
    if (!needed[i] && repo_point_busy (repo, v[i].name) != 0) {
      verbose ("keeping checkpoint '%s': a backup in progress is based on "
               "it (or it cannot be told)", v[i].name);
      needed[i] = true;
    }
}

int
prune_plan (struct repo *repo, unsigned keep, const char *newpoint,
            const char *newparent, struct prune_plan *plan, char *err,
            size_t errlen)
{
  struct repo_point_info *v = NULL, *nv;
  bool *needed;
  size_t n = 0, i;

  plan->names = NULL;
  plan->n = 0;
  if (keep == 0)
    return 0;                   /* no pruning */
  if (repo_list (repo, &v, &n, err, errlen) == -1)
    return -1;
  if (newpoint) {               /* the backup about to commit: the newest */
    if ((nv = realloc (v, (n + 1) * sizeof *v)) == NULL)
      goto nomem;
    v = nv;
    memset (&v[n], 0, sizeof v[n]);
    snprintf (v[n].name, sizeof v[n].name, "%s", newpoint);
    snprintf (v[n].parent, sizeof v[n].parent, "%s",
              newparent ? newparent : "");
    n++;
  }
  if ((needed = calloc (n ? n : 1, sizeof *needed)) == NULL)
    goto nomem;
  mark_needed (repo, v, n, keep, needed);
  for (i = 0; i < n; ++i)
    if (!needed[i])
      plan->n++;
  if (plan->n &&
      (plan->names = calloc (plan->n, sizeof *plan->names)) == NULL) {
    free (needed);
    plan->n = 0;
    goto nomem;
  }
  plan->n = 0;
  for (i = 0; i < n; ++i)
    if (!needed[i])
      memcpy (plan->names[plan->n++], v[i].name, sizeof v[i].name);
  free (needed);
  free (v);
  return 0;
 nomem:
  free (v);
  snprintf (err, errlen, "out of memory");
  return -1;
}

void
prune_plan_free (struct prune_plan *plan)
{
  free (plan->names);
  plan->names = NULL;
  plan->n = 0;
}

/* Is name in the plan? */
static bool
planned (const struct prune_plan *plan, const char *name)
{
  size_t i;

  for (i = 0; i < plan->n; ++i)
    if (strcmp (plan->names[i], name) == 0)
      return true;
  return false;
}

/* Frozen points held on the server: their names into held (empty if
 * none, or if the server has no freeze filter).  -1 if the server
 * cannot be asked.
 */
static int
frozen_points (const char *uri, char *held, size_t len, char *err,
               size_t errlen)
{
  struct result res;
  size_t i, k;
  const char *name;

  held[0] = '\0';
  switch (run_command (uri, "@freeze:list", &res, err, errlen)) {
  case CMD_DONE:
    break;
  case CMD_REFUSED:             /* no freeze filter: nothing is frozen */
    return 0;
  default:
    return -1;
  }
  for (i = 0; res.ok && i < jlen (res.root, "points"); ++i) {
    name = jstr (jat (res.root, "points", i), "name");
    k = strlen (held);
    snprintf (held + k, len - k, "%s'%s'", k ? ", " : "",
              name ? name : "?");
  }
  result_free (&res);
  return 0;
}

/* Append "name" to the JSON list names. */
static void
add_name (char *names, size_t nlen, const char *name)
{
  size_t k = strlen (names);

  if (k + strlen (name) + 4 < nlen)
    snprintf (names + k, nlen - k, "%s\"%s\"", k ? "," : "", name);
}

/* Delete checkpoint name.  0 ok, -1 (e2 says why). */
static int
delete_checkpoint (const char *uri, const char *name, char *e2,
                   size_t e2len)
{
  char ex[256];
  struct result res;

  snprintf (ex, sizeof ex, "@cbt:delete/%s", name);
  if (run_command (uri, ex, &res, e2, e2len) != CMD_DONE)
    return -1;
  if (!res.ok) {
    result_error (res.root, e2, e2len);
    result_free (&res);
    return -1;
  }
  result_free (&res);
  return 0;
}

int
prune_run (const char *uri, const struct prune_plan *plan, bool dry_run,
           bool quiet, char *names, size_t nlen, char *err, size_t errlen)
{
  struct result cps;
  char held[ERRLEN], e2[ERRLEN];
  const char *name;
  size_t i;
  int deleted = 0, failed = 0;

  if (names && nlen)
    names[0] = '\0';
  if (plan->n == 0)
    return 0;                   /* every checkpoint is needed */
  if (frozen_points (uri, held, sizeof held, err, errlen) == -1)
    return -1;
  if (held[0]) {
    msg ("not pruning checkpoints: the server holds frozen point(s) %s (a "
         "backup in progress may need its base); run nbdsnap prune later",
         held);
    return 0;
  }
  switch (run_command (uri, "@cbt:list", &cps, err, errlen)) {
  case CMD_DONE:
    break;
  case CMD_REFUSED:
    snprintf (e2, sizeof e2, "the server has no cbt filter (%s)", err);
    snprintf (err, errlen, "%s", e2);
    return -1;
  default:
    return -1;
  }
  if (!cps.ok) {
    result_error (cps.root, err, errlen);
    result_free (&cps);
    return -1;
  }
  for (i = 0; i < jlen (cps.root, "checkpoints"); ++i) {
    name = jstr (jat (cps.root, "checkpoints", i), "name");
    if (name == NULL || !planned (plan, name))
      continue;                 /* needed, or not the repository's */
    if (!dry_run && delete_checkpoint (uri, name, e2, sizeof e2) == -1) {
      if (!failed)
        snprintf (err, errlen, "cannot delete checkpoint '%s': %s", name,
                  e2);
      msg ("cannot delete checkpoint '%s': %s", name, e2);
      failed = 1;
      continue;
    }
    if (!quiet)
      printf ("%s checkpoint '%s'\n", dry_run ? "would delete" : "deleted",
              name);
    if (names)
      add_name (names, nlen, name);
    deleted++;
  }
  result_free (&cps);
  return failed ? -1 : deleted;
}

/* nbdsnap prune URI REPO [--keep-checkpoints N] [--dry-run] */
int
cmd_prune (int argc, char **argv)
{
  unsigned keep = DEFAULT_KEEP_CHECKPOINTS;
  bool dry_run = false;
  char *pos[2], err[ERRLEN], names[8192];
  struct repo *repo;
  struct prune_plan plan;
  int n, i, r;

  keep_option (&argc, argv, &keep);
  for (i = 1; i < argc; ++i)
    if (strcmp (argv[i], "--dry-run") == 0) {
      dry_run = true;
      memmove (&argv[i], &argv[i + 1], (argc - i) * sizeof *argv);
      argc--;
      i--;
    }
    else if (strcmp (argv[i], "--") == 0)
      break;
  n = parse_args (argc, argv, NULL, NULL, pos, 2);
  if (n != 2)
    usage_error ("usage: nbdsnap prune URI REPO [--keep-checkpoints N] "
                 "[--dry-run]");
  check_uri (pos[0]);
  if (keep == 0)
    usage_error ("prune: --keep-checkpoints must be at least 1 (the "
                 "newest point's checkpoint is always kept)");
  if ((repo = open_repo (pos[1])) == NULL)
    return EXIT_FAILED;
  r = prune_plan (repo, keep, NULL, NULL, &plan, err, sizeof err);
  repo_close (repo);
  if (r == 0) {
    r = prune_run (pos[0], &plan, dry_run, opt_json, names, sizeof names,
                   err, sizeof err);
    prune_plan_free (&plan);
  }
  if (r < 0)
    return fail (EXIT_FAILED, "prune: %s", err);
  if (opt_json)
    printf ("{\"ok\":true,\"dry_run\":%s,\"keep_checkpoints\":%u,"
            "\"%s\":[%s]}\n", dry_run ? "true" : "false", keep,
            dry_run ? "would_delete" : "deleted", names);
  else if (r == 0)
    printf ("no checkpoint to delete\n");
  return EXIT_OK;
}
