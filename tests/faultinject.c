/* Fault injection for the nbdsnap tests: an LD_PRELOAD library.
 *
 * It wraps the calls through which nbdsnap writes state and data, and
 * makes a chosen one fail with a chosen errno.  nbdkit dlopens our
 * filters and plugin into its own process, so preloading this into
 * nbdkit reaches them; preloading it into nbdsnap reaches the tool and
 * the repository library.
 *
 * Environment (nothing set: every call passes through untouched):
 *
 *   FI_CALLS   comma list of calls to consider: pwrite write fsync
 *              fdatasync sync_file_range rename ftruncate fallocate open
 *              close unlink mkdir malloc, or "io" (every call but
 *              malloc) or "all"
 *   FI_PATH    colon list of path prefixes: a call on a file descriptor
 *              (its /proc/self/fd link) or a path outside them is not
 *              considered (default: every path)
 *   FI_OBJ     for malloc (also calloc, realloc, strdup, strndup): a
 *              substring of the file name of the object that called it
 *              (e.g. "nbdkit-cbt-filter"); allocations from elsewhere
 *              (nbdkit, libc) are never failed.  Default: never fail
 *              allocations even if malloc is in FI_CALLS
 *   FI_NTH     fail the Nth considered call (1 = the first); 0 or unset:
 *              fail nothing, only count (and log)
 *   FI_COUNT   how many considered calls fail from the Nth on (default
 *              1; 0 = every one after, a disk that stays broken)
 *   FI_ERRNO   EIO (default), ENOSPC, ENOMEM, EDQUOT or a number
 *   FI_ARM     a file name: calls are considered only while it exists
 *              (so a test can arm the shim after start-up)
 *   FI_LOG     append one line per considered call to this file:
 *              "N CALL PATH" and " FAILED" when it was made to fail
 *   FI_DELAY   milliseconds each considered call from the Nth on sleeps
 *              (FI_NTH unset: every considered call), to widen a race
 *              window; with FI_DELAY but no FI_ERRNO the calls do not
 *              fail
 *   FI_DELAY_AFTER  "1": sleep after the real call instead of before
 *
 * A failed close closes the descriptor all the same (as Linux does).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum call {
  C_PWRITE, C_WRITE, C_FSYNC, C_FDATASYNC, C_SYNC_FILE_RANGE, C_RENAME,
  C_FTRUNCATE, C_FALLOCATE, C_OPEN, C_CLOSE, C_UNLINK, C_MKDIR, C_MALLOC,
  C_NCALLS
};

static const char *const call_names[C_NCALLS] = {
  "pwrite", "write", "fsync", "fdatasync", "sync_file_range", "rename",
  "ftruncate", "fallocate", "open", "close", "unlink", "mkdir", "malloc",
};

static struct {
  int state;                    /* 0 unread, 1 reading, 2 ready */
  bool enabled[C_NCALLS];
  bool any;
  char paths[8][PATH_MAX];
  int npaths;
  char obj[256];
  unsigned long nth, count;
  int err;
  char arm[PATH_MAX];
  int logfd;
  unsigned long seq;            /* considered calls so far (atomic) */
  unsigned delay_ms;
  bool delay_after;
  bool delay_only;              /* FI_DELAY without FI_ERRNO */
} F = { .logfd = -1 };

