/* nbdsnap tool: server management through command exports.
 *
 *   nbdsnap snapshot create|list|revert|delete|diff URI ...
 *   nbdsnap checkpoint create|list|delete|diff URI ...
 *   nbdsnap freeze begin|list|end URI ...
 *
 * Each command opens the filter's command export once (opening it runs
 * the command), reads its JSON result, and prints it as a table, or as
 * it is with --json.  Exit 0 if "ok" is true, 1 if the server refused
 * (the result's error is printed), 2 on usage or connection errors.
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "exportname.h"
#include "nbdsnap.h"
#include "quiesce.h"

/* Run a command export and check "ok".  On success res holds the
 * result (caller frees: result_free).  With --json the result is printed
 * as it is.
 */
static int
do_command (const char *uri, const char *exportname, const char *filter,
            struct result *res)
{
  char err[ERRLEN], e2[ERRLEN];
  size_t len;

  switch (run_command (uri, exportname, res, err, sizeof err)) {
  case CMD_DONE:
    break;
  case CMD_UNREACHABLE:
    return fail (EXIT_USAGE, "cannot connect to %s: %s", uri, err);
  case CMD_REFUSED:
    return fail (EXIT_FAILED, "the server refused '%s' (is the %s filter "
                 "loaded in this server?): %s", exportname, filter, err);
  case CMD_INVALID:
    return fail (EXIT_FAILED, "%s", err);
  case CMD_LOST:
    return fail (EXIT_FAILED, "'%s' ran on the server, but its result "
                 "was lost (%s): what it did is unknown; look with the "
                 "list command", exportname, err);
  }
  if (opt_json) {
    len = strlen (res->text);
    fputs (res->text, stdout);
    if (len == 0 || res->text[len - 1] != '\n')
      putchar ('\n');
  }
  if (!res->ok) {
    result_error (res->root, e2, sizeof e2);
    msg ("%s: %s", exportname, e2);
    result_free (res);
    return EXIT_FAILED;
  }
  return EXIT_OK;
}

/* do_command for a create, between the quiesce hooks (quiesce.c). */
static int
quiesced_command (struct quiesce *q, const char *uri, const char *name,
                  const char *exportname, const char *filter,
                  struct result *res)
{
  char err[ERRLEN];
  int r;

  q->uri = uri;
  q->point = name;
  if (quiesce_freeze (q, err, sizeof err) == -1)
    return fail (EXIT_FAILED, "%s not run: %s", exportname, err);
  r = do_command (uri, exportname, filter, res);
  if (quiesce_thaw (q, r == EXIT_OK, err, sizeof err) == -1) {
    if (r == EXIT_OK)
      result_free (res);
    return fail (EXIT_FAILED, "%s%s; %s (the file system may still be "
                 "frozen)", exportname, r == EXIT_OK ? " was done" : " failed",
                 err);
  }
  return r;
}

/* Usage error unless min <= n <= max. */
static void
need_args (int n, int min, int max, const char *synopsis)
{
  if (n < min || n > max)
    usage_error ("usage: nbdsnap %s", synopsis);
}

/* Usage error unless name is a valid name (the filters' rule). */
static void
check_name (const char *what, const char *name)
{
  char why[256];

  if (!name_valid (name, why, sizeof why))
    usage_error ("invalid %s name '%s' (1 to 64 of A-Z a-z 0-9 . _ -, "
                 "not '.', no '..')", what, name);
}

/* s, or "" if it is NULL. */
static const char *
str_or_empty (const char *s)
{
  return s ? s : "";
}

/*--------------------------------------------------------- change maps --*/

