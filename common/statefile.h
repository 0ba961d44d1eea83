/* nbdsnap common: crash-safe state files.
 *
 * Every state file is written to NAME.tmp, fsynced, renamed over NAME
 * and the directory fsynced, so that after a crash either the old or the
 * new version is found, never a mixture.  Text state files are built on
 * this by kvtext.h, binary ones by binhdr.h.
 */
#ifndef NBDSNAP_STATEFILE_H
#define NBDSNAP_STATEFILE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "fdlimit.h"

#define SHA256_LEN 32

/* Atomically replace dir/name with len bytes of buf (written to
 * NAME.tmp, fsynced, renamed, directory fsynced).  Returns:
 *    0  done, durable;
 *   -1  (errno) not done: the old file, if any, is intact;
 *   -2  (errno) the new file is in place, but the directory could not be
 *       made durable: after a crash either version may be found.  The
 *       caller must treat this as an I/O error that is not undone (what
 *       is in memory now matches the new file) and stop trusting the
 *       directory: Linux reports a writeback error only once.
 */
int statefile_write (int dirfd, const char *name, const void *buf, size_t len)
  __attribute__ ((nonnull (2, 3)));

/* Did statefile_write fail (-1) for want of memory or descriptors?
 * Then nothing was written and nothing on disk is in doubt: the caller
 * may fail the one operation without distrusting the directory.
 */
static inline int
statefile_short_of (int e)
{
  return e == ENOMEM || fdlimit_exhausted (e);
}

/* Read the whole of dir/name into a malloc'd buffer (NUL-terminated for
 * convenience; *len excludes the NUL).  -1 and errno on error.
 */
int statefile_read (int dirfd, const char *name, char **buf, size_t *len)
  __attribute__ ((nonnull (2, 3, 4)));

/* Can files be created, renamed and removed in the directory?  -1 and
 * errno if not (catches read-only mounts and immutable directories).
 */
int dir_check_writable (int dirfd);

/* fsync a directory. */
int fsync_dirfd (int dirfd);

/* SHA-256 of a buffer (gnutls).  -1 on error. */
int sha256_buf (const void *buf, size_t len, uint8_t out[SHA256_LEN])
  __attribute__ ((nonnull (3)));

/* Lower-case hex of n bytes into out (2n+1 bytes). */
void hex_encode (const uint8_t *in, size_t n, char *out)
  __attribute__ ((nonnull (1, 3)));

/* Parse 2n hex digits into n bytes.  -1 if malformed. */
int hex_decode (const char *in, uint8_t *out, size_t n)
  __attribute__ ((nonnull (1, 2)));

/* Little-endian helpers for binary state files. */
static inline void
put_le32 (uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; ++i) p[i] = v >> (8 * i);
}
static inline void
put_le64 (uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; ++i) p[i] = v >> (8 * i);
}
static inline uint32_t
get_le32 (const uint8_t *p)
{
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
static inline uint64_t
get_le64 (const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

#endif /* NBDSNAP_STATEFILE_H */
