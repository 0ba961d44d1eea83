/* libFuzzer harness: the 80-byte header of binary state files
 * (common/binhdr.c), which guards the snapshot filter's layer maps and
 * the cbt filter's bitmaps.  First byte: mode (bit 0: seal the rest
 * first, so the checksum matches; bit 1: allow unsealed files).
 */
#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "binhdr.h"

int LLVMFuzzerTestOneInput (const unsigned char *data, size_t size);

int
LLVMFuzzerTestOneInput (const unsigned char *data, size_t size)
{
  struct binhdr h;
  uint8_t *file;
  size_t len;
  char why[256];
  bool sealed;

  if (size < 1)
    return 0;
  len = size - 1;
  file = malloc (len ? len : 1);
  if (file == NULL)
    return 0;
  memcpy (file, data + 1, len);
  if ((data[0] & 1) && len >= BINHDR_SIZE)
    binhdr_seal (file, len);
  /* A layer map, or else a cbt bitmap. */
  if (binhdr_check (file, len, len >= 8 && file[7] == 'B' ? "NBDSNAPB"
                    : "NBDSNAPM", 1, data[0] & 2, "f", "map", &h,
                    &sealed, why, sizeof why) == 0) {
    if (h.payload_len != len - BINHDR_SIZE)
      abort ();
  }
  else if (why[0] == '\0')
    abort ();
  free (file);
  return 0;
}
