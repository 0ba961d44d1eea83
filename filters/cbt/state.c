/* nbdsnap cbt filter: the state file.
 *
 * A text file in the shape of common/kvtext.h (docs/cbt-format.md
 * section 4): the magic line, then version, disk-size, granularity,
 * sync, next-id and status, in this order, then one checkpoint line per
 * checkpoint, oldest first.  The reader accepts exactly what the writer
 * writes.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "json.h"
#include "kvtext.h"
#include "statefile.h"
#include "tracker-internal.h"

#define STATE_MAGIC "nbdsnap-cbt-state"
#define STATE_VERSION 1

/* How to get out of a damaged state file. */
#define FIX "restore cbt-dir from a backup, or start with an empty " \
  "cbt-dir (checkpoints are then lost: the next backup must be full)"

/* Replace the state file with what T holds, status running or clean. */
int
save_state (bool running)
{
  struct jbuf j = { 0 };
  size_t i;
  int r, e;

  jb_printf (&j, "%s\nversion %d\ndisk-size %" PRIu64 "\ngranularity %"
             PRIu32 "\nsync %s\nnext-id %" PRIu64 "\nstatus %s\n",
             STATE_MAGIC, STATE_VERSION, T.g.disk_size, T.g.block_size,
             T.sync == CBT_SYNC_STRICT ? "strict" : "flush", T.next_id,
             running ? "running" : "clean");
  for (i = 0; i < T.ncps; ++i)
    jb_printf (&j, "checkpoint %" PRIu64 " %" PRId64 " %s %s\n",
               T.cps[i]->id, T.cps[i]->created,
               ckpt_inconsistent (T.cps[i]) ? "inconsistent" : "consistent",
               T.cps[i]->name);
  if (j.oom) {
    jb_free (&j);
    errno = ENOMEM;
    return -1;
  }
  r = kv_write_file (T.dirfd, STATE_NAME, j.p, j.len);
  e = errno;
  jb_free (&j);
  errno = e;
  return r;
}

/* Enter the failed state (see tracker-internal.h). */
void
tracker_fail (int err, const char *fmt, ...)
{
  struct ckpt *a;
  va_list ap;
  char what[160];

  va_start (ap, fmt);
  vsnprintf (what, sizeof what, fmt, ap);
  va_end (ap);
  failure_set (&T.fail, "cbt", err, "%s", what);
  if (__atomic_exchange_n (&T.fail_recorded, 1, __ATOMIC_ACQ_REL))
    return;
  /* What the next start reads must tell the truth: the active bitmap
   * may miss writes now (flush mode: bits that never reached the file;
   * either mode: pages a failed writeback lost).  The state file is a
   * new file, which the bitmap file's writeback error does not touch.
   */
  a = active_ckpt ();
  if (a == NULL)
    return;
  ckpt_set_inconsistent (a, true);
  switch (save_state (true)) {
  case 0:
    nbdkit_error ("cbt: checkpoint '%s' is now inconsistent (recorded in "
                  "%s/%s): the next backup must be full", a->name, T.dir,
                  STATE_NAME);
    break;
  case -2:
    nbdkit_error ("cbt: checkpoint '%s' is now inconsistent; %s/%s says so, "
                  "but cbt-dir could not be made durable: %m", a->name,
                  T.dir, STATE_NAME);
    break;
  default:
    nbdkit_error ("cbt: checkpoint '%s' is now inconsistent, but %s/%s "
                  "cannot say so: %m (it keeps status running: after a "
                  "restart flush mode marks it inconsistent, and in strict "
                  "mode no write passed down without its bits on disk)",
                  a->name, T.dir, STATE_NAME);
  }
}

/* Parse the value of a checkpoint line into a new checkpoint appended
 * to T.cps.  -1 with a reason in why.
 */
static int
load_ckpt (char *value, char *why, size_t whylen)
{
  char line[256], *f[4];
  struct ckpt *c, **np;

  snprintf (line, sizeof line, "checkpoint %s", value);
  np = realloc (T.cps, (T.ncps + 1) * sizeof *np);
  if (np == NULL) {
    snprintf (why, whylen, "out of memory");
    return -1;
  }
  T.cps = np;
  c = calloc (1, sizeof *c);
  if (c == NULL) {
    snprintf (why, whylen, "out of memory");
    return -1;
  }
  c->fd = -1;
  if (kv_split (value, f, 4) == -1 ||
      kv_u64 (f[0], &c->id) == -1 || kv_i64 (f[1], &c->created) == -1 ||
      (strcmp (f[2], "consistent") && strcmp (f[2], "inconsistent")) ||
      !name_valid (f[3], why, whylen) || find_ckpt (f[3]) >= 0 ||
      c->id == 0 || (T.ncps && c->id <= T.cps[T.ncps - 1]->id)) {
    free (c);
    snprintf (why, whylen, "bad checkpoint line '%s'", line);
    return -1;
  }
  c->inconsistent = strcmp (f[2], "inconsistent") == 0;
  snprintf (c->name, sizeof c->name, "%s", f[3]);
  T.cps[T.ncps++] = c;
  return 0;
}

