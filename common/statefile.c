/* nbdsnap common: crash-safe state files. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gnutls/crypto.h>

#include "fileio.h"
#include "statefile.h"

int
dir_check_writable (int dirfd)
{
  static const char probe[] = ".nbdsnap-probe", probe2[] = ".nbdsnap-probe2";
  int fd, saved;

  fd = openat (dirfd, probe, O_WRONLY|O_CREAT|O_TRUNC|O_NOFOLLOW|O_CLOEXEC,
               0600);
  if (fd == -1)
    return -1;
  close (fd);
  if (renameat (dirfd, probe, dirfd, probe2) == -1) {
    saved = errno;
    unlinkat (dirfd, probe, 0);
    errno = saved;
    return -1;
  }
  return unlinkat (dirfd, probe2, 0);
}

int
fsync_dirfd (int dirfd)
{
  return fsync (dirfd);
}

int
statefile_write (int dirfd, const char *name, const void *buf, size_t len)
{
  char tmp[256];
  int fd, saved;

  if (snprintf (tmp, sizeof tmp, "%s.tmp", name) >= (int) sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  fd = openat (dirfd, tmp, O_WRONLY|O_CREAT|O_TRUNC|O_NOFOLLOW|O_CLOEXEC,
               0600);
  if (fd == -1)
    return -1;
  if (write_full (fd, buf, len) == -1)
    goto err;
  if (fsync (fd) == -1)
    goto err;
  if (close_written (fd) == -1) {
    fd = -1;
    goto err;
  }
  fd = -1;
  if (renameat (dirfd, tmp, dirfd, name) == -1)
    goto err;
  /* The new file is in place whatever happens now: if the directory
   * cannot be made durable, say so without pretending the old file is
   * back.
   */
  if (fsync_dirfd (dirfd) == -1)
    return -2;
  return 0;

 err:
  saved = errno;
  if (fd >= 0)
    close (fd);
  unlinkat (dirfd, tmp, 0);
  errno = saved;
  return -1;
}

int
statefile_read (int dirfd, const char *name, char **buf, size_t *len)
{
  struct stat st;
  char *b;
  size_t done = 0;
  int fd, saved;

  fd = openat (dirfd, name, O_RDONLY|O_NOFOLLOW|O_CLOEXEC);
  if (fd == -1)
    return -1;
  if (fstat (fd, &st) == -1)
    goto err;
  b = malloc (st.st_size + 1);
  if (b == NULL)
    goto err;
  while (done < (size_t) st.st_size) {
    ssize_t r = read (fd, b + done, st.st_size - done);
    if (r == -1) {
      if (errno == EINTR) continue;
      free (b);
      goto err;
    }
    if (r == 0)
      break;
    done += r;
  }
  b[done] = '\0';
  close (fd);
  *buf = b;
  *len = done;
  return 0;

 err:
  saved = errno;
  close (fd);
  errno = saved;
  return -1;
}

int
sha256_buf (const void *buf, size_t len, uint8_t out[SHA256_LEN])
{
  if (gnutls_hash_fast (GNUTLS_DIG_SHA256, buf, len, out) < 0) {
    errno = EIO;
    return -1;
  }
  return 0;
}

void
hex_encode (const uint8_t *in, size_t n, char *out)
{
  static const char digits[] = "0123456789abcdef";
  size_t i;

  for (i = 0; i < n; ++i) {
    out[2*i] = digits[in[i] >> 4];
    out[2*i+1] = digits[in[i] & 15];
  }
  out[2*n] = '\0';
}

static int
hexval (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

int
hex_decode (const char *in, uint8_t *out, size_t n)
{
  size_t i;

  for (i = 0; i < n; ++i) {
    int h = hexval (in[2*i]), l;
    if (h < 0) return -1;
    l = hexval (in[2*i+1]);
    if (l < 0) return -1;
    out[i] = h << 4 | l;
  }
  return 0;
}
