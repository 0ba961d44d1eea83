/* nbdsnap tool: nbdsnap migrate SRC-URI DST-URI: copy a disk to another
 * server over NBD with its checkpoints (docs/migration.md).
 *
 *   1. checks: both servers answer, the destination's size, its cbt
 *      filter and checkpoints (refused unless --replace or --since)
 *   2. @freeze:begin/NAME on the source: checkpoint NAME and the disk
 *      frozen at that instant; writes on the source go on
 *   3. copy @freeze/NAME (or only @freeze:diff/SINCE/NAME) to the
 *      destination's live disk over --connections connections
 *   (--snapshots: first recreate the snapshot tree, migrate-snap.c)
 *   4. carry the consistent checkpoints (migrate-chain.c)
 *   5. @freeze:end/NAME.  Checkpoint NAME stays on the source: what was
 *      written there after it is what the destination lacks, and the
 *      cut-over (writers stopped) is `nbdsnap migrate --since NAME`.
 * On failure the point is ended and checkpoint NAME deleted again.
 */
#include <config.h>

#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "exportname.h"
#include "migrate.h"
#include "minmax.h"

#define DATA_CHUNK (2u << 20)
#define ZERO_CHUNK (256u << 20)

struct chunk { uint64_t offset, len; bool zero; };

struct copy {
  struct migrate *m;
  const char *view;
  struct chunk *v;
  size_t n, next;               /* next: atomic */
  struct progress *pg;
  pthread_mutex_t lock;
  bool failed;
  char err[ERRLEN];
};

/* Record the first failure of a worker. */
static void
copy_fail (struct copy *c, const char *what, const char *e)
{
  pthread_mutex_lock (&c->lock);
  if (!c->failed) {
    c->failed = true;
    snprintf (c->err, sizeof c->err, "%s: %.900s", what, e);
  }
  pthread_mutex_unlock (&c->lock);
}

/* Zero [off, off+len) on the destination (written as zeroes if it
 * cannot zero).
 */
static int
dst_zero (struct nbd_handle *d, uint64_t off, uint64_t len, void *zbuf)
{
  if (nbd_can_zero (d) == 1)
    return nbd_zero (d, len, off, 0);
  memset (zbuf, 0, DATA_CHUNK);
  for (; len; ) {
    uint64_t k = min64 (len, DATA_CHUNK);
    if (nbd_pwrite (d, zbuf, k, off, 0) == -1)
      return -1;
    off += k;
    len -= k;
  }
  return 0;
}

/* A worker: its own connections to the view and to the destination. */
static void *
worker (void *opaque)
{
  struct copy *c = opaque;
  struct migrate *m = c->m;
  struct nbd_handle *s, *d = NULL;
  char e[ERRLEN];
  void *buf = malloc (DATA_CHUNK);
  size_t i;

  s = connect_export (m->src, c->view, false, NULL, e, sizeof e);
  if (s == NULL)
    copy_fail (c, "connecting to the source", e);
  else if ((d = connect_export (m->dst, NULL, false, NULL, e, sizeof e))
           == NULL)
    copy_fail (c, "connecting to the destination", e);
  else if (buf == NULL)
    copy_fail (c, "copy", "out of memory");
  while (s && d && buf && !c->failed && !interrupted &&
         (i = __atomic_fetch_add (&c->next, 1, __ATOMIC_RELAXED)) < c->n) {
    const struct chunk *k = &c->v[i];
    int r;
    if (k->zero) {
      r = dst_zero (d, k->offset, k->len, buf);
      __atomic_fetch_add (&m->bytes_zeroed, k->len, __ATOMIC_RELAXED);
    }
    else if (nbd_pread (s, buf, k->len, k->offset, 0) == -1) {
      copy_fail (c, "reading the source", nbd_get_error ());
      break;
    }
    else if (is_zero (buf, k->len)) {
      r = dst_zero (d, k->offset, k->len, buf);
      __atomic_fetch_add (&m->bytes_zeroed, k->len, __ATOMIC_RELAXED);
    }
    else {
      r = nbd_pwrite (d, buf, k->len, k->offset, 0);
      __atomic_fetch_add (&m->bytes_copied, k->len, __ATOMIC_RELAXED);
    }
    if (r == -1) {
      copy_fail (c, "writing the destination", nbd_get_error ());
      break;
    }
    progress_add (c->pg, k->len);
  }
  if (d && !c->failed && nbd_flush (d, 0) == -1)
    copy_fail (c, "flushing the destination", nbd_get_error ());
  disconnect (s);
  disconnect (d);
  free (buf);
  return NULL;
}