/* Parse the lines after the magic into *st and T.cps.  -1 with a reason
 * in why.
 */
static int
parse_state (struct kv_reader *kv, struct saved_state *st,
             char *why, size_t whylen)
{
  char *v, *key;
  uint32_t version;
  int r;

  if ((v = kv_expect (kv, "version", why, whylen)) == NULL)
    return -1;
  if (kv_u32 (v, &version) == -1 || version != STATE_VERSION) {
    snprintf (why, whylen, "state version %s is not supported (supports "
              "%d)", v, STATE_VERSION);
    return -1;
  }
  if ((v = kv_expect (kv, "disk-size", why, whylen)) == NULL)
    return -1;
  if (kv_u64 (v, &st->disk_size) == -1) {
    snprintf (why, whylen, "bad disk-size '%s'", v);
    return -1;
  }
  if ((v = kv_expect (kv, "granularity", why, whylen)) == NULL)
    return -1;
  if (kv_u32 (v, &st->granularity) == -1 ||
      !geom_block_size_ok (st->granularity)) {
    snprintf (why, whylen, "invalid granularity %s", v);
    return -1;
  }
  if ((v = kv_expect (kv, "sync", why, whylen)) == NULL)
    return -1;
  if (strcmp (v, "strict") == 0)
    st->sync = CBT_SYNC_STRICT;
  else if (strcmp (v, "flush") == 0)
    st->sync = CBT_SYNC_FLUSH;
  else {
    snprintf (why, whylen, "bad sync '%s'", v);
    return -1;
  }
  if ((v = kv_expect (kv, "next-id", why, whylen)) == NULL)
    return -1;
  if (kv_u64 (v, &st->next_id) == -1 || st->next_id == 0) {
    snprintf (why, whylen, "bad next-id '%s'", v);
    return -1;
  }
  if ((v = kv_expect (kv, "status", why, whylen)) == NULL)
    return -1;
  if (strcmp (v, "running") != 0 && strcmp (v, "clean") != 0) {
    snprintf (why, whylen, "bad status '%s'", v);
    return -1;
  }
  st->running = strcmp (v, "running") == 0;

  while ((r = kv_next (kv, &key, &v, why, whylen)) == 1) {
    if (strcmp (key, "checkpoint") != 0) {
      snprintf (why, whylen, "line %u: unknown or repeated line '%s'",
                kv->line, key);
      return -1;
    }
    if (load_ckpt (v, why, whylen) == -1)
      return -1;
  }
  if (r == -1)
    return -1;
  if (T.ncps && T.cps[T.ncps - 1]->id >= st->next_id) {
    snprintf (why, whylen, "next-id is not above every checkpoint id");
    return -1;
  }
  return 0;
}

/* Check the state file text (len bytes, changed in place) and parse it
 * into *st and T.cps.  -1 after nbdkit_error.
 */
static int
load_state (char *text, size_t len, const struct tracker_config *cfg,
            struct saved_state *st)
{
  struct kv_reader kv;
  char why[512];

  if (kv_begin (&kv, text, len, STATE_MAGIC, why, sizeof why) == -1) {
    nbdkit_error ("cbt-dir %s: %s: not an nbdsnap cbt state file, or "
                  "damaged: %s; %s", T.dir, STATE_NAME, why, FIX);
    return -1;
  }
  if (parse_state (&kv, st, why, sizeof why) == -1) {
    nbdkit_error ("cbt-dir %s: %s: %s; %s", T.dir, STATE_NAME, why, FIX);
    return -1;
  }
  if (cfg->granularity && cfg->granularity != st->granularity) {
    nbdkit_error ("cbt-dir %s: tracks with cbt-granularity=%" PRIu32 ", not "
                  "%" PRIu32 "; drop the parameter, or use a new cbt-dir "
                  "(the next backup must be full)", T.dir, st->granularity,
                  cfg->granularity);
    return -1;
  }
  return 0;
}

/* Read the state file, if there is one. */
int
read_state (const struct tracker_config *cfg, struct saved_state *st)
{
  char *text;
  size_t len;
  int r;

  if (statefile_read (T.dirfd, STATE_NAME, &text, &len) == -1) {
    if (errno == ENOENT)
      return 0;
    nbdkit_error ("cbt-dir %s: cannot read %s: %m", T.dir, STATE_NAME);
    return -1;
  }
  r = load_state (text, len, cfg, st);
  free (text);
  return r == -1 ? -1 : 1;
}