/* Print the base:allocation extents of a change-map view. */
static int
show_map (const char *uri, const char *exportname, const char *what)
{
  char err[ERRLEN];
  struct nbd_handle *h;
  struct extent *v = NULL;
  size_t n = 0, i;
  int64_t size;
  uint64_t changed = 0;
  bool refused;

  h = connect_export (uri, exportname, true, &refused, err, sizeof err);
  if (h == NULL)
    return open_failed (uri, exportname, refused, what, err,
                        "no such snapshot or checkpoint, or the filter is "
                        "not loaded (see the server's log)");
  size = nbd_get_size (h);
  if (size < 0) {
    disconnect (h);
    return fail (EXIT_FAILED, "%s: %s", exportname, nbd_get_error ());
  }
  if (nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
    disconnect (h);
    return fail (EXIT_FAILED, "%s: the server sends no extents",
                 exportname);
  }
  if (get_extents (h, size, &v, &n, err, sizeof err) == -1) {
    disconnect (h);
    return fail (EXIT_FAILED, "%s: %s", exportname, err);
  }
  disconnect (h);
  for (i = 0; i < n; ++i)
    if (v[i].type != LIBNBD_STATE_HOLE)
      changed += v[i].length;
  if (opt_json) {
    printf ("{\"ok\":true,\"export\":");
    json_str (stdout, exportname);
    printf (",\"disk_size\":%" PRId64 ",\"changed_bytes\":%" PRIu64
            ",\"extents\":[", size, changed);
    for (i = 0; i < n; ++i)
      printf ("%s{\"offset\":%" PRIu64 ",\"length\":%" PRIu64
              ",\"type\":%u,\"changed\":%s,\"zero\":%s}", i ? "," : "",
              v[i].offset, v[i].length, v[i].type,
              v[i].type != LIBNBD_STATE_HOLE ? "true" : "false",
              (v[i].type & LIBNBD_STATE_ZERO) ? "true" : "false");
    printf ("]}\n");
  }
  else {
    char a[32];
    printf ("%14s %14s %4s  %s\n", "OFFSET", "LENGTH", "TYPE",
            "DESCRIPTION");
    for (i = 0; i < n; ++i)
      printf ("%14" PRIu64 " %14" PRIu64 " %4u  %s\n", v[i].offset,
              v[i].length, v[i].type,
              v[i].type == LIBNBD_STATE_HOLE ? "unchanged" :
              v[i].type == LIBNBD_STATE_ZERO ? "changed, reads as zero" :
              v[i].type == 0 ? "changed, data" : "hole,zero");
    printf ("changed: %" PRIu64 " bytes (%s) of %" PRId64 "\n", changed,
            human_size (changed, a, sizeof a), size);
  }
  free (v);
  return EXIT_OK;
}

/* "nbdsnap WHAT list URI": run the list command of filter; its JSON is
 * printed as it is (--json) or by print.
 */
static int
run_list (char **pos, int n, const char *synopsis, const char *exportname,
          const char *filter, void (*print) (struct json_object *))
{
  struct result res;
  int r;

  need_args (n, 1, 1, synopsis);
  check_uri (pos[0]);
  if ((r = do_command (pos[0], exportname, filter, &res)))
    return r;
  if (!opt_json)
    print (res.root);
  result_free (&res);
  return EXIT_OK;
}

/* "nbdsnap WHAT diff URI A [B]": the change map of export two/A/B or
 * one/A.
 */
static int
run_diff (char **pos, int n, const char *what, const char *synopsis,
          const char *two, const char *one)
{
  char ex[256], title[32];

  need_args (n, 2, 3, synopsis);
  check_uri (pos[0]);
  check_name (what, pos[1]);
  if (n == 3) {
    check_name (what, pos[2]);
    snprintf (ex, sizeof ex, "%s/%s/%s", two, pos[1], pos[2]);
  }
  else
    snprintf (ex, sizeof ex, "%s/%s", one, pos[1]);
  snprintf (title, sizeof title, "%s diff", what);
  return show_map (pos[0], ex, title);
}

/*------------------------------------------------------------ snapshot --*/

/* Remove every argv[i] (i >= 1, before a "--") equal to flag, setting
 * *set if there was one; returns the new argc.
 */
static int
take_flag (int argc, char **argv, const char *flag, bool *set)
{
  int i, j;

  for (i = j = 1; i < argc; ++i) {
    if (strcmp (argv[i], "--") == 0) {
      while (i < argc)
        argv[j++] = argv[i++];
      break;
    }
    if (strcmp (argv[i], flag) == 0)
      *set = true;
    else
      argv[j++] = argv[i];
  }
  argv[j] = NULL;
  return j;
}

/* The table of "nbdsnap snapshot list". */
static void
print_snapshots (struct json_object *doc)
{
  struct json_object *s, *live;
  const char *parent;
  char a[32];
  uint64_t bytes;
  bool merging;
  size_t i;

  printf ("%-24s %-24s %-21s %8s\n", "NAME", "PARENT", "CREATED", "BYTES");
  for (i = 0; i < jlen (doc, "snapshots"); ++i) {
    s = jat (doc, "snapshots", i);
    parent = jstr (s, "parent");
    bytes = 0;
    jnum (s, "bytes", &bytes);
    merging = false;
    jbool (s, "merging", &merging);
    printf ("%-24s %-24s %-21s %8s%s\n", str_or_empty (jstr (s, "name")),
            parent ? parent : "-", str_or_empty (jstr (s, "created")),
            human_size (bytes, a, sizeof a),
            merging ? "  (deleted, merging)" : "");
  }
  live = jget (doc, "live");
  if (live) {
    parent = jstr (live, "parent");
    bytes = 0;
    jnum (live, "bytes", &bytes);
    printf ("%-24s %-24s %-21s %8s\n", "(live disk)", parent ? parent : "-",
            "", human_size (bytes, a, sizeof a));
  }
}