/* Append the chunks of [off, off+len). */
static int
add_chunks (struct copy *c, size_t *cap, uint64_t off, uint64_t len,
            bool zero)
{
  uint64_t step = zero ? ZERO_CHUNK : DATA_CHUNK, k;

  for (; len; off += k, len -= k) {
    k = min64 (len, step);
    if (c->n == *cap) {
      struct chunk *nv = realloc (c->v, (*cap = *cap * 2 + 64) * sizeof *nv);
      if (nv == NULL)
        return -1;
      c->v = nv;
    }
    c->v[c->n++] = (struct chunk) { off, k, zero };
  }
  return 0;
}

int
copy_view (struct migrate *m, const char *view, const char *map,
           enum copy_mode mode)
{
  struct copy c = { .m = m, .view = view, .lock = PTHREAD_MUTEX_INITIALIZER };
  char err[ERRLEN];
  struct nbd_handle *h;
  struct extent *v = NULL;
  size_t n = 0, i, cap = 0;
  uint64_t total = 0;
  pthread_t th[64];
  int t, nt = 0;

  if (map == NULL)
    map = view;
  h = connect_export (m->src, map, true, NULL, err, sizeof err);
  if (h == NULL)
    return fail (EXIT_FAILED, "cannot open %s on the source: %s", map, err);
  if (nbd_get_size (h) != (int64_t) m->size) {
    disconnect (h);
    return fail (EXIT_FAILED, "the source's disk changed size");
  }
  if (nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
    if (mode != COPY_ALL) {
      disconnect (h);
      return fail (EXIT_FAILED, "%s has no change map", map);
    }
    v = malloc (sizeof *v);
    if (v)
      v[n++] = (struct extent) { 0, m->size, 0 };
  }
  else if (get_extents (h, m->size, &v, &n, err, sizeof err) == -1) {
    disconnect (h);
    return fail (EXIT_FAILED, "cannot read the extents of %s: %s", map,
                 err);
  }
  disconnect (h);
  for (i = 0; i < n; ++i) {
    bool zero = v[i].type & LIBNBD_STATE_ZERO;
    if (mode != COPY_ALL && v[i].type == LIBNBD_STATE_HOLE)
      continue;                 /* unchanged */
    if (mode == COPY_CHANGED)
      zero = false;             /* the map is of another export: read */
    if (add_chunks (&c, &cap, v[i].offset, v[i].length, zero) == -1) {
      free (v);
      free (c.v);
      return fail (EXIT_FAILED, "out of memory");
    }
    total += v[i].length;
  }
  free (v);
  c.pg = progress_start (m->show_progress, "migrate", total);
  for (t = 0; t < m->connections && t < 64; ++t) {
    if (pthread_create (&th[t], NULL, worker, &c) != 0)
      break;
    nt++;
  }
  if (nt == 0)
    copy_fail (&c, "copy", "cannot start a thread");
  for (t = 0; t < nt; ++t)
    pthread_join (th[t], NULL);
  progress_stop (c.pg, !c.failed && !interrupted);
  free (c.v);
  if (interrupted)
    return fail (EXIT_FAILED, "interrupted");
  if (c.failed)
    return fail (EXIT_FAILED, "%s", c.err);
  return EXIT_OK;
}

/* Step 3: the disk frozen at NAME: whole, only what changed since
 * --since, or (snapshots carried) what changed since the live disk's
 * parent snapshot, to which the destination was reverted.
 */
