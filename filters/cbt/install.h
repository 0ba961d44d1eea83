/* nbdsnap cbt filter: installing a checkpoint chain made elsewhere
 * (install.c; docs/interface.md section 10, docs/cbt-format.md
 * section 9).
 */
#ifndef NBDSNAP_CBT_INSTALL_H
#define NBDSNAP_CBT_INSTALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "command.h"

/* Open @cbt:upload/COUNT: stage a new, zeroed upload for COUNT
 * checkpoints at the tracker's geometry (replacing one staged before).
 * -1 with a reason in why (bad COUNT, too big, another upload open, out
 * of memory).
 */
int upload_open (const char *count, char *why, size_t whylen)
  __attribute__ ((nonnull (1, 2)));
/* The upload handle closes: the staged bytes stay for the install. */
void upload_close (void);
/* Drop the staged upload (at unload). */
void upload_free (void);
/* Its size in bytes. */
int64_t upload_size (void);
/* Read or write the staged bytes.  -1 with *err set. */
int upload_rw (void *buf, uint32_t count, uint64_t offset, bool write,
               int *err)
  __attribute__ ((nonnull (1, 5)));

/* @cbt:install/SUM[/replace] (how: NULL or "replace"): check the staged
 * upload against SUM and install its chain, atomically.
 */
int tracker_cmd_install (struct command *cmd, const char *sum,
                         const char *how)
  __attribute__ ((nonnull (1, 2)));

#endif /* NBDSNAP_CBT_INSTALL_H */
