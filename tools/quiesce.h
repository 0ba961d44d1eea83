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

#include "repo.h"

/* The checkpoints that may go: names of points of the repository whose
 * checkpoints the chain no longer needs.
 */
struct prune_plan {
  char (*names)[REPO_NAME_MAX + 1];
  size_t n;
};

/* Decide, from the repository alone (and, for a backup about to commit,
 * its new point newpoint with parent newparent, "" for a full one, as
 * the newest): keep the checkpoints of the keep newest points (keep >=
 * 1), the bases of the differentials among them, and those of points a
 * backup in progress holds.  -1 on failure (err).
 */
int prune_plan (struct repo *repo, unsigned keep, const char *newpoint,
                const char *newparent, struct prune_plan *plan,
                char *err, size_t errlen)
  __attribute__ ((nonnull (1, 5, 6)));
/* Delete the planned checkpoints the server has (none while it holds a
 * frozen point; nothing is asked of the server if the plan is empty).
 * dry_run: only say.  Lines "deleted checkpoint 'NAME'" (or "would
 * delete") on stdout unless quiet; names (if not NULL): the deleted
 * ones as comma separated JSON strings.  Returns the number deleted, -1
 * on failure (err; the others are still tried).
 */
int prune_run (const char *uri, const struct prune_plan *plan, bool dry_run,
               bool quiet, char *names, size_t nlen, char *err,
               size_t errlen)
  __attribute__ ((nonnull (1, 2, 7)));
void prune_plan_free (struct prune_plan *plan) __attribute__ ((nonnull));

/* --keep-checkpoints N from argv (taken out); *keep unchanged if absent.
 * 0 means no pruning.
 */
void keep_option (int *argc, char **argv, unsigned *keep)
  __attribute__ ((nonnull));

/* nbdsnap prune URI REPO [--keep-checkpoints N] [--dry-run] */
int cmd_prune (int argc, char **argv);

#endif /* NBDSNAP_QUIESCE_H */