/* nbdsnap snapshot create|list|revert|delete|diff URI ... */
int
cmd_snapshot (int argc, char **argv)
{
  char *pos[4], ex[256];
  bool force = false, checkpoint = false;
  const char *verb;
  struct result res;
  struct quiesce q;
  int n, r;

  if (argc < 2)
    usage_error ("usage: nbdsnap snapshot create|list|revert|delete|diff "
                 "URI ...");
  verb = argv[1];
  if (strcmp (verb, "create") == 0)
    argc = take_flag (argc, argv, "--checkpoint", &checkpoint);
  argc--;
  quiesce_options (&argc, argv + 1, &q, "snapshot");
  if (quiesce_wanted (&q) && strcmp (verb, "create"))
    usage_error ("snapshot %s: --freeze-cmd/--thaw-cmd are for create",
                 verb);
  n = parse_args (argc, argv + 1,
                  strcmp (verb, "revert") == 0 ? &force : NULL, NULL, pos, 4);
  if (strcmp (verb, "list") == 0)
    return run_list (pos, n, "snapshot list URI", "@snapshot:list",
                     "snapshot", print_snapshots);
  if (strcmp (verb, "diff") == 0)
    return run_diff (pos, n, "snapshot", "snapshot diff URI BASE [NAME]",
                     "@snapshot:diff", "@snapshot:diff");
  if (strcmp (verb, "create") && strcmp (verb, "revert") &&
      strcmp (verb, "delete"))
    usage_error ("snapshot: unknown action '%s' (create, list, revert, "
                 "delete, diff)", verb);
  if (n != 2)
    usage_error ("usage: nbdsnap snapshot %s URI NAME%s", verb,
                 strcmp (verb, "revert") == 0 ? " [--force]" :
                 strcmp (verb, "create") == 0 ? " [--checkpoint]" : "");
  check_uri (pos[0]);
  check_name ("snapshot", pos[1]);
  /* --checkpoint: the cbt filter makes both at one instant. */
  if (checkpoint)
    snprintf (ex, sizeof ex, "@cbt:create/%s/snapshot", pos[1]);
  else
    snprintf (ex, sizeof ex, "@snapshot:%s/%s%s", verb, pos[1],
              force ? "/force" : "");
  if ((r = quiesced_command (&q, pos[0], pos[1], ex,
                             checkpoint ? "cbt" : "snapshot", &res)))
    return r;
  if (!opt_json) {
    if (checkpoint)
      printf ("snapshot '%s' and checkpoint '%s' created at one instant\n",
              pos[1], pos[1]);
    else if (strcmp (verb, "create") == 0)
      printf ("snapshot '%s' created\n", pos[1]);
    else if (strcmp (verb, "revert") == 0) {
      uint64_t d = 0;
      char a[32];
      jnum (res.root, "discarded_bytes", &d);
      printf ("live disk reverted to snapshot '%s' (%s discarded)\n",
              pos[1], human_size (d, a, sizeof a));
    }
    else
      printf ("snapshot '%s' deleted\n", pos[1]);
  }
  result_free (&res);
  return EXIT_OK;
}

/*---------------------------------------------------------- checkpoint --*/

/* The table of "nbdsnap checkpoint list". */
static void
print_checkpoints (struct json_object *doc)
{
  struct json_object *c;
  char a[32];
  uint64_t bytes, gran = 0;
  bool consistent;
  size_t i;

  jnum (doc, "granularity", &gran);
  printf ("%-24s %-21s %-10s %10s\n", "NAME", "CREATED", "CONSISTENT",
          "CHANGED");
  for (i = 0; i < jlen (doc, "checkpoints"); ++i) {
    c = jat (doc, "checkpoints", i);
    consistent = false;
    jbool (c, "consistent", &consistent);
    bytes = 0;
    jnum (c, "dirty_bytes", &bytes);
    printf ("%-24s %-21s %-10s %10s\n", str_or_empty (jstr (c, "name")),
            str_or_empty (jstr (c, "created")),
            consistent ? "yes" : "NO", human_size (bytes, a, sizeof a));
  }
  if (gran)
    printf ("(granularity %s, cbt-sync=%s)\n", human_size (gran, a, sizeof a),
            str_or_empty (jstr (doc, "sync")));
}

