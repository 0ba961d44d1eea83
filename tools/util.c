/* nbdsnap tool: messages, URIs, libnbd connections, the tiny JSON reader,
 * the progress bar, sizes.
 */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#include "nbdsnap.h"

bool opt_json;
int opt_verbose;
volatile sig_atomic_t interrupted;

/*------------------------------------------------------------- signals --*/

static void
on_signal (int sig)
{
  interrupted = sig;
}

/* SIGINT, SIGTERM, SIGHUP stop a backup or restore cleanly: the workers
 * finish their current request, the frozen point is released and the
 * temporary point removed.  (kill -9 cannot be caught: then the frozen
 * point stays held until "nbdsnap freeze end" or a server restart.)
 */
void
install_signal_handlers (void)
{
  struct sigaction sa;

  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset (&sa.sa_mask);
  sa.sa_flags = 0;              /* no SA_RESTART */
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);
  sigaction (SIGHUP, &sa, NULL);
  sa.sa_handler = SIG_IGN;
  sigaction (SIGPIPE, &sa, NULL);
}

/*------------------------------------------------------------ messages --*/

static void
vmsg (const char *fmt, va_list ap)
{
  char buf[4 * ERRLEN];

  vsnprintf (buf, sizeof buf, fmt, ap);
  fprintf (stderr, "nbdsnap: %s\n", buf);
}

void
msg (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vmsg (fmt, ap);
  va_end (ap);
}

void
verbose (const char *fmt, ...)
{
  va_list ap;
  if (!opt_verbose)
    return;
  va_start (ap, fmt);
  vmsg (fmt, ap);
  va_end (ap);
}

void
usage_error (const char *fmt, ...)
{
  va_list ap;
  char buf[ERRLEN];

  va_start (ap, fmt);
  vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  fprintf (stderr, "nbdsnap: %s\n"
           "Try 'nbdsnap --help' or 'man nbdsnap' for more information.\n",
           buf);
  if (opt_json) {
    printf ("{\"ok\":false,\"exit\":%d,\"error\":", EXIT_USAGE);
    json_str (stdout, buf);
    printf ("}\n");
  }
  exit (EXIT_USAGE);
}

int
fail (int code, const char *fmt, ...)
{
  va_list ap;
  char buf[4 * ERRLEN];

  va_start (ap, fmt);
  vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  fprintf (stderr, "nbdsnap: %s\n", buf);
  if (opt_json) {
    printf ("{\"ok\":false,\"exit\":%d,\"error\":", code);
    json_str (stdout, buf);
    printf ("}\n");
  }
  return code;
}

void
json_str (FILE *fp, const char *s)
{
  if (s == NULL) {
    fputs ("null", fp);
    return;
  }
  putc ('"', fp);
  for (; *s; s++) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      fprintf (fp, "\\%c", c);
    else if (c == '\n')
      fputs ("\\n", fp);
    else if (c == '\t')
      fputs ("\\t", fp);
    else if (c < 0x20)
      fprintf (fp, "\\u%04x", c);
    else
      putc (c, fp);
  }
  putc ('"', fp);
}

/*--------------------------------------------------------------- names --*/

bool
filter_name_ok (const char *s)
{
  size_t n = strlen (s), i;

  if (n < 1 || n > 64 || strcmp (s, ".") == 0 || strstr (s, "..") != NULL)
    return false;
  for (i = 0; i < n; ++i)
    if (!isalnum ((unsigned char) s[i]) && s[i] != '.' && s[i] != '_' &&
        s[i] != '-')
      return false;
  return true;
}

/*---------------------------------------------------------------- URIs --*/

/* NBD URIs are nbd[s][+unix|+vsock]://[host[:port]]/[export][?query].
 * Keep everything but the export name: the part before the path, and the
 * query.  Our export names need no percent-encoding ([A-Za-z0-9._-@:/]).
 */
char *
uri_with_export (const char *uri, const char *exportname)
{
  const char *q = strchr (uri, '?');
  size_t prelen = q ? (size_t) (q - uri) : strlen (uri);
  const char *ss = strstr (uri, "://");
  const char *auth, *slash;
  size_t baselen;
  char *r;

  if (ss == NULL || ss >= uri + prelen)
    return NULL;
  auth = ss + 3;
  slash = memchr (auth, '/', uri + prelen - auth);
  baselen = slash ? (size_t) (slash - uri) : prelen;
  if (asprintf (&r, "%.*s/%s%s", (int) baselen, uri, exportname,
                q ? q : "") == -1)
    return NULL;
  return r;
}

