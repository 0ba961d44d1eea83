/* nbdsnap tool: the repository subcommands.
 *
 *   nbdsnap init REPO [--block-size N]
 *   nbdsnap list REPO
 *   nbdsnap verify REPO [POINT]
 *   nbdsnap delete REPO POINT
 *   nbdsnap merge REPO POINT
 *
 * Each works on the repository directory alone (repo/repo.h); no server.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbdsnap.h"
#include "repo.h"

/* repo_open with the error printed. */
struct repo *
open_repo (const char *dir)
{
  char err[ERRLEN];
  struct repo *r = repo_open (dir, err, sizeof err);

  if (r == NULL)
    fail (EXIT_FAILED, "%s", err);
  return r;
}

/* nbdsnap init REPO [--block-size N]: a new, empty repository. */
int
cmd_init (int argc, char **argv)
{
  char *pos[1], err[ERRLEN];
  uint64_t bs = 0;

  if (parse_args (argc, argv, NULL, &bs, pos, 1) != 1)
    usage_error ("usage: nbdsnap init REPO [--block-size N]");
  if (repo_init (pos[0], (uint32_t) bs, err, sizeof err) == -1)
    return fail (EXIT_FAILED, "%s", err);
  if (opt_json) {
    struct repo *r = repo_open (pos[0], err, sizeof err);
    printf ("{\"ok\":true,\"repository\":");
    json_str (stdout, pos[0]);
    printf (",\"block_size\":%u}\n", r ? repo_block_size (r) : 0);
    if (r)
      repo_close (r);
  }
  else
    printf ("initialized repository %s\n", pos[0]);
  return EXIT_OK;
}

/* nbdsnap list REPO: its points, oldest first. */
int
cmd_list (int argc, char **argv)
{
  char *pos[1], err[ERRLEN], a[32], c[32], t[40];
  struct repo *r;
  struct repo_point_info *v = NULL;
  size_t n = 0, i;

  if (parse_args (argc, argv, NULL, NULL, pos, 1) != 1)
    usage_error ("usage: nbdsnap list REPO");
  if ((r = open_repo (pos[0])) == NULL)
    return EXIT_FAILED;
  if (repo_list (r, &v, &n, err, sizeof err) == -1) {
    repo_close (r);
    return fail (EXIT_FAILED, "%s", err);
  }
  if (opt_json) {
    printf ("{\"ok\":true,\"repository\":");
    json_str (stdout, pos[0]);
    printf (",\"block_size\":%u,\"points\":[", repo_block_size (r));
    for (i = 0; i < n; ++i) {
      printf ("%s{\"name\":", i ? "," : "");
      json_str (stdout, v[i].name);
      printf (",\"kind\":");
      json_str (stdout, v[i].kind);
      printf (",\"parent\":");
      json_str (stdout, v[i].parent[0] ? v[i].parent : NULL);
      printf (",\"since\":");
      json_str (stdout, v[i].since[0] ? v[i].since : NULL);
      printf (",\"disk_size\":%" PRIu64 ",\"blocks\":%" PRIu64
              ",\"stored_bytes\":%" PRIu64 ",\"compressed\":%s"
              ",\"created\":\"%s\"}", v[i].disk_size, v[i].blocks,
              v[i].stored_bytes, v[i].compressed ? "true" : "false",
              rfc3339 (v[i].created, t, sizeof t));
    }
    printf ("]}\n");
  }
  else {
    printf ("%-24s %-11s %-24s %8s %9s %8s  %s\n", "NAME", "KIND", "PARENT",
            "SIZE", "BLOCKS", "STORED", "CREATED");
    for (i = 0; i < n; ++i)
      printf ("%-24s %-11s %-24s %8s %9" PRIu64 " %8s  %s%s\n", v[i].name,
              v[i].kind, v[i].parent[0] ? v[i].parent : "-",
              human_size (v[i].disk_size, a, sizeof a), v[i].blocks,
              human_size (v[i].stored_bytes, c, sizeof c),
              rfc3339 (v[i].created, t, sizeof t),
              v[i].compressed ? "  zstd" : "");
  }
  free (v);
  repo_close (r);
  return EXIT_OK;
}

