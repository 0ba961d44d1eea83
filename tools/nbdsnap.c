/* nbdsnap: snapshots, checkpoints, backups and restores of any nbdkit
 * plugin, over NBD.  See nbdsnap(1) (tools/nbdsnap.pod).
 *
 * This file: main, global options, help, dispatch to the subcommands
 * (see nbdsnap.h for where each lives).
 *
 * Exit codes: 0 success; 1 refused, damaged or failed; 2 usage error or
 * no connection to the server.
 */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "nbdsnap.h"
#include "quiesce.h"

/* The summary of --help. */
static void
usage (FILE *fp)
{
  fprintf (fp,
"nbdsnap - snapshots, checkpoints and incremental backups of nbdkit disks\n"
"\n"
"Usage: nbdsnap [--json] [-v] COMMAND ARGS...\n"
"\n"
"Backups (URI = the live disk of an nbdkit server with the freeze filter,\n"
"and the cbt filter for incrementals; REPO = a backup repository):\n"
"  backup URI REPO [--full | --incremental [--since POINT]] [--name NAME]\n"
"                  [--until CHECKPOINT]  (a past instant, from its snapshot)\n"
"                  [--compress] [--connections N] [--block-size N]\n"
"                  [--progress | --no-progress] [--keep-checkpoints N]\n"
"                  [--freeze-cmd CMD] [--thaw-cmd CMD] [--quiesce-timeout S]\n"
"  prune URI REPO [--keep-checkpoints N] [--dry-run]\n"
"  restore REPO POINT -o FILE|DEVICE|URI [--connections N] [--progress]\n"
"  verify REPO [POINT]\n"
"  list REPO\n"
"  delete REPO POINT\n"
"  merge REPO POINT\n"
"  init REPO [--block-size N]\n"
"\n"
"Migration (both URIs live disks; the source with the freeze filter):\n"
"  migrate SRC-URI DST-URI [--name NAME] [--since NAME] [--replace]\n"
"                  [--snapshots]\n"
"                  [--connections N] [--progress | --no-progress]\n"
"\n"
"Server management (through the filters' command exports):\n"
"  snapshot create|revert|delete URI NAME    (revert: [--force])\n"
"  snapshot create URI NAME --checkpoint     (and checkpoint NAME, one instant)\n"
"  snapshot list URI\n"
"  snapshot diff URI BASE [NAME]\n"
"  checkpoint create|delete URI NAME\n"
"  (snapshot/checkpoint create: [--freeze-cmd CMD] [--thaw-cmd CMD]\n"
"                                [--quiesce-timeout S])\n"
"  checkpoint list URI\n"
"  checkpoint diff URI SINCE [UNTIL]\n"
"  freeze begin|end URI NAME\n"
"  freeze list URI\n"
"\n"
"Options: --json (machine-readable output), -v (verbose), --help, --version\n"
"Exit status: 0 ok, 1 refused/damaged/failed, 2 usage or connection error.\n"
"See nbdsnap(1).\n");
}

/*---------------------------------------------------------------- main --*/

/* The subcommands. */
static const struct {
  const char *name;
  int (*fn) (int argc, char **argv);
} commands[] = {
  { "backup", cmd_backup },
  { "restore", cmd_restore },
  { "verify", cmd_verify },
  { "list", cmd_list },
  { "delete", cmd_delete },
  { "merge", cmd_merge },
  { "init", cmd_init },
  { "prune", cmd_prune },
  { "snapshot", cmd_snapshot },
  { "checkpoint", cmd_checkpoint },
  { "freeze", cmd_freeze },
  { "migrate", cmd_migrate },
};

/* Global options, then the subcommand with its own arguments. */
int
main (int argc, char **argv)
{
  int i;
  size_t k;

  for (i = 1; i < argc && argv[i][0] == '-'; ++i) {
    if (strcmp (argv[i], "--json") == 0)
      opt_json = true;
    else if (strcmp (argv[i], "-v") == 0 || strcmp (argv[i], "--verbose") == 0)
      opt_verbose++;
    else if (strcmp (argv[i], "--help") == 0 || strcmp (argv[i], "-h") == 0) {
      usage (stdout);
      return EXIT_OK;
    }
    else if (strcmp (argv[i], "--version") == 0 ||
             strcmp (argv[i], "-V") == 0) {
      struct nbd_handle *h = nbd_create ();
      const char *lv = h ? nbd_get_version (h) : NULL;
      printf ("nbdsnap %s (libnbd %s)\n", PACKAGE_VERSION, lv ? lv : "?");
      nbd_close (h);
      return EXIT_OK;
    }
    else
      usage_error ("unknown option '%s'", argv[i]);
  }
  if (i == argc) {
    usage (stderr);
    return EXIT_USAGE;
  }
  if (strcmp (argv[i], "help") == 0) {
    usage (stdout);
    return EXIT_OK;
  }
  for (k = 0; k < sizeof commands / sizeof commands[0]; ++k)
    if (strcmp (argv[i], commands[k].name) == 0)
      return commands[k].fn (argc - i, argv + i);
  usage_error ("unknown command '%s'", argv[i]);
}