static int
copy_disk (struct migrate *m)
{
  char view[256], map[256];

  snprintf (view, sizeof view, "@freeze/%s", m->name);
  if (m->since[0]) {
    snprintf (view, sizeof view, "@freeze:diff/%s/%s", m->since, m->name);
    return copy_view (m, view, NULL, COPY_DIFF);
  }
  if (m->live_parent[0]) {
    snprintf (map, sizeof map, "@snapshot:diff/%s", m->live_parent);
    return copy_view (m, view, map, COPY_CHANGED);
  }
  return copy_view (m, view, NULL, COPY_ALL);
}

/* Step 1, the destination: size, cbt filter, checkpoints. */
static int
check_destination (struct migrate *m, bool src_cbt)
{
  char err[ERRLEN];
  struct nbd_handle *h;
  struct result res;
  struct json_object *c;
  int64_t size;
  uint64_t u = 0;

  h = connect_export (m->dst, NULL, false, NULL, err, sizeof err);
  if (h == NULL)
    return fail (EXIT_USAGE, "cannot connect to %s: %s", m->dst, err);
  size = nbd_get_size (h);
  if (size != (int64_t) m->size) {
    disconnect (h);
    return fail (EXIT_FAILED, "the destination's disk has %" PRId64
                 " bytes, the source's %" PRIu64 ": make them the same "
                 "size", size, m->size);
  }
  if (nbd_is_read_only (h) == 1) {
    disconnect (h);
    return fail (EXIT_FAILED, "the destination is read-only");
  }
  disconnect (h);
  if (run_command (m->dst, "@cbt:list", &res, err, sizeof err) == CMD_DONE) {
    m->dst_cbt = res.ok;
    jnum (res.root, "granularity", &u);
    m->dst_gran = u;
    m->dst_ncps = jlen (res.root, "checkpoints");
    if (m->dst_ncps) {
      c = jat (res.root, "checkpoints", m->dst_ncps - 1);
      snprintf (m->dst_newest, sizeof m->dst_newest, "%s",
                jstr (c, "name") ? jstr (c, "name") : "");
      jnum (c, "dirty_blocks", &m->dst_newest_dirty);
      jbool (c, "consistent", &m->dst_newest_consistent);
    }
    result_free (&res);
  }
  if (src_cbt && !m->dst_cbt)
    return fail (EXIT_FAILED, "the destination has no cbt filter "
                 "(--filter=cbt): the source's checkpoints cannot be "
                 "carried");
  if (m->dst_cbt && (m->dst_gran < 4096 || (m->dst_gran & (m->dst_gran - 1))))
    return fail (EXIT_FAILED, "the destination reports a bad granularity");
  if (m->since[0]) {
    if (strcmp (m->dst_newest, m->since) != 0)
      return fail (EXIT_FAILED, "the destination's newest checkpoint is "
                   "'%s', not '%s': it does not hold the disk as of '%s'; "
                   "migrate the whole disk (without --since, --replace)",
                   m->dst_newest, m->since, m->since);
    if (m->dst_newest_dirty || !m->dst_newest_consistent)
      return fail (EXIT_FAILED, "the destination was written since '%s' "
                   "(%" PRIu64 " blocks, or an unclean stop): migrate the whole disk (without "
                   "--since, --replace)", m->since, m->dst_newest_dirty);
    m->replace = true;
  }
  else if (m->dst_ncps && !m->replace)
    return fail (EXIT_FAILED, "the destination already has %zu "
                 "checkpoint(s) (the newest is '%s'); --replace drops them",
                 m->dst_ncps, m->dst_newest);
  return EXIT_OK;
}

/* Step 1, the source: its size and whether it has a cbt filter. */
static int
check_source (struct migrate *m, bool *src_cbt)
{
  char err[ERRLEN];
  struct nbd_handle *h;
  struct result res;

  h = connect_export (m->src, NULL, false, NULL, err, sizeof err);
  if (h == NULL)
    return fail (EXIT_USAGE, "cannot connect to %s: %s", m->src, err);
  m->size = nbd_get_size (h);
  disconnect (h);
  *src_cbt = false;
  if (run_command (m->src, "@cbt:list", &res, err, sizeof err) == CMD_DONE) {
    *src_cbt = res.ok;
    result_free (&res);
  }
  if (m->since[0] && !*src_cbt)
    return fail (EXIT_FAILED, "--since needs the cbt filter on the source");
  return EXIT_OK;
}

