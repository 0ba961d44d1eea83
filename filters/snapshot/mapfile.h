/* nbdsnap snapshot filter: the bytes of a layer's map file (format 4,
 * docs/snapshot-format.md section 6; format 3 is read too).
 */
#ifndef NBDSNAP_SNAPSHOT_MAPFILE_H
#define NBDSNAP_SNAPSHOT_MAPFILE_H

#include <stddef.h>
#include <stdint.h>

#include "geom.h"
#include "layer.h"

/* Encode l's map as it is now into a new *buf of *len bytes, the
 * header left for the caller (BINHDR_SIZE bytes of zeroes).  Blocks
 * marked while it runs may be left out; none marked before.  A partial
 * block whose mask has filled up is written as DATA.  -1 and errno.
 */
int map_encode (struct layer *l, const struct geom *g, uint8_t **buf,
                size_t *len)
  __attribute__ ((nonnull (1, 2, 3, 4)));

/* Decode the len bytes of entries at p (a map of format version, whose
 * header was checked) into l's states and sector masks, validating
 * every entry against g.  -1 with a reason in why.
 */
int map_decode (struct layer *l, const struct geom *g, uint32_t version,
                const uint8_t *p, size_t len, const char *name,
                char *why, size_t whylen)
  __attribute__ ((nonnull (1, 2, 6, 7)));

#endif /* NBDSNAP_SNAPSHOT_MAPFILE_H */
