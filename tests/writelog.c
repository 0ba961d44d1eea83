/* Write log for the power-loss tests: an LD_PRELOAD library.
 *
 * Records, in order, every call by which the process changes files under
 * chosen directories, so that tests/powerloss.py can rebuild those
 * directories as a power cut would have left them at any point of the
 * run (dm-log-writes for a file system we cannot put on a block device
 * here).  Preloaded into nbdkit, it sees the filters' calls.
 *
 * Environment:
 *
 *   WL_LOG   the log file (appended to); unset: the library does nothing
 *   WL_PATH  colon list of directory prefixes (absolute, no trailing /):
 *            only calls on files and directories under them are logged
 *
 * Each record is one binary header (struct rec) then the path (absolute,
 * no NUL) and, for writes, the data.  Records are written after the call
 * succeeded (a failed call changes nothing the log needs), in one
 * write(2) under a lock, so the log's order is an order in which the
 * calls completed.  A reader that notes the log's size when an NBD reply
 * arrives knows every record of that request lies before it.
 *
 * Calls: open/openat with O_CREAT or O_TRUNC (CREATE, with the inode),
 * pwrite, write (WRITE at the offset written), ftruncate (TRUNC),
 * fallocate with FALLOC_FL_PUNCH_HOLE or ZERO_RANGE (ZERO), rename,
 * renameat, renameat2 without flags (RENAME), unlink, unlinkat (UNLINK,
 * RMDIR with AT_REMOVEDIR), mkdir, mkdirat (MKDIR), fsync and fdatasync
 * (SYNC, of a file or a directory).  Files are named by inode, so writes
 * through a descriptor follow the file across renames.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/falloc.h>

enum op { CREATE = 1, WRITE, TRUNC, ZERO, RENAME, UNLINK, RMDIR, MKDIR, SYNC };

struct rec {
  uint32_t magic;               /* 0x574c4f47 "WLOG" */
  uint32_t op;
  uint64_t ino;                 /* file (or directory, SYNC) inode */
  uint64_t off, len;            /* WRITE, ZERO: range; TRUNC: size */
  uint32_t pathlen, path2len;   /* RENAME: second path follows */
  uint64_t datalen;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int state;               /* 0 unread, 1 on, 2 off */
static int logfd = -1;
static char prefixes[8][PATH_MAX];
static int nprefixes;

static void
setup (void)
{
  const char *l, *p;

  if (state)
    return;
  l = getenv ("WL_LOG");
  p = getenv ("WL_PATH");
  if (!l || !p) {
    state = 2;
    return;
  }
  while (*p && nprefixes < 8) {
    size_t n = strcspn (p, ":");
    if (n > 0 && n < PATH_MAX) {
      memcpy (prefixes[nprefixes], p, n);
      prefixes[nprefixes++][n] = '\0';
    }
    p += n + (p[n] == ':');
  }
  logfd = syscall (SYS_openat, AT_FDCWD, l,
                   O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC, 0600);
  state = logfd >= 0 ? 1 : 2;
}

static bool
watched (const char *path)
{
  for (int i = 0; i < nprefixes; i++) {
    size_t n = strlen (prefixes[i]);
    if (strncmp (path, prefixes[i], n) == 0 &&
        (path[n] == '/' || path[n] == '\0'))
      return true;
  }
  return false;
}

static bool
fd_path (int fd, char *buf)
{
  char link[64];
  ssize_t n;
  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink (link, buf, PATH_MAX - 1);
  if (n <= 0)
    return false;
  buf[n] = '\0';
  return true;
}

/* DIRFD + NAME as an absolute path (the name need not exist). */
static bool
at_path (int dirfd, const char *name, char *buf)
{
  char dir[PATH_MAX];
  if (name[0] == '/')
    return snprintf (buf, PATH_MAX, "%s", name) < PATH_MAX;
  if (dirfd == AT_FDCWD) {
    if (getcwd (dir, sizeof dir) == NULL)
      return false;
  }
  else if (!fd_path (dirfd, dir))
    return false;
  return snprintf (buf, PATH_MAX, "%s/%s", dir, name) < PATH_MAX;
}