/* Real functions. */
#define REAL(name) \
  static __typeof__ (name) *real_##name; \
  if (real_##name == NULL) real_##name = dlsym (RTLD_NEXT, #name)

extern void *__libc_malloc (size_t);
extern void *__libc_calloc (size_t, size_t);
extern void *__libc_realloc (void *, size_t);

static int
errno_value (const char *s)
{
  if (s == NULL || *s == '\0' || strcmp (s, "EIO") == 0) return EIO;
  if (strcmp (s, "ENOSPC") == 0) return ENOSPC;
  if (strcmp (s, "ENOMEM") == 0) return ENOMEM;
  if (strcmp (s, "EDQUOT") == 0) return EDQUOT;
  if (strcmp (s, "EROFS") == 0) return EROFS;
  return atoi (s) > 0 ? atoi (s) : EIO;
}

/* Read the environment once (getenv does not allocate). */
static void
setup (void)
{
  const char *s;
  int expect = 0;

  if (__atomic_load_n (&F.state, __ATOMIC_ACQUIRE) == 2)
    return;
  if (!__atomic_compare_exchange_n (&F.state, &expect, 1, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    while (__atomic_load_n (&F.state, __ATOMIC_ACQUIRE) != 2)
      ;
    return;
  }
  s = getenv ("FI_CALLS");
  if (s) {
    char buf[512], *tok, *save = NULL;
    snprintf (buf, sizeof buf, "%s", s);
    for (tok = strtok_r (buf, ",", &save); tok;
         tok = strtok_r (NULL, ",", &save)) {
      for (int i = 0; i < C_NCALLS; ++i)
        if (strcmp (tok, call_names[i]) == 0 ||
            strcmp (tok, "all") == 0 ||
            (strcmp (tok, "io") == 0 && i != C_MALLOC))
          F.enabled[i] = F.any = true;
    }
  }
  s = getenv ("FI_PATH");
  if (s) {
    const char *p = s;
    while (*p && F.npaths < 8) {
      size_t n = strcspn (p, ":");
      if (n > 0 && n < PATH_MAX) {
        memcpy (F.paths[F.npaths], p, n);
        F.paths[F.npaths++][n] = '\0';
      }
      p += n;
      if (*p == ':') p++;
    }
  }
  s = getenv ("FI_OBJ");
  if (s)
    snprintf (F.obj, sizeof F.obj, "%s", s);
  s = getenv ("FI_NTH");
  F.nth = s ? strtoul (s, NULL, 10) : 0;
  s = getenv ("FI_COUNT");
  F.count = s ? strtoul (s, NULL, 10) : 1;
  F.err = errno_value (getenv ("FI_ERRNO"));
  s = getenv ("FI_DELAY");
  F.delay_ms = s ? strtoul (s, NULL, 10) : 0;
  s = getenv ("FI_DELAY_AFTER");
  F.delay_after = s && strcmp (s, "1") == 0;
  F.delay_only = F.delay_ms > 0 && getenv ("FI_ERRNO") == NULL;
  s = getenv ("FI_ARM");
  if (s)
    snprintf (F.arm, sizeof F.arm, "%s", s);
  s = getenv ("FI_LOG");
  if (s && F.any) {
    REAL (open);
    F.logfd = real_open (s, O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC, 0644);
  }
  __atomic_store_n (&F.state, 2, __ATOMIC_RELEASE);
}

static bool
path_matches (const char *path)
{
  if (F.npaths == 0)
    return true;
  if (path == NULL)
    return false;
  for (int i = 0; i < F.npaths; ++i)
    if (strncmp (path, F.paths[i], strlen (F.paths[i])) == 0)
      return true;
  return false;
}

static void
fd_path (int fd, char *buf, size_t len)
{
  char link[64];
  ssize_t n;

  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink (link, buf, len - 1);
  buf[n < 0 ? 0 : n] = '\0';
}

/* dirfd + name as one path (best effort). */
static void
at_path (int dirfd, const char *name, char *buf, size_t len)
{
  if (name[0] == '/' || dirfd == AT_FDCWD) {
    if (name[0] == '/')
      snprintf (buf, len, "%s", name);
    else {
      char cwd[PATH_MAX];
      if (getcwd (cwd, sizeof cwd) == NULL)
        cwd[0] = '\0';
      snprintf (buf, len, "%s/%s", cwd, name);
    }
    return;
  }
  fd_path (dirfd, buf, len);
  strncat (buf, "/", len - strlen (buf) - 1);
  strncat (buf, name, len - strlen (buf) - 1);
}

static void
log_line (unsigned long n, enum call c, const char *path, bool failed)
{
  char line[PATH_MAX + 64];
  int len;

  if (F.logfd < 0)
    return;
  len = snprintf (line, sizeof line, "%lu %s %s%s\n", n, call_names[c],
                  path ? path : "-", failed ? " FAILED" : "");
  if (len > 0) {
    REAL (write);
    if (real_write (F.logfd, line, len) < 0)
      return;
  }
}

static __thread unsigned pending_delay;

/* Is this call considered, and must it fail? */
static bool
must_fail (enum call c, const char *path)
{
  unsigned long n;
  bool fail;

  setup ();
  if (!F.enabled[c] || !path_matches (path))
    return false;
  if (F.arm[0]) {
    struct stat st;
    if (stat (F.arm, &st) == -1)
      return false;
  }
  n = __atomic_add_fetch (&F.seq, 1, __ATOMIC_ACQ_REL);
  fail = F.nth > 0 && n >= F.nth && (F.count == 0 || n < F.nth + F.count);
  if (F.delay_ms && (F.nth == 0 || n >= F.nth)) {
    log_line (n, c, path, false);
    if (F.delay_after)
      pending_delay = F.delay_ms;
    else
      usleep (F.delay_ms * 1000);
    return F.delay_only ? false : fail;
  }
  log_line (n, c, path, fail);
  return fail;
}

/* After the real call: the FI_DELAY_AFTER sleep, if one is due. */
static void
delay_after (void)
{
  if (pending_delay) {
    unsigned ms = pending_delay;
    int saved = errno;
    pending_delay = 0;
    usleep (ms * 1000);
    errno = saved;
  }
}

static bool
fd_fails (enum call c, int fd)
{
  char path[PATH_MAX];

  setup ();
  if (!F.enabled[c])
    return false;
  fd_path (fd, path, sizeof path);
  return must_fail (c, path);
}

/*------------------------------------------------------------ wrappers --*/

ssize_t
pwrite (int fd, const void *buf, size_t n, off_t off)
{
  REAL (pwrite);
  if (fd_fails (C_PWRITE, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_pwrite (fd, buf, n, off);
    delay_after ();
    return r_;
  }
}

ssize_t
pwrite64 (int fd, const void *buf, size_t n, off_t off)
{
  REAL (pwrite64);
  if (fd_fails (C_PWRITE, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_pwrite64 (fd, buf, n, off);
    delay_after ();
    return r_;
  }
}

ssize_t
write (int fd, const void *buf, size_t n)
{
  REAL (write);
  if (fd != F.logfd && fd_fails (C_WRITE, fd)) {
    errno = F.err;
    return -1;
  }
  {
    __auto_type r_ = real_write (fd, buf, n);
    delay_after ();
    return r_;
  }
}

int
fsync (int fd)
{
  REAL (fsync);
  if (fd_fails (C_FSYNC, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_fsync (fd);
    delay_after ();
    return r_;
  }
}

int
fdatasync (int fd)
{
  REAL (fdatasync);
  if (fd_fails (C_FDATASYNC, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_fdatasync (fd);
    delay_after ();
    return r_;
  }
}

int
sync_file_range (int fd, off_t off, off_t n, unsigned int flags)
{
  REAL (sync_file_range);
  if (fd_fails (C_SYNC_FILE_RANGE, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_sync_file_range (fd, off, n, flags);
    delay_after ();
    return r_;
  }
}

int
ftruncate (int fd, off_t len)
{
  REAL (ftruncate);
  if (fd_fails (C_FTRUNCATE, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_ftruncate (fd, len);
    delay_after ();
    return r_;
  }
}

int
ftruncate64 (int fd, off_t len)
{
  REAL (ftruncate64);
  if (fd_fails (C_FTRUNCATE, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_ftruncate64 (fd, len);
    delay_after ();
    return r_;
  }
}

int
fallocate (int fd, int mode, off_t off, off_t len)
{
  REAL (fallocate);
  if (fd_fails (C_FALLOCATE, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_fallocate (fd, mode, off, len);
    delay_after ();
    return r_;
  }
}

int
fallocate64 (int fd, int mode, off_t off, off_t len)
{
  REAL (fallocate64);
  if (fd_fails (C_FALLOCATE, fd)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_fallocate64 (fd, mode, off, len);
    delay_after ();
    return r_;
  }
}

int
posix_fallocate (int fd, off_t off, off_t len)
{
  REAL (posix_fallocate);
  if (fd_fails (C_FALLOCATE, fd)) return F.err;
  {
    __auto_type r_ = real_posix_fallocate (fd, off, len);
    delay_after ();
    return r_;
  }
}

int
close (int fd)
{
  REAL (close);
  if (fd != F.logfd && fd_fails (C_CLOSE, fd)) {
    real_close (fd);
    errno = F.err;
    return -1;
  }
  {
    __auto_type r_ = real_close (fd);
    delay_after ();
    return r_;
  }
}

int
renameat (int od, const char *o, int nd, const char *n)
{
  char path[PATH_MAX];

  REAL (renameat);
  setup ();
  if (F.enabled[C_RENAME]) {
    at_path (nd, n, path, sizeof path);
    if (must_fail (C_RENAME, path)) { errno = F.err; return -1; }
  }
  {
    __auto_type r_ = real_renameat (od, o, nd, n);
    delay_after ();
    return r_;
  }
}

int
renameat2 (int od, const char *o, int nd, const char *n, unsigned flags)
{
  char path[PATH_MAX];

  REAL (renameat2);
  setup ();
  if (F.enabled[C_RENAME]) {
    at_path (nd, n, path, sizeof path);
    if (must_fail (C_RENAME, path)) { errno = F.err; return -1; }
  }
  {
    __auto_type r_ = real_renameat2 (od, o, nd, n, flags);
    delay_after ();
    return r_;
  }
}

int
rename (const char *o, const char *n)
{
  char path[PATH_MAX];

  REAL (rename);
  setup ();
  if (F.enabled[C_RENAME]) {
    at_path (AT_FDCWD, n, path, sizeof path);
    if (must_fail (C_RENAME, path)) { errno = F.err; return -1; }
  }
  {
    __auto_type r_ = real_rename (o, n);
    delay_after ();
    return r_;
  }
}

int
unlinkat (int d, const char *name, int flags)
{
  char path[PATH_MAX];

  REAL (unlinkat);
  setup ();
  if (F.enabled[C_UNLINK]) {
    at_path (d, name, path, sizeof path);
    if (must_fail (C_UNLINK, path)) { errno = F.err; return -1; }
  }
  {
    __auto_type r_ = real_unlinkat (d, name, flags);
    delay_after ();
    return r_;
  }
}

int
mkdirat (int d, const char *name, mode_t mode)
{
  char path[PATH_MAX];

  REAL (mkdirat);
  setup ();
  if (F.enabled[C_MKDIR]) {
    at_path (d, name, path, sizeof path);
    if (must_fail (C_MKDIR, path)) { errno = F.err; return -1; }
  }
  {
    __auto_type r_ = real_mkdirat (d, name, mode);
    delay_after ();
    return r_;
  }
}

int
mkdir (const char *name, mode_t mode)
{
  char path[PATH_MAX];

  REAL (mkdir);
  setup ();
  if (F.enabled[C_MKDIR]) {
    at_path (AT_FDCWD, name, path, sizeof path);
    if (must_fail (C_MKDIR, path)) { errno = F.err; return -1; }
  }
  {
    __auto_type r_ = real_mkdir (name, mode);
    delay_after ();
    return r_;
  }
}

/* Only opens that create or write are considered. */
static bool
open_fails (int dirfd, const char *name, int flags)
{
  char path[PATH_MAX];

  setup ();
  if (!F.enabled[C_OPEN] || (flags & O_ACCMODE) == O_RDONLY)
    return false;
  at_path (dirfd, name, path, sizeof path);
  return must_fail (C_OPEN, path);
}

#define OPEN_MODE(flags, mode) do {                             \
    mode = 0;                                                   \
    if ((flags) & (O_CREAT | __O_TMPFILE)) {                    \
      va_list ap;                                               \
      va_start (ap, flags);                                     \
      mode = va_arg (ap, mode_t);                               \
      va_end (ap);                                              \
    }                                                           \
  } while (0)

int
openat (int d, const char *name, int flags, ...)
{
  mode_t mode;

  REAL (openat);
  OPEN_MODE (flags, mode);
  if (open_fails (d, name, flags)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_openat (d, name, flags, mode);
    delay_after ();
    return r_;
  }
}

int
openat64 (int d, const char *name, int flags, ...)
{
  mode_t mode;

  REAL (openat64);
  OPEN_MODE (flags, mode);
  if (open_fails (d, name, flags)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_openat64 (d, name, flags, mode);
    delay_after ();
    return r_;
  }
}

int
open (const char *name, int flags, ...)
{
  mode_t mode;

  REAL (open);
  OPEN_MODE (flags, mode);
  if (open_fails (AT_FDCWD, name, flags)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_open (name, flags, mode);
    delay_after ();
    return r_;
  }
}

int
open64 (const char *name, int flags, ...)
{
  mode_t mode;

  REAL (open64);
  OPEN_MODE (flags, mode);
  if (open_fails (AT_FDCWD, name, flags)) { errno = F.err; return -1; }
  {
    __auto_type r_ = real_open64 (name, flags, mode);
    delay_after ();
    return r_;
  }
}

/*---------------------------------------------------------- allocation --*/

/* Must an allocation called from caller fail?  Only allocations made
 * directly by the object FI_OBJ names are candidates.
 */
static __thread int in_alloc_check;

static bool
alloc_fails (void *caller)
{
  Dl_info info;
  bool r;

  if (__atomic_load_n (&F.state, __ATOMIC_ACQUIRE) != 2) {
    /* Not set up: reading the environment is safe here, dlsym is not
     * involved.
     */
    setup ();
  }
  if (!F.enabled[C_MALLOC] || F.obj[0] == '\0' || in_alloc_check)
    return false;
  in_alloc_check = 1;           /* dladdr or logging may allocate */
  r = false;
  if (dladdr (caller, &info) != 0 && info.dli_fname != NULL) {
    const char *obj = info.dli_fname;
    static char exe[PATH_MAX];
    /* dladdr names the main program "" */
    if (obj[0] == '\0') {
      if (exe[0] == '\0') {
        ssize_t n = readlink ("/proc/self/exe", exe, sizeof exe - 1);
        exe[n > 0 ? n : 0] = '\0';
      }
      obj = exe;
    }
    r = strstr (obj, F.obj) != NULL && must_fail (C_MALLOC, obj);
  }
  in_alloc_check = 0;
  return r;
}

void *
malloc (size_t n)
{
  if (alloc_fails (__builtin_return_address (0))) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_malloc (n);
}

void *
calloc (size_t a, size_t b)
{
  if (alloc_fails (__builtin_return_address (0))) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_calloc (a, b);
}

void *
realloc (void *p, size_t n)
{
  if (alloc_fails (__builtin_return_address (0))) {
    errno = ENOMEM;
    return NULL;
  }
  return __libc_realloc (p, n);
}

char *
strdup (const char *s)
{
  size_t n = strlen (s) + 1;
  char *p;

  if (alloc_fails (__builtin_return_address (0))) {
    errno = ENOMEM;
    return NULL;
  }
  p = __libc_malloc (n);
  if (p)
    memcpy (p, s, n);
  return p;
}

char *
strndup (const char *s, size_t max)
{
  size_t n = strnlen (s, max);
  char *p;

  if (alloc_fails (__builtin_return_address (0))) {
    errno = ENOMEM;
    return NULL;
  }
  p = __libc_malloc (n + 1);
  if (p) {
    memcpy (p, s, n);
    p[n] = '\0';
  }
  return p;
}
