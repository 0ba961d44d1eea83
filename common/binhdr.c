/* nbdsnap common: the header of binary state files (see binhdr.h). */
#include <config.h>

#include <stdio.h>
#include <string.h>

#include "binhdr.h"
#include "statefile.h"

void
binhdr_put (uint8_t *buf, const struct binhdr *h)
{
  memset (buf, 0, BINHDR_SIZE);
  memcpy (buf, h->magic, 8);
  put_le32 (buf + 8, h->version);
  put_le32 (buf + 12, h->block_size);
  put_le64 (buf + 16, h->id);
  put_le64 (buf + 24, h->nblocks);
  put_le64 (buf + 32, h->disk_size);
  put_le64 (buf + 40, h->payload_len);
}

int
binhdr_seal (uint8_t *file, size_t len)
{
  memset (file + BINHDR_SUM_OFFSET, 0, SHA256_LEN);
  return sha256_buf (file, len, file + BINHDR_SUM_OFFSET);
}

int
binhdr_check (uint8_t *file, size_t len, const char *magic, uint32_t version,
              bool allow_unsealed, const char *name, const char *what,
              struct binhdr *out, bool *sealed, char *why, size_t whylen)
{
  static const uint8_t zero[SHA256_LEN];
  uint8_t sum[SHA256_LEN], calc[SHA256_LEN];
  bool is_sealed;

  if (len < BINHDR_SIZE || memcmp (file, magic, 8) != 0) {
    snprintf (why, whylen, "%s: not an nbdsnap %s (bad magic)", name, what);
    return -1;
  }
  memcpy (out->magic, file, 8);
  out->version = get_le32 (file + 8);
  if (out->version != version) {
    snprintf (why, whylen, "%s: unsupported %s version %u", name, what,
              out->version);
    return -1;
  }
  out->block_size = get_le32 (file + 12);
  out->id = get_le64 (file + 16);
  out->nblocks = get_le64 (file + 24);
  out->disk_size = get_le64 (file + 32);
  out->payload_len = get_le64 (file + 40);
  if (out->payload_len != len - BINHDR_SIZE) {
    snprintf (why, whylen, "%s: truncated or wrong length (%zu bytes, the "
              "header says %llu)", name, len,
              (unsigned long long) BINHDR_SIZE + out->payload_len);
    return -1;
  }
  memcpy (sum, file + BINHDR_SUM_OFFSET, SHA256_LEN);
  is_sealed = memcmp (sum, zero, SHA256_LEN) != 0;
  if (!is_sealed && !allow_unsealed) {
    snprintf (why, whylen, "%s: %s was never sealed (no checksum)", name,
              what);
    return -1;
  }
  if (is_sealed) {
    memset (file + BINHDR_SUM_OFFSET, 0, SHA256_LEN);
    if (sha256_buf (file, len, calc) == -1 ||
        memcmp (calc, sum, SHA256_LEN) != 0) {
      snprintf (why, whylen, "%s: checksum mismatch (file is corrupt)", name);
      return -1;
    }
  }
  if (sealed)
    *sealed = is_sealed;
  return 0;
}