/* What verify has printed so far. */
struct verify_out {
  int lines;
};

/* Print one problem verify found (a JSON string, or a DAMAGED: line). */
static void
verify_report (const char *line, void *opaque)
{
  struct verify_out *o = opaque;

  if (opt_json) {
    printf ("%s", o->lines ? "," : "");
    json_str (stdout, line);
  }
  else
    printf ("DAMAGED: %s\n", line);
  fflush (stdout);
  o->lines++;
}

/* nbdsnap verify REPO [POINT]: every block's SHA-256 (of POINT's chain,
 * or of every point).
 */
int
cmd_verify (int argc, char **argv)
{
  char *pos[2], err[ERRLEN];
  struct repo *r;
  struct verify_out o = { 0 };
  int n, problems, cleaned, verr;

  n = parse_args (argc, argv, NULL, NULL, pos, 2);
  if (n < 1)
    usage_error ("usage: nbdsnap verify REPO [POINT]");
  if ((r = open_repo (pos[0])) == NULL)
    return EXIT_FAILED;
  if (n == 2 &&
      repo_point_get (r, pos[1], &(struct repo_point_info) { 0 }, err,
                      sizeof err) == -1) {
    repo_close (r);
    return fail (EXIT_FAILED, "%s", err);
  }
  cleaned = repo_clean_tmp (r, err, sizeof err);
  if (cleaned > 0)
    msg ("removed %d leftover temporary point(s) of interrupted backups",
         cleaned);
  else if (cleaned < 0)
    msg ("%s", err);            /* counted as a problem below */
  if (opt_json)
    printf ("{\"problems_found\":[");
  problems = repo_verify (r, n == 2 ? pos[1] : NULL, verify_report, &o);
  verr = errno;
  repo_close (r);
  if (cleaned < 0 && problems >= 0) {
    if (opt_json) {             /* one more entry of problems_found */
      printf ("%s", o.lines ? "," : "");
      json_str (stdout, err);
    }
    problems++;
  }
  if (opt_json) {
    printf ("],\"ok\":%s,\"problems\":%d}\n",
            problems == 0 ? "true" : "false", problems < 0 ? -1 : problems);
  }
  if (problems < 0) {
    msg ("%s: verification could not run: %s", pos[0], strerror (verr));
    return EXIT_FAILED;
  }
  if (problems > 0) {
    msg ("%s%s%s: %d problem(s) found", pos[0], n == 2 ? " point " : "",
         n == 2 ? pos[1] : "", problems);
    return EXIT_FAILED;
  }
  if (!opt_json)
    printf ("%s%s%s: OK (every block's SHA-256 checked)\n", pos[0],
            n == 2 ? " point " : "", n == 2 ? pos[1] : "");
  return EXIT_OK;
}

/* nbdsnap delete|merge REPO POINT: op on one point, done says what
 * happened.
 */
static int
point_op (int argc, char **argv,
          int (*op) (struct repo *, const char *, char *, size_t),
          const char *done)
{
  char *pos[2], err[ERRLEN];
  struct repo *r;
  int res;

  if (parse_args (argc, argv, NULL, NULL, pos, 2) != 2)
    usage_error ("usage: nbdsnap %s REPO POINT", argv[0]);
  if ((r = open_repo (pos[0])) == NULL)
    return EXIT_FAILED;
  res = op (r, pos[1], err, sizeof err);
  repo_close (r);
  if (res == -1)
    return fail (EXIT_FAILED, "%s", err);
  if (opt_json) {
    printf ("{\"ok\":true,\"point\":");
    json_str (stdout, pos[1]);
    printf ("}\n");
  }
  else
    printf ("point '%s' %s\n", pos[1], done);
  return EXIT_OK;
}

/* nbdsnap delete REPO POINT. */
int
cmd_delete (int argc, char **argv)
{
  return point_op (argc, argv, repo_delete, "deleted");
}

/* nbdsnap merge REPO POINT (into its parent). */
int
cmd_merge (int argc, char **argv)
{
  return point_op (argc, argv, repo_merge,
                   "merged with its parent (restoring it gives the same "
                   "disk)");
}

