/* nbdsnap tool: quiesce hooks (quiesce.c) and checkpoint retention
 * (prune.c).
 *
 * Quiesce: --freeze-cmd CMD runs (/bin/sh -c CMD) right before the
 * frozen point (or snapshot, or checkpoint) is made, --thaw-cmd CMD right
 * after the command that makes it returned, whatever happened: the thaw
 * is owed as soon as the freeze command was started.
 *
 * Retention: which of the server's checkpoints a repository's chain still
 * needs, and deleting the others (nbdsnap prune; nbdsnap backup after a
 * successful backup).
 */
#ifndef NBDSNAP_QUIESCE_H
#define NBDSNAP_QUIESCE_H

#include <stdbool.h>
#include <stddef.h>

#define QUIESCE_DEFAULT_TIMEOUT 60      /* seconds, per hook */
#define DEFAULT_KEEP_CHECKPOINTS 7       /* a week of nightly backups */

/*------------------------------------------------------------ quiesce.c --*/

struct quiesce {
  const char *freeze_cmd, *thaw_cmd;    /* NULL: none */
  unsigned timeout;                     /* seconds, per hook */
  /* for the hooks' environment */
  const char *operation;                /* "backup", "snapshot", ... */
  const char *uri, *point;
  bool thaw_owed;                       /* the freeze command was started */
};

/* Remove the option --name VALUE (or --name=VALUE) from argv[1..*argc-1]
 * (up to a "--"), shifting the rest down.  Returns its value (the last
 * one if given more than once), NULL if absent; usage error if the value
 * is missing.
 */
char *take_option (int *argc, char **argv, const char *name)
  __attribute__ ((nonnull));

/* Take --freeze-cmd, --thaw-cmd and --quiesce-timeout out of argv into
 * q (usage error on a bad value); q->operation = operation.
 */
void quiesce_options (int *argc, char **argv, struct quiesce *q,
                      const char *operation)
  __attribute__ ((nonnull));

/* Is a hook configured? */
bool quiesce_wanted (const struct quiesce *q) __attribute__ ((nonnull));

/* Run the freeze command (nothing if there is none).  0: it exited 0;
 * -1: it failed, timed out or a signal came, err says which, and the
 * thaw command has run already (its failure is added to err).
 */
int quiesce_freeze (struct quiesce *q, char *err, size_t errlen)
  __attribute__ ((nonnull));

/* Run the thaw command if it is owed (made: the operation made its
 * point, for NBDSNAP_RESULT).  0 ok or nothing to do; -1 it failed,
 * err says how.
 */
int quiesce_thaw (struct quiesce *q, bool made, char *err, size_t errlen)
  __attribute__ ((nonnull));

/*-------------------------------------------------------------- prune.c --*/

struct repo;

/* Delete the server's checkpoints that the repository made and no longer
 * needs, keeping those of its keep newest points (keep >= 1) and the
 * bases of differentials and of backups in progress.  dry_run: only say
 * what would go.  Lines "deleted checkpoint NAME" (or "would delete")
 * are printed on stdout unless quiet; with names != NULL the deleted
 * names are also appended there, comma separated JSON strings.
 * Returns the number deleted, -1 on failure (err).
 */
int prune_checkpoints (const char *uri, struct repo *repo, unsigned keep,
                       bool dry_run, bool quiet, char *names, size_t nlen,
                       char *err, size_t errlen)
  __attribute__ ((nonnull (1, 2, 8)));

/* --keep-checkpoints N from argv (taken out); *keep unchanged if absent.
 * 0 means no pruning.
 */
void keep_option (int *argc, char **argv, unsigned *keep)
  __attribute__ ((nonnull));

/* nbdsnap prune URI REPO [--keep-checkpoints N] [--dry-run] */
int cmd_prune (int argc, char **argv);

#endif /* NBDSNAP_QUIESCE_H */