static void
emit (enum op op, uint64_t ino, uint64_t off, uint64_t len,
      const char *path, const char *path2, const void *data, uint64_t dlen)
{
  struct rec r = {
    .magic = 0x574c4f47, .op = op, .ino = ino, .off = off, .len = len,
    .pathlen = strlen (path), .path2len = path2 ? strlen (path2) : 0,
    .datalen = dlen,
  };
  struct iovec iov[4] = {
    { &r, sizeof r }, { (void *) path, r.pathlen },
    { (void *) (path2 ? path2 : ""), r.path2len }, { (void *) data, dlen },
  };
  int saved = errno;
  size_t total = sizeof r + r.pathlen + r.path2len + dlen, done = 0;

  pthread_mutex_lock (&lock);
  /* One writev normally; finish a short one by hand. */
  while (done < total) {
    ssize_t n = syscall (SYS_writev, logfd, iov, 4);
    if (n <= 0) {
      static const char msg[] = "writelog: cannot write the log\n";
      syscall (SYS_write, 2, msg, sizeof msg - 1);
      abort ();
    }
    done += n;
    for (int i = 0; i < 4 && n > 0; i++) {
      size_t k = (size_t) n < iov[i].iov_len ? (size_t) n : iov[i].iov_len;
      iov[i].iov_base = (char *) iov[i].iov_base + k;
      iov[i].iov_len -= k;
      n -= k;
    }
  }
  pthread_mutex_unlock (&lock);
  errno = saved;
}

/* A call on FD: its path if watched, and its inode. */
static bool
fd_watched (int fd, char *path, uint64_t *ino)
{
  struct stat st;
  setup ();
  if (state != 1 || !fd_path (fd, path) || !watched (path))
    return false;
  if (fstat (fd, &st) == -1)
    return false;
  *ino = st.st_ino;
  return true;
}

#define REAL(ret, name, ...)                                    \
  static ret (*real) (__VA_ARGS__);                             \
  if (!real) real = dlsym (RTLD_NEXT, name)

ssize_t
pwrite (int fd, const void *buf, size_t n, off_t off)
{
  REAL (ssize_t, "pwrite", int, const void *, size_t, off_t);
  char path[PATH_MAX];
  uint64_t ino;
  ssize_t r = real (fd, buf, n, off);
  if (r > 0 && fd_watched (fd, path, &ino))
    emit (WRITE, ino, off, r, path, NULL, buf, r);
  return r;
}

ssize_t pwrite64 (int fd, const void *buf, size_t n, off_t off)
  __attribute__ ((alias ("pwrite")));

ssize_t
write (int fd, const void *buf, size_t n)
{
  REAL (ssize_t, "write", int, const void *, size_t);
  char path[PATH_MAX];
  uint64_t ino;
  off_t before = -1;
  ssize_t r;

  setup ();
  if (state == 1 && fd > 2)
    before = lseek (fd, 0, SEEK_CUR);
  r = real (fd, buf, n);
  if (r > 0 && before >= 0 && fd_watched (fd, path, &ino)) {
    /* O_APPEND writes land at the end: the position after, minus r. */
    off_t after = lseek (fd, 0, SEEK_CUR);
    emit (WRITE, ino, after >= r ? after - r : before, r, path, NULL, buf, r);
  }
  return r;
}

int
ftruncate (int fd, off_t len)
{
  REAL (int, "ftruncate", int, off_t);
  char path[PATH_MAX];
  uint64_t ino;
  int r = real (fd, len);
  if (r == 0 && fd_watched (fd, path, &ino))
    emit (TRUNC, ino, 0, len, path, NULL, NULL, 0);
  return r;
}

int ftruncate64 (int fd, off_t len) __attribute__ ((alias ("ftruncate")));

int
fallocate (int fd, int mode, off_t off, off_t len)
{
  REAL (int, "fallocate", int, int, off_t, off_t);
  char path[PATH_MAX];
  uint64_t ino;
  int r = real (fd, mode, off, len);
  if (r == 0 && (mode & (FALLOC_FL_PUNCH_HOLE|FALLOC_FL_ZERO_RANGE)) &&
      fd_watched (fd, path, &ino))
    emit (ZERO, ino, off, len, path, NULL, NULL, 0);
  else if (r == 0 && !(mode & FALLOC_FL_KEEP_SIZE) &&
           fd_watched (fd, path, &ino)) {
    struct stat st;
    if (fstat (fd, &st) == 0)
      emit (TRUNC, ino, 0, st.st_size, path, NULL, NULL, 0);
  }
  return r;
}

int fallocate64 (int fd, int mode, off_t off, off_t len)
  __attribute__ ((alias ("fallocate")));