/* nbdsnap checkpoint create|list|delete|diff URI ... */
int
cmd_checkpoint (int argc, char **argv)
{
  char *pos[4], ex[256];
  const char *verb;
  struct result res;
  struct quiesce q;
  int n, r;

  if (argc < 2)
    usage_error ("usage: nbdsnap checkpoint create|list|delete|diff URI ...");
  verb = argv[1];
  argc--;
  quiesce_options (&argc, argv + 1, &q, "checkpoint");
  if (quiesce_wanted (&q) && strcmp (verb, "create"))
    usage_error ("checkpoint %s: --freeze-cmd/--thaw-cmd are for create",
                 verb);
  n = parse_args (argc, argv + 1, NULL, NULL, pos, 4);
  if (strcmp (verb, "list") == 0)
    return run_list (pos, n, "checkpoint list URI", "@cbt:list", "cbt",
                     print_checkpoints);
  if (strcmp (verb, "diff") == 0)
    return run_diff (pos, n, "checkpoint",
                     "checkpoint diff URI SINCE [UNTIL]",
                     "@cbt:diff", "@cbt");
  if (strcmp (verb, "create") && strcmp (verb, "delete"))
    usage_error ("checkpoint: unknown action '%s' (create, list, delete, "
                 "diff)", verb);
  if (n != 2)
    usage_error ("usage: nbdsnap checkpoint %s URI NAME", verb);
  check_uri (pos[0]);
  check_name ("checkpoint", pos[1]);
  snprintf (ex, sizeof ex, "@cbt:%s/%s", verb, pos[1]);
  if ((r = quiesced_command (&q, pos[0], pos[1], ex, "cbt", &res)))
    return r;
  if (!opt_json) {
    if (strcmp (verb, "create") == 0)
      printf ("checkpoint '%s' created\n", pos[1]);
    else {
      const char *into = jstr (res.root, "merged_into");
      if (into == NULL || into[0] == '\0')
        printf ("checkpoint '%s' deleted\n", pos[1]);
      else
        printf ("checkpoint '%s' deleted (its changes now count for "
                "'%s')\n", pos[1], into);
    }
  }
  result_free (&res);
  return EXIT_OK;
}

/*-------------------------------------------------------------- freeze --*/

/* One row of "nbdsnap freeze list". */
static void
print_point (struct json_object *p)
{
  char a[32];
  uint64_t scratch = 0;
  bool cp = false, aborted = false;

  jbool (p, "checkpoint", &cp);
  jbool (p, "aborted", &aborted);
  jnum (p, "scratch_bytes", &scratch);
  printf ("%-24s %-21s %-10s %10s  %s%s\n", str_or_empty (jstr (p, "name")),
          str_or_empty (jstr (p, "created")), cp ? "yes" : "no",
          human_size (scratch, a, sizeof a), aborted ? "ABORTED: " : "",
          aborted ? str_or_empty (jstr (p, "error")) : "");
}

/* The table of "nbdsnap freeze list". */
static void
print_points (struct json_object *doc)
{
  size_t i;

  printf ("%-24s %-21s %-10s %10s\n", "NAME", "CREATED", "CHECKPOINT",
          "SCRATCH");
  for (i = 0; i < jlen (doc, "points"); ++i)
    print_point (jat (doc, "points", i));
}

/* nbdsnap freeze begin|list|end URI ... */
int
cmd_freeze (int argc, char **argv)
{
  char *pos[4], ex[256];
  const char *verb;
  struct result res;
  int n, r;

  if (argc < 2)
    usage_error ("usage: nbdsnap freeze begin|list|end URI ...");
  verb = argv[1];
  n = parse_args (argc - 1, argv + 1, NULL, NULL, pos, 4);
  if (strcmp (verb, "list") == 0)
    return run_list (pos, n, "freeze list URI", "@freeze:list", "freeze",
                     print_points);
  if (strcmp (verb, "begin") && strcmp (verb, "end"))
    usage_error ("freeze: unknown action '%s' (begin, list, end)", verb);
  if (n != 2)
    usage_error ("usage: nbdsnap freeze %s URI NAME", verb);
  check_uri (pos[0]);
  check_name ("frozen point", pos[1]);
  snprintf (ex, sizeof ex, "@freeze:%s/%s", verb, pos[1]);
  if ((r = do_command (pos[0], ex, "freeze", &res)))
    return r;
  if (!opt_json) {
    if (strcmp (verb, "begin") == 0) {
      bool cp = false;
      jbool (jget (res.root, "point"), "checkpoint", &cp);
      printf ("frozen point '%s' held%s; read it as export @freeze/%s, "
              "release it with: nbdsnap freeze end URI %s\n", pos[1],
              cp ? " (with checkpoint)" : "", pos[1], pos[1]);
    }
    else
      printf ("frozen point '%s' released\n", pos[1]);
  }
  result_free (&res);
  return EXIT_OK;
}
