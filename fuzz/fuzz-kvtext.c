/* libFuzzer harness: the text state-file reader (common/kvtext.c) that
 * reads the snapshot and cbt state files, the repository file and every
 * manifest.  The first byte chooses the mode: even, the input as it is
 * (the sha256 line must already match); odd, the rest of the input with
 * a correct sha256 line appended; the first line is the magic, so that the fuzzer gets past the
 * checksum into the line grammar.  Every value is also fed to the
 * number and field parsers.
 */
#include <config.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvtext.h"

int LLVMFuzzerTestOneInput (const unsigned char *data, size_t size);

int
LLVMFuzzerTestOneInput (const unsigned char *data, size_t size)
{
  struct kv_reader kv;
  char *text, *k, *v, why[256], *fields[8];
  size_t len;
  int r;

  if (size < 1)
    return 0;
  len = size - 1;
  text = malloc (len + KV_SHA_LINE_LEN + 1);
  if (text == NULL)
    return 0;
  memcpy (text, data + 1, len);
  if (data[0] & 1) {
    if (kv_sha_line (text, len, text + len) == -1)
      abort ();
    len += KV_SHA_LINE_LEN;
  }
  /* The first line is taken as the magic, so that real files are seeds. */
  {
    char magic[64];
    size_t m = 0;
    while (m < len && m < sizeof magic - 1 && text[m] != '\n')
      m++;
    memcpy (magic, text, m);
    magic[m] = '\0';
    r = kv_begin (&kv, text, len, magic, why, sizeof why);
  }
  if (r == 0) {
    while ((r = kv_next (&kv, &k, &v, why, sizeof why)) == 1) {
      uint64_t u;
      uint32_t u32;
      int64_t i;
      size_t n;
      if (strlen (k) == 0 || strlen (v) == 0 || v[0] == ' ')
        abort ();
      kv_u64 (v, &u);
      kv_u32 (v, &u32);
      kv_i64 (v, &i);
      for (n = 1; n <= 8; ++n) {
        char *copy = strdup (v);
        if (copy == NULL)
          break;
        if (kv_split (copy, fields, n) == 0)
          for (size_t j = 0; j < n; ++j)
            if (fields[j][0] == '\0')
              abort ();
        free (copy);
      }
    }
    if (r == -1 && why[0] == '\0')
      abort ();
  }
  free (text);
  return 0;
}