static int
sync_common (int fd, int r)
{
  char path[PATH_MAX];
  uint64_t ino;
  if (r == 0 && fd_watched (fd, path, &ino))
    emit (SYNC, ino, 0, 0, path, NULL, NULL, 0);
  return r;
}

int
fsync (int fd)
{
  REAL (int, "fsync", int);
  return sync_common (fd, real (fd));
}

int
fdatasync (int fd)
{
  REAL (int, "fdatasync", int);
  return sync_common (fd, real (fd));
}

static void
after_open (int fd, int flags)
{
  char path[PATH_MAX];
  uint64_t ino;
  if (fd >= 0 && (flags & (O_CREAT|O_TRUNC)) &&
      (flags & O_TMPFILE) != O_TMPFILE && fd_watched (fd, path, &ino)) {
    emit (CREATE, ino, 0, 0, path, NULL, NULL, 0);
    if (flags & O_TRUNC)
      emit (TRUNC, ino, 0, 0, path, NULL, NULL, 0);
  }
}

#define OPEN_MODE                                       \
  mode_t mode = 0;                                      \
  if (flags & (O_CREAT|O_TMPFILE)) {                    \
    va_list ap;                                         \
    va_start (ap, flags);                               \
    mode = va_arg (ap, mode_t);                         \
    va_end (ap);                                        \
  }

int
openat (int d, const char *name, int flags, ...)
{
  REAL (int, "openat", int, const char *, int, ...);
  OPEN_MODE;
  int fd = real (d, name, flags, mode);
  after_open (fd, flags);
  return fd;
}

int openat64 (int d, const char *name, int flags, ...)
  __attribute__ ((alias ("openat")));

int
open (const char *name, int flags, ...)
{
  REAL (int, "open", const char *, int, ...);
  OPEN_MODE;
  int fd = real (name, flags, mode);
  after_open (fd, flags);
  return fd;
}

int open64 (const char *name, int flags, ...) __attribute__ ((alias ("open")));

/* Paths are resolved before the call (the directory fds stay valid). */
#define PATH_OP(op, d1, n1, d2, n2, call)                               \
  do {                                                                  \
    char p1_[PATH_MAX], p2_[PATH_MAX];                                  \
    bool ok1_, ok2_ = true;                                             \
    int r_;                                                             \
    setup ();                                                           \
    ok1_ = state == 1 && at_path (d1, n1, p1_);                         \
    if ((n2) != NULL)                                                   \
      ok2_ = state == 1 && at_path (d2, n2, p2_);                       \
    r_ = (call);                                                        \
    if (r_ == 0 && ok1_ && ok2_ &&                                      \
        (watched (p1_) || ((n2) != NULL && watched (p2_))))             \
      emit (op, 0, 0, 0, p1_, (n2) != NULL ? p2_ : NULL, NULL, 0);      \
    return r_;                                                          \
  } while (0)

int
renameat (int od, const char *o, int nd, const char *n)
{
  REAL (int, "renameat", int, const char *, int, const char *);
  PATH_OP (RENAME, od, o, nd, n, real (od, o, nd, n));
}

int
renameat2 (int od, const char *o, int nd, const char *n, unsigned flags)
{
  REAL (int, "renameat2", int, const char *, int, const char *, unsigned);
  /* RENAME_NOREPLACE is a rename; RENAME_EXCHANGE is not modelled. */
  PATH_OP (RENAME, od, o, nd, n, real (od, o, nd, n, flags));
}

int
rename (const char *o, const char *n)
{
  REAL (int, "rename", const char *, const char *);
  PATH_OP (RENAME, AT_FDCWD, o, AT_FDCWD, n, real (o, n));
}

int
unlinkat (int d, const char *name, int flags)
{
  REAL (int, "unlinkat", int, const char *, int);
  PATH_OP (flags & AT_REMOVEDIR ? RMDIR : UNLINK, d, name, -1,
           (const char *) NULL, real (d, name, flags));
}

int
unlink (const char *name)
{
  REAL (int, "unlink", const char *);
  PATH_OP (UNLINK, AT_FDCWD, name, -1, (const char *) NULL, real (name));
}

int
mkdirat (int d, const char *name, mode_t mode)
{
  REAL (int, "mkdirat", int, const char *, mode_t);
  PATH_OP (MKDIR, d, name, -1, (const char *) NULL, real (d, name, mode));
}

int
mkdir (const char *name, mode_t mode)
{
  REAL (int, "mkdir", const char *, mode_t);
  PATH_OP (MKDIR, AT_FDCWD, name, -1, (const char *) NULL, real (name, mode));
}