/* Run an @freeze/@cbt command NAME on the source; false on failure
 * (err says why).
 */
static bool
src_command (struct migrate *m, const char *verb, struct result *res,
             char *err, size_t errlen)
{
  char ex[160];

  snprintf (ex, sizeof ex, "%s/%s", verb, m->name);
  if (run_command (m->src, ex, res, err, errlen) != CMD_DONE)
    return false;
  if (!res->ok) {
    result_error (res->root, err, errlen);
    result_free (res);
    return false;
  }
  return true;
}

/* Steps 2 and 5: begin and end the frozen point. */
static int
begin (struct migrate *m)
{
  char err[ERRLEN];
  struct result res;

  if (!src_command (m, "@freeze:begin", &res, err, sizeof err))
    return fail (EXIT_FAILED, "the source refused to begin frozen point "
                 "'%s' (migrate needs --filter=freeze on the source): %s",
                 m->name, err);
  m->begun = true;
  jbool (jget (res.root, "point"), "checkpoint", &m->made_checkpoint);
  result_free (&res);
  return EXIT_OK;
}

static int
end (struct migrate *m)
{
  char err[ERRLEN];
  struct result res;
  bool aborted = false;

  if (!src_command (m, "@freeze:end", &res, err, sizeof err))
    return fail (EXIT_FAILED, "cannot end frozen point '%s': %s", m->name,
                 err);
  m->begun = false;
  jbool (jget (res.root, "point"), "aborted", &aborted);
  result_free (&res);
  if (aborted)
    return fail (EXIT_FAILED, "the source aborted frozen point '%s' during "
                 "the copy (scratch space?)", m->name);
  return EXIT_OK;
}

/* After a failure: release the point, and drop our checkpoint unless the
 * destination has it now.
 */
static void
cleanup (struct migrate *m)
{
  char err[ERRLEN];
  struct result res;

  if (m->begun && src_command (m, "@freeze:end", &res, err, sizeof err))
    result_free (&res);
  else if (m->begun)
    msg ("warning: could not end frozen point '%s' (%s): nbdsnap freeze "
         "end %s %s", m->name, err, m->src, m->name);
  if (m->made_checkpoint && !m->installed) {
    if (src_command (m, "@cbt:delete", &res, err, sizeof err))
      result_free (&res);
    else
      msg ("warning: could not delete checkpoint '%s' (%s): nbdsnap "
           "checkpoint delete %s %s", m->name, err, m->src, m->name);
  }
}

/* The report on stdout. */
static void
report (struct migrate *m, double secs)
{
  char a[32], b[32];
  size_t i;

  if (opt_json) {
    printf ("{\"ok\":true,\"point\":");
    json_str (stdout, m->name);
    printf (",\"since\":");
    json_str (stdout, m->since[0] ? m->since : NULL);
    printf (",\"disk_size\":%" PRIu64 ",\"copied_bytes\":%" PRIu64
            ",\"zeroed_bytes\":%" PRIu64 ",\"seconds\":%.3f,"
            "\"checkpoints\":[", m->size, m->bytes_copied, m->bytes_zeroed,
            secs);
    for (i = 0; i < m->ncarry; ++i) {
      if (i) printf (",");
      json_str (stdout, m->carry[i]);
    }
    printf ("],\"skipped_checkpoints\":%zu,\"snapshots\":[", m->skipped);
    for (i = 0; i < m->nsnaps; ++i) {
      if (i) printf (",");
      json_str (stdout, m->snaps[i]);
    }
    printf ("]}\n");
    return;
  }
  printf ("migrated '%s': %s copied, %s zeroed in %.1f s; %zu checkpoint(s) "
          "carried", m->name, human_size (m->bytes_copied, a, sizeof a),
          human_size (m->bytes_zeroed, b, sizeof b), secs, m->ncarry);
  for (i = 0; i < m->ncarry; ++i)
    printf ("%s%s", i ? ", " : ": ", m->carry[i]);
  if (m->snapshots)
    printf ("; %zu snapshot(s)", m->nsnaps);
  for (i = 0; i < m->nsnaps; ++i)
    printf ("%s%s", i ? ", " : ": ", m->snaps[i]);
  printf ("\n");
}

