/* nbdsnap filters: the one disk a filter keeps state for. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "diskname.h"
#include "lockscope.h"

/* Bind d to name if unbound (d->lock held).  -1 if out of memory. */
static int
bind_locked (struct disk_name *d, const char *name, const char *filter)
{
  if (d->name)
    return 0;
  d->name = strdup (name);
  if (d->name == NULL) {
    nbdkit_error ("%s: out of memory", filter);
    return -1;
  }
  nbdkit_debug ("%s: serving the disk of export \"%s\"", filter, name);
  return 0;
}

int
disk_name_bind (struct disk_name *d, const char *exportname,
                const char *filter)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&d->lock);

  if (bind_locked (d, exportname, filter) == -1)
    return -1;
  if (strcmp (d->name, exportname) != 0) {
    nbdkit_error ("%s: export \"%s\" is refused: this %s filter keeps the "
                  "history of one disk, export \"%s\" (a plugin that serves "
                  "several disks needs one nbdkit per disk)", filter,
                  exportname, filter, d->name);
    return -1;
  }
  return 0;
}

const char *
disk_name_get (struct disk_name *d, const char *filter)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&d->lock);

  if (bind_locked (d, "", filter) == -1)
    return NULL;
  return d->name;
}

void
disk_name_free (struct disk_name *d)
{
  free (d->name);
  d->name = NULL;
}
