/* nbdsnap filters: the one disk a filter keeps state for.
 *
 * The snapshot, cbt and freeze filters keep one history: one chain of
 * layers, one set of bitmaps, one set of frozen points.  A plugin that
 * serves several disks under several export names (file dir=, nbd with
 * dynamic-export=true) would mix them, so a filter binds to the export
 * name of the first connection that uses the disk and refuses every
 * other name.  Views and commands read the disk through the bound name
 * (binding "", the default export, when nothing is bound yet).
 */
#ifndef NBDSNAP_DISKNAME_H
#define NBDSNAP_DISKNAME_H

#include <pthread.h>

struct disk_name {
  pthread_mutex_t lock;
  char *name;                   /* NULL until bound; then never changes */
};

#define DISK_NAME_INIT { PTHREAD_MUTEX_INITIALIZER, NULL }

/* A live connection opens exportname: bind to it if nothing is bound.
 * -1 after nbdkit_error (naming the filter) if another disk is bound.
 */
int disk_name_bind (struct disk_name *d, const char *exportname,
                    const char *filter)
  __attribute__ ((nonnull (1, 2, 3)));

/* The bound name (binding "" if nothing is bound yet), for views and
 * commands that read the disk below.  NULL after nbdkit_error if out of
 * memory.  The string lives until disk_name_free.
 */
const char *disk_name_get (struct disk_name *d, const char *filter)
  __attribute__ ((nonnull (1, 2)));

/* Forget the name (unload). */
void disk_name_free (struct disk_name *d) __attribute__ ((nonnull (1)));

#endif /* NBDSNAP_DISKNAME_H */
