/* The helper tests/bin/nbdkit preloads into nbdkit, after the sanitizer
 * runtime, in a sanitizer build (configure --enable-sanitizers or
 * --enable-tsan).  Built without the sanitizers: it must work in an
 * uninstrumented nbdkit whatever the runtime.
 *
 * 1. At load, before nbdkit's main: put back the LD_PRELOAD the wrapper
 *    was called with (it saved it in NBDSNAP_SAN_SAVED_PRELOAD: "x" +
 *    the value, or empty if there was none).  The runtime is loaded by
 *    then; what nbdkit starts (--run scripts, python, nbdsh, qemu-img)
 *    must not get it.
 * 2. dlclose does nothing: nbdkit unloads its filters and plugin before
 *    it exits, and the leak report made at exit could not name a
 *    function of an unloaded module.
 * 3. swift_demangle exists.  Without it, a preloaded runtime corrupts
 *    glibc's locale lock, and the first newlocale after start-up (json-c
 *    calls it in every json_tokener_parse_ex: the freeze filter's
 *    @freeze:begin) waits for ever.  How: the runtime is preloaded, not
 *    linked, so it initializes lazily, at the first call it intercepts;
 *    in nbdkit that is a malloc inside newlocale, called by the
 *    constructor of libp11-kit (gnutls) with __libc_setlocale_lock held
 *    for writing.  The runtime's initialization looks up swift_demangle
 *    (dlsym) and clears the error with dlerror(), whose message
 *    translation takes the same lock for reading: that fails (EDEADLK,
 *    ignored), its unlock releases newlocale's write lock, and
 *    newlocale's own unlock then leaves the lock with -1 readers.
 *    With the symbol found, dlerror has no message to translate.  The
 *    runtime calls it only for names mangled the Swift way ("_T...");
 *    NULL tells it to demangle them the usual way.
 *    (Seen with gcc 12's libasan 8 and libtsan 2, glibc 2.36, Debian 12.)
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdlib.h>

__attribute__ ((constructor))
static void
restore_preload (void)
{
  const char *saved = getenv ("NBDSNAP_SAN_SAVED_PRELOAD");

  if (saved == NULL)
    return;                     /* not started by tests/bin/nbdkit */
  if (*saved)
    setenv ("LD_PRELOAD", saved + 1, 1);
  else
    unsetenv ("LD_PRELOAD");
  unsetenv ("NBDSNAP_SAN_SAVED_PRELOAD");
}

int dlclose (void *handle);

int
dlclose (void *handle)
{
  return 0;
}

char *swift_demangle (const char *mangled, size_t len, char *out,
                      size_t *outlen, unsigned flags);

char *
swift_demangle (const char *mangled, size_t len, char *out, size_t *outlen,
                unsigned flags)
{
  return NULL;
}