struct nbd_handle *
connect_export (const char *uri, const char *exportname, bool meta,
                char *err, size_t errlen)
{
  struct nbd_handle *h;
  char *u;

  if (exportname) {
    u = uri_with_export (uri, exportname);
    if (u == NULL) {
      snprintf (err, errlen, "'%s' is not an NBD URI "
                "(nbd://HOST[:PORT]/, nbd+unix:///?socket=PATH, nbds://...)",
                uri);
      return NULL;
    }
  }
  else if ((u = strdup (uri)) == NULL) {
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  h = nbd_create ();
  if (h == NULL) {
    snprintf (err, errlen, "%s", nbd_get_error ());
    free (u);
    return NULL;
  }
  /* The URI comes from the user's command line: allow tls-certificates=
   * and tls-psk-file= query parameters (local files).
   */
  nbd_set_uri_allow_local_file (h, true);
  /* Every read is checked for errors before its buffer is used: no need
   * for libnbd to clear each buffer first (it costs a pass over every
   * byte of a backup).
   */
  nbd_set_pread_initialize (h, false);
  if ((meta && nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1)
      || nbd_connect_uri (h, u) == -1) {
    snprintf (err, errlen, "%s", nbd_get_error ());
    nbd_close (h);
    free (u);
    return NULL;
  }
  verbose ("connected to %s", u);
  free (u);
  return h;
}

void
disconnect (struct nbd_handle *h)
{
  if (h == NULL)
    return;
  nbd_shutdown (h, 0);
  nbd_close (h);
}

int
open_failed (const char *uri, const char *exportname, const char *what,
             const char *err, const char *hint)
{
  char e2[ERRLEN];
  struct nbd_handle *h;

  h = connect_export (uri, NULL, false, e2, sizeof e2);
  if (h == NULL)
    return fail (EXIT_USAGE, "cannot connect to %s: %s", uri, e2);
  disconnect (h);
  return fail (EXIT_FAILED, "%s: the server refused export '%s'%s%s "
               "(libnbd: %s)", what, exportname, hint ? ": " : "",
               hint ? hint : "", err);
}

char *
run_command (const char *uri, const char *exportname, bool *refused,
             char *err, size_t errlen)
{
  struct nbd_handle *h, *h2;
  int64_t size;
  char *buf, buf1[1];
  char e2[ERRLEN];

  *refused = false;
  h = connect_export (uri, exportname, false, err, errlen);
  if (h == NULL) {
    /* Could we reach the server at all? */
    h2 = connect_export (uri, NULL, false, e2, sizeof e2);
    if (h2) {
      *refused = true;
      disconnect (h2);
    }
    return NULL;
  }
  size = nbd_get_size (h);
  if (size < 0) {
    snprintf (err, errlen, "export '%s': %s", exportname, nbd_get_error ());
    disconnect (h);
    return NULL;
  }
  /* A plugin that ignores export names serves its disk under any name:
   * that is no command result (they are small and start with '{').
   */
  if (size > 4 * 1024 * 1024 ||
      (size > 0 && (nbd_pread (h, buf1, 1, 0, 0) == -1 || buf1[0] != '{'))) {
    snprintf (err, errlen, "export '%s' is not a command of an nbdsnap "
              "filter (its content is not a JSON result)", exportname);
    *refused = true;
    disconnect (h);
    return NULL;
  }
  buf = malloc (size + 1);
  if (buf == NULL) {
    snprintf (err, errlen, "out of memory");
    disconnect (h);
    return NULL;
  }
  if (size > 0 && nbd_pread (h, buf, size, 0, 0) == -1) {
    snprintf (err, errlen, "reading the result of '%s': %s", exportname,
              nbd_get_error ());
    free (buf);
    disconnect (h);
    return NULL;
  }
  buf[size] = '\0';
  disconnect (h);
  if (size == 0 || buf[0] != '{') {
    snprintf (err, errlen, "export '%s' is not a command of an nbdsnap "
              "filter (its content is not a JSON result)", exportname);
    *refused = true;
    free (buf);
    return NULL;
  }
  return buf;
}

/*------------------------------------------------------ tiny JSON reader --*/

static const char *
skip_ws (const char *p)
{
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
    p++;
  return p;
}

/* p at '"': the character after the closing quote, or NULL. */
static const char *
skip_string (const char *p)
{
  p++;
  while (*p && *p != '"') {
    if (*p == '\\' && p[1])
      p++;
    p++;
  }
  return *p ? p + 1 : NULL;
}

static const char *
skip_value (const char *p)
{
  p = skip_ws (p);
  if (*p == '"')
    return skip_string (p);
  if (*p == '{' || *p == '[') {
    int depth = 0;
    while (*p) {
      if (*p == '"') {
        if ((p = skip_string (p)) == NULL)
          return NULL;
        continue;
      }
      if (*p == '{' || *p == '[')
        depth++;
      else if (*p == '}' || *p == ']') {
        if (--depth == 0)
          return p + 1;
      }
      p++;
    }
    return NULL;
  }
  while (*p && *p != ',' && *p != '}' && *p != ']' &&
         !isspace ((unsigned char) *p))
    p++;
  return p;
}

const char *
jget (const char *obj, const char *key)
{
  const char *p, *k, *e;
  size_t klen = strlen (key);
  bool match;

  if (obj == NULL)
    return NULL;
  p = skip_ws (obj);
  if (*p != '{')
    return NULL;
  p++;
  for (;;) {
    p = skip_ws (p);
    if (*p != '"')
      return NULL;
    k = p + 1;
    if ((e = skip_string (p)) == NULL)
      return NULL;
    match = (size_t) (e - 1 - k) == klen && memcmp (k, key, klen) == 0;
    p = skip_ws (e);
    if (*p != ':')
      return NULL;
    p = skip_ws (p + 1);
    if (match)
      return p;
    if ((p = skip_value (p)) == NULL)
      return NULL;
    p = skip_ws (p);
    if (*p != ',')
      return NULL;
    p++;
  }
}

bool
jstr (const char *v, char *buf, size_t len, bool *isnull)
{
  size_t n = 0;

  if (isnull)
    *isnull = false;
  if (len)
    buf[0] = '\0';
  if (v == NULL)
    return false;
  if (strncmp (v, "null", 4) == 0) {
    if (isnull)
      *isnull = true;
    return true;
  }
  if (*v != '"')
    return false;
  for (v++; *v && *v != '"'; v++) {
    char c = *v;
    if (c == '\\' && v[1]) {
      v++;
      switch (*v) {
      case 'n': c = '\n'; break;
      case 't': c = '\t'; break;
      case 'r': c = '\r'; break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case 'u': {
        unsigned x = 0;
        int i;
        for (i = 1; i <= 4 && isxdigit ((unsigned char) v[i]); ++i)
          x = x * 16 + (isdigit ((unsigned char) v[i]) ? v[i] - '0'
                        : (tolower ((unsigned char) v[i]) - 'a' + 10));
        v += i - 1;
        c = x < 0x80 ? (char) x : '?';
        break;
      }
      default: c = *v;
      }
    }
    if (n + 1 < len)
      buf[n++] = c;
  }
  if (len)
    buf[n < len ? n : len - 1] = '\0';
  return true;
}

bool
jbool (const char *v, bool *b)
{
  if (v && strncmp (v, "true", 4) == 0) { *b = true; return true; }
  if (v && strncmp (v, "false", 5) == 0) { *b = false; return true; }
  return false;
}

bool
jnum (const char *v, uint64_t *n)
{
  char *end;

  if (v == NULL || !isdigit ((unsigned char) *v))
    return false;
  errno = 0;
  *n = strtoull (v, &end, 10);
  return errno == 0 && end != v;
}

const char *
jnext (const char *array, const char **it)
{
  const char *p;

  if (*it == NULL) {
    if (array == NULL)
      return NULL;
    p = skip_ws (array);
    if (*p != '[')
      return NULL;
    p = skip_ws (p + 1);
    if (*p == ']' || *p == '\0')
      return NULL;
    return *it = p;
  }
  if ((p = skip_value (*it)) == NULL)
    return NULL;
  p = skip_ws (p);
  if (*p != ',')
    return NULL;
  p = skip_ws (p + 1);
  return *it = p;
}

bool
jok (const char *doc)
{
  bool b;
  return jbool (jget (doc, "ok"), &b) && b;
}

void
jerror (const char *doc, char *buf, size_t len)
{
  char e[ERRLEN], en[64];

  if (!jstr (jget (doc, "error"), e, sizeof e, NULL) || e[0] == '\0')
    snprintf (e, sizeof e, "(no error message)");
  if (jstr (jget (doc, "errno"), en, sizeof en, NULL) && en[0])
    snprintf (buf, len, "%s (%s)", e, en);
  else
    snprintf (buf, len, "%s", e);
}

/*------------------------------------------------------------ progress --*/

struct progress {
  bool enabled, stop;
  char what[32];
  uint64_t total, done;
  double start;
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t cond;
};

static void
progress_draw (struct progress *p, bool final)
{
  uint64_t done = __atomic_load_n (&p->done, __ATOMIC_RELAXED);
  double el = now_seconds () - p->start, frac, rate;
  char a[32], b[32], c[32], eta[32] = "";
  int width = 24, fill, i;
  char bar[64];

  frac = p->total ? (double) done / p->total : 1.0;
  if (frac > 1.0)
    frac = 1.0;
  fill = (int) (frac * width);
  for (i = 0; i < width; ++i)
    bar[i] = i < fill ? '#' : '.';
  bar[width] = '\0';
  rate = el > 0 ? done / el : 0;
  if (!final && rate > 0 && p->total > done) {
    unsigned s = (unsigned) ((p->total - done) / rate);
    snprintf (eta, sizeof eta, " ETA %u:%02u", s / 60, s % 60);
  }
  else if (final)
    snprintf (eta, sizeof eta, " in %.1fs", el);
  fprintf (stderr, "\r%s [%s] %5.1f%% %s/%s %s/s%s   ", p->what, bar,
           frac * 100, human_size (done, a, sizeof a),
           human_size (p->total, b, sizeof b),
           human_size ((uint64_t) rate, c, sizeof c), eta);
  if (final)
    fputc ('\n', stderr);
  fflush (stderr);
}

static void *
progress_thread (void *arg)
{
  struct progress *p = arg;
  struct timespec ts;

  pthread_mutex_lock (&p->lock);
  while (!p->stop) {
    progress_draw (p, false);
    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_nsec += 250 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait (&p->cond, &p->lock, &ts);
  }
  pthread_mutex_unlock (&p->lock);
  return NULL;
}

struct progress *
progress_start (bool enabled, const char *what, uint64_t total)
{
  struct progress *p = calloc (1, sizeof *p);

  if (p == NULL)
    return NULL;
  p->enabled = enabled;
  snprintf (p->what, sizeof p->what, "%s", what);
  p->total = total;
  p->start = now_seconds ();
  pthread_mutex_init (&p->lock, NULL);
  pthread_cond_init (&p->cond, NULL);
  if (enabled && pthread_create (&p->thread, NULL, progress_thread, p) != 0)
    p->enabled = false;
  return p;
}

void
progress_add (struct progress *p, uint64_t bytes)
{
  if (p)
    __atomic_fetch_add (&p->done, bytes, __ATOMIC_RELAXED);
}

void
progress_stop (struct progress *p, bool ok)
{
  if (p == NULL)
    return;
  if (p->enabled) {
    pthread_mutex_lock (&p->lock);
    p->stop = true;
    pthread_cond_signal (&p->cond);
    pthread_mutex_unlock (&p->lock);
    pthread_join (p->thread, NULL);
    if (ok)
      progress_draw (p, true);
    else
      fputc ('\n', stderr);
  }
  pthread_mutex_destroy (&p->lock);
  pthread_cond_destroy (&p->cond);
  free (p);
}

bool
progress_wanted (int opt)
{
  if (opt >= 0)
    return opt;
  return isatty (STDERR_FILENO);
}

/*-------------------------------------------------------- sizes, times --*/

bool
parse_size (const char *s, uint64_t *out)
{
  char *end;
  uint64_t n, m = 1;

  if (!isdigit ((unsigned char) *s))
    return false;
  errno = 0;
  n = strtoull (s, &end, 10);
  if (errno)
    return false;
  switch (toupper ((unsigned char) *end)) {
  case '\0': break;
  case 'K': m = 1ULL << 10; end++; break;
  case 'M': m = 1ULL << 20; end++; break;
  case 'G': m = 1ULL << 30; end++; break;
  case 'T': m = 1ULL << 40; end++; break;
  default: return false;
  }
  if (m > 1 && (strcasecmp (end, "iB") == 0 || strcasecmp (end, "B") == 0))
    end += strlen (end);
  if (*end != '\0' || (n && m > UINT64_MAX / n))
    return false;
  *out = n * m;
  return true;
}

const char *
human_size (uint64_t n, char *buf, size_t len)
{
  static const char units[] = "KMGTPE";
  double d = n;
  int u = -1;

  while (d >= 1024 && u < 5) {
    d /= 1024;
    u++;
  }
  if (u < 0)
    snprintf (buf, len, "%" PRIu64, n);
  else if (d < 10 && d != (int) d)
    snprintf (buf, len, "%.1f%c", d, units[u]);
  else
    snprintf (buf, len, "%.0f%c", d, units[u]);
  return buf;
}

const char *
rfc3339 (int64_t t, char *buf, size_t len)
{
  time_t tt = t;
  struct tm tm;

  if (gmtime_r (&tt, &tm) == NULL ||
      strftime (buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf (buf, len, "%" PRId64, t);
  return buf;
}

double
now_seconds (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

bool
is_zero (const void *vbuf, size_t len)
{
  const unsigned char *buf = vbuf;
  size_t i;

  for (i = 0; i < len && i < 16; ++i)
    if (buf[i])
      return false;
  return len <= 16 || memcmp (buf, buf + 16, len - 16) == 0;
}

/*------------------------------------------------------------- extents --*/

struct extents_ctx {
  struct extent *v;
  size_t n, cap;
  uint64_t size, end;           /* disk size; end of what we have */
  bool oom;
};

static int
extent_cb (void *opaque, const char *metacontext, uint64_t offset,
           uint32_t *entries, size_t nr_entries, int *error)
{
  struct extents_ctx *c = opaque;
  size_t i;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  if (offset != c->end) {       /* not where we asked: ignore */
    *error = EPROTO;
    return -1;
  }
  for (i = 0; i + 1 < nr_entries && c->end < c->size; i += 2) {
    uint64_t len = entries[i];
    uint32_t type = entries[i + 1] & 3;
    if (len == 0)
      break;
    if (len > c->size - c->end)
      len = c->size - c->end;
    if (c->n && c->v[c->n - 1].type == type)
      c->v[c->n - 1].length += len;
    else {
      if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        struct extent *v = realloc (c->v, cap * sizeof *v);
        if (v == NULL) {
          c->oom = true;
          *error = ENOMEM;
          return -1;
        }
        c->v = v;
        c->cap = cap;
      }
      c->v[c->n++] = (struct extent) { c->end, len, type };
    }
    c->end += len;
  }
  return 0;
}

int
get_extents (struct nbd_handle *h, uint64_t size, struct extent **out,
             size_t *n, char *err, size_t errlen)
{
  struct extents_ctx c = { .size = size };

  while (c.end < size) {
    uint64_t before = c.end;
    uint64_t count = size - c.end;
    if (count > (1ULL << 30))
      count = 1ULL << 30;
    if (nbd_block_status (h, count, c.end,
                          (nbd_extent_callback) { .callback = extent_cb,
                                                  .user_data = &c },
                          0) == -1) {
      snprintf (err, errlen, "reading the extents at offset %" PRIu64
                ": %s", before, nbd_get_error ());
      free (c.v);
      return -1;
    }
    if (c.end == before) {
      snprintf (err, errlen, "the server returned no extents at offset %"
                PRIu64, before);
      free (c.v);
      return -1;
    }
  }
  *out = c.v;
  *n = c.n;
  return 0;
}

/* Options of the repository and server management subcommands. */
int
parse_args (int argc, char **argv, bool *force, uint64_t *block_size,
            char **pos, int maxpos)
{
  static const struct option long_opts[] = {
    { "force", no_argument, NULL, 'f' },
    { "json", no_argument, NULL, 'j' },
    { "verbose", no_argument, NULL, 'v' },
    { "block-size", required_argument, NULL, 'b' },
    { NULL, 0, NULL, 0 }
  };
  int c, n = 0;

  optind = 0;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "v", long_opts, NULL)) != -1) {
    switch (c) {
    case 'f':
      if (force == NULL)
        usage_error ("%s: unknown option --force", argv[0]);
      *force = true;
      break;
    case 'j': opt_json = true; break;
    case 'v': opt_verbose++; break;
    case 'b':
      if (block_size == NULL)
        usage_error ("%s: unknown option --block-size", argv[0]);
      if (!parse_size (optarg, block_size) || *block_size == 0 ||
          *block_size > UINT32_MAX)
        usage_error ("%s: bad --block-size '%s'", argv[0], optarg);
      break;
    default:
      usage_error ("%s: unknown option '%s'", argv[0], argv[optind - 1]);
    }
  }
  for (; optind < argc; optind++) {
    if (n == maxpos)
      usage_error ("%s: too many arguments ('%s')", argv[0], argv[optind]);
    pos[n++] = argv[optind];
  }
  return n;
}
