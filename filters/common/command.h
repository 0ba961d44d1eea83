/* nbdsnap filters: commands (exports whose opening performs an action and
 * whose content is a JSON result), and names passed to filters below.
 */
#ifndef NBDSNAP_COMMAND_H
#define NBDSNAP_COMMAND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "json.h"

struct command {
  const char *filter;           /* "snapshot", "cbt", "freeze" */
  const char *verb;
  struct jbuf body;             /* result members after "ok":true */
  const char *ename;            /* on failure: errno name */
  char why[512];                /* on failure: message */
};

/* May this client run the command?  A command that changes state needs a
 * writable server and a client the policy allows.  0 if yes, else -1
 * with cmd->ename and cmd->why set.
 */
int command_allowed (struct command *cmd, bool mutating, unsigned policy,
                     int readonly, int is_tls)
  __attribute__ ((nonnull (1)));

/* Fail the command: set cmd->ename (an errno name such as "ENOENT") and
 * cmd->why (printf-style).  Returns -1, so that a verb can end with
 * "return command_fail (c, ...);".
 */
int command_fail (struct command *cmd, const char *ename, const char *fmt,
                  ...)
  __attribute__ ((format (printf, 3, 4), nonnull (1, 2, 3)));

/* Fail the command for a failed system call: the errno name of e (see
 * command_errno_name), the message followed by ": " and strerror (e),
 * and, when e says nbdkit ran out of descriptors (EMFILE, ENFILE), which
 * limit to raise.  Returns -1.
 */
int command_fail_errno (struct command *cmd, int e, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4), nonnull (1, 3)));

/* The errno name a command reports for a failed system call: ENOSPC
 * (also for EDQUOT), EROFS, ENOMEM, else EIO.
 */
const char *command_errno_name (int e);

/* The arguments do not fit the verb (EINVAL); manpage names the page. */
void command_bad_args (struct command *cmd, const char *manpage)
  __attribute__ ((nonnull (1, 2)));

/* Build the JSON result of a command that returned r (0 = ok) into a
 * malloc'd *out of *len bytes (NULL on ENOMEM).  Frees cmd->body.
 */
void command_finish (struct command *cmd, int r, char **out, size_t *len)
  __attribute__ ((nonnull (1, 3, 4)));

/* Read from a command's result document. */
int command_pread (const char *json, size_t json_len, void *buf,
                   uint32_t count, uint64_t offset, int *err);

/* An @name for another filter was passed down: did a filter below
 * understand it?  (nbdsnap views and commands describe themselves with
 * "nbdsnap:".)  -1 after nbdkit_error if not.
 */
int command_check_below (nbdkit_next *next, const char *filter)
  __attribute__ ((nonnull (1, 2)));

/* The size of the disk below (its default export), through a shared
 * context of backend (from .config or .after_fork).  -1 after
 * nbdkit_error.
 */
int64_t disk_below_size (nbdkit_backend *backend, const char *filter)
  __attribute__ ((nonnull (1, 2)));

/* The same for the export called exportname (the disk a filter is bound
 * to: see diskname.h).
 */
int64_t disk_below_size_of (nbdkit_backend *backend, const char *exportname,
                            const char *filter)
  __attribute__ ((nonnull (1, 2, 3)));

#endif /* NBDSNAP_COMMAND_H */