int
cmd_migrate (int argc, char **argv)
{
  static const struct option long_opts[] = {
    { "name", required_argument, NULL, 'n' },
    { "since", required_argument, NULL, 's' },
    { "replace", no_argument, NULL, 'r' },
    { "snapshots", no_argument, NULL, 'S' },
    { "connections", required_argument, NULL, 'C' },
    { "progress", no_argument, NULL, 'p' },
    { "no-progress", no_argument, NULL, 'P' },
    { "json", no_argument, NULL, 'j' },
    { "verbose", no_argument, NULL, 'v' },
    { NULL, 0, NULL, 0 }
  };
  struct migrate m = { .connections = 4 };
  char why[256];
  int c, progress_opt = -1, r;
  bool src_cbt;
  double t0;
  size_t i;

  optind = 0;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "vn:", long_opts, NULL)) != -1) {
    switch (c) {
    case 'n': case 's':
      if (!name_valid (optarg, why, sizeof why))
        usage_error ("migrate: bad %s '%s': %s", c == 'n' ? "--name"
                     : "--since", optarg, why);
      snprintf (c == 'n' ? m.name : m.since, sizeof m.name, "%s", optarg);
      break;
    case 'r': m.replace = true; break;
    case 'S': m.snapshots = true; break;
    case 'C':
      m.connections = atoi (optarg);
      if (m.connections < 1 || m.connections > 64)
        usage_error ("migrate: --connections must be 1 to 64");
      break;
    case 'p': progress_opt = 1; break;
    case 'P': progress_opt = 0; break;
    case 'j': opt_json = true; break;
    case 'v': opt_verbose++; break;
    default:
      usage_error ("migrate: unknown option '%s'", argv[optind - 1]);
    }
  }
  if (argc - optind != 2)
    usage_error ("usage: nbdsnap migrate SRC-URI DST-URI [--name NAME] "
                 "[--since NAME] [--replace] [--snapshots] "
                 "[--connections N]");
  if (m.snapshots && m.since[0])
    usage_error ("migrate: --snapshots and --since do not go together (the "
                 "first migration carries the snapshots)");
  m.src = argv[optind];
  m.dst = argv[optind + 1];
  check_uri (m.src);
  check_uri (m.dst);
  if (m.name[0] == '\0') {
    time_t now = time (NULL);
    strftime (m.name, sizeof m.name, "migrate-%Y%m%dT%H%M%SZ",
              gmtime (&now));
  }
  m.show_progress = progress_wanted (progress_opt);
  install_signal_handlers ();
  t0 = now_seconds ();

  if ((r = check_source (&m, &src_cbt)) != EXIT_OK ||
      (r = check_destination (&m, src_cbt)) != EXIT_OK ||
      (m.snapshots && (r = check_snapshots (&m)) != EXIT_OK))
    return r;
  if ((r = begin (&m)) != EXIT_OK)
    return r;
  if ((r = choose_chain (&m)) != EXIT_OK ||
      (m.snapshots && (r = carry_snapshots (&m)) != EXIT_OK) ||
      (r = copy_disk (&m)) != EXIT_OK ||
      (r = carry_chain (&m)) != EXIT_OK ||
      (r = end (&m)) != EXIT_OK) {
    cleanup (&m);
  }
  else
    report (&m, now_seconds () - t0);
  for (i = 0; i < m.ncarry; ++i)
    free (m.carry[i]);
  for (i = 0; i < m.nsnaps; ++i)
    free (m.snaps[i]);
  return r;
}
