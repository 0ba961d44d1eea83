/* nbdsnap cbt filter: installing a checkpoint chain made elsewhere
 * (bitmap migration, docs/migration.md).
 *
 *   @cbt:upload/COUNT   a writable export held in memory: the client
 *                       writes a chain of COUNT checkpoints (names,
 *                       creation times, bitmaps at our geometry) into it
 *   @cbt:install/SUM[/replace]
 *                       check the upload against SUM (its SHA-256) and
 *                       install the whole chain at once: the checkpoints
 *                       become ours, the newest the active one
 *
 * The upload changes nothing on disk; the install writes every new
 * bitmap file (IDs no state names yet), then the state file naming them
 * (the commit, tmp + fsync + rename), then removes the files of the
 * checkpoints it replaced.  A crash before the commit leaves strays that
 * the next start removes, and the old checkpoints; after it, the new
 * chain.  The layout is in docs/cbt-format.md section 9.
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "install.h"
#include "lockscope.h"
#include "statefile.h"
#include "tracker-internal.h"

#define UP_MAGIC "NBDSNAPU"
#define UP_HDR 64
#define UP_REC 128
#define UP_MAX_COUNT 1000
#define UP_MAX_BYTES (256ull << 20)

/* The one staged upload of this nbdkit. */
static pthread_mutex_t up_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *up_buf;         /* NULL: nothing staged */
static uint64_t up_len;
static int up_open;             /* upload handles open on it */
static pthread_cond_t up_closed = PTHREAD_COND_INITIALIZER;

/* How long an install waits for the upload's connection to close: the
 * client closes it before sending the install, but nbdkit may run our
 * .close a moment after the next connection's first request.
 */
#define UP_CLOSE_WAIT 5

/* Bytes of one checkpoint's record: its header and payload. */
static uint64_t
rec_bytes (void)
{
  return UP_REC + payload_words (T.g.nblocks) * 8;
}

int
upload_open (const char *count, char *why, size_t whylen)
{
  uint64_t n, len;
  char *end;

  errno = 0;
  n = strtoull (count, &end, 10);
  if (errno || *end || end == count || count[0] == '0' || n == 0 ||
      n > UP_MAX_COUNT) {
    snprintf (why, whylen, "@cbt:upload/COUNT: COUNT must be 1 to %d, "
              "not '%s'", UP_MAX_COUNT, count);
    return -1;
  }
  len = UP_HDR + n * rec_bytes ();
  if (len > UP_MAX_BYTES) {
    snprintf (why, whylen, "an upload of %" PRIu64 " checkpoints would "
              "take %" PRIu64 " bytes (the limit is %llu)", n, len,
              UP_MAX_BYTES);
    return -1;
  }
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&up_lock);
  if (up_open) {
    snprintf (why, whylen, "another upload is open");
    return -1;
  }
  free (up_buf);
  up_buf = calloc (1, len);
  if (up_buf == NULL) {
    up_len = 0;
    snprintf (why, whylen, "out of memory");
    return -1;
  }
  up_len = len;
  up_open = 1;
  return 0;
}

void
upload_close (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&up_lock);
  up_open = 0;
  pthread_cond_broadcast (&up_closed);
}

void
upload_free (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&up_lock);
  free (up_buf);
  up_buf = NULL;
  up_len = 0;
}

int64_t
upload_size (void)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&up_lock);
  return up_len;
}

int
upload_rw (void *buf, uint32_t count, uint64_t offset, bool write, int *err)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&up_lock);
  if (up_buf == NULL || offset > up_len || count > up_len - offset) {
    *err = EINVAL;
    return -1;
  }
  if (write)
    memcpy (up_buf + offset, buf, count);
  else
    memcpy (buf, up_buf + offset, count);
  return 0;
}

/* Are the n bytes at p zero? */
static bool
zeroes (const uint8_t *p, size_t n)
{
  while (n--)
    if (*p++)
      return false;
  return true;
}

/* Free the k checkpoints of v (and v). */
static void
free_chain (struct ckpt **v, size_t k)
{
  size_t i;

  for (i = 0; i < k; ++i)
    ckpt_free (v[i]);
  free (v);
}

/* Parse the staged upload (checked against its sum) into *out, *nout:
 * new checkpoints with IDs from T.next_id.  command_fail on bad input.
 */
static int
parse_upload (struct command *cmd, struct ckpt ***out, size_t *nout)
{
  uint64_t n, nw = payload_words (T.g.nblocks), i, w;
  const uint8_t *p = up_buf;
  struct ckpt **v;
  char why[256];

  if (memcmp (p, UP_MAGIC, 8) != 0 || get_le32 (p + 8) != 1)
    return command_fail (cmd, "EINVAL", "the upload is not a checkpoint "
                         "chain (bad magic or version)");
  if (get_le32 (p + 12) != T.g.block_size ||
      get_le64 (p + 16) != T.g.nblocks || get_le64 (p + 24) != T.g.disk_size)
    return command_fail (cmd, "EINVAL", "the upload is for granularity "
                         "%" PRIu32 ", %" PRIu64 " blocks, disk size %"
                         PRIu64 "; this disk has granularity %" PRIu32
                         ", %" PRIu64 " blocks, size %" PRIu64,
                         get_le32 (p + 12), get_le64 (p + 16),
                         get_le64 (p + 24), T.g.block_size, T.g.nblocks,
                         T.g.disk_size);
  n = get_le64 (p + 32);
  if (n == 0 || UP_HDR + n * rec_bytes () != up_len ||
      !zeroes (p + 40, UP_HDR - 40))
    return command_fail (cmd, "EINVAL", "the upload's count (%" PRIu64
                         ") does not fit its size", n);
  v = calloc (n, sizeof *v);
  if (v == NULL)
    return command_fail (cmd, "ENOMEM", "out of memory");
  for (i = 0; i < n; ++i) {
    const uint8_t *r = p + UP_HDR + i * rec_bytes ();
    const uint8_t *pl = r + UP_REC;
    struct ckpt *c;
    uint64_t j;

    /* The name: NUL-padded in bytes 8..79, at most 64 characters. */
    if (!zeroes (r + 8 + NAME_MAX_LEN, UP_REC - 8 - NAME_MAX_LEN) ||
        memchr (r + 8, 0, NAME_MAX_LEN + 1) == NULL) {
      free_chain (v, i);
      return command_fail (cmd, "EINVAL", "record %" PRIu64 " of the "
                           "upload is malformed", i);
    }
    if (!name_valid ((const char *) r + 8, why, sizeof why)) {
      free_chain (v, i);
      return command_fail (cmd, "EINVAL", "record %" PRIu64 ": %s", i, why);
    }
    for (j = 0; j < i; ++j)
      if (strcmp (v[j]->name, (const char *) r + 8) == 0) {
        command_fail (cmd, "EINVAL", "checkpoint '%s' is twice in the "
                      "upload", v[j]->name);
        free_chain (v, i);
        return -1;
      }
    c = calloc (1, sizeof *c);
    if (c == NULL || sbm_init (&c->bits, T.g.nblocks) == -1) {
      free (c);
      free_chain (v, i);
      return command_fail (cmd, "ENOMEM", "out of memory");
    }
    c->fd = -1;
    c->id = T.next_id + i;
    c->created = (int64_t) get_le64 (r);
    snprintf (c->name, sizeof c->name, "%s", (const char *) r + 8);
    v[i] = c;
    /* Bits beyond the last block must be zero (docs/cbt-format.md 5.1). */
    if (T.g.nblocks % 64 &&
        get_le64 (pl + 8 * (nw - 1)) >> (T.g.nblocks % 64) != 0) {
      command_fail (cmd, "EINVAL", "the bitmap of '%s' has bits beyond "
                    "the end of the disk", c->name);
      free_chain (v, i + 1);
      return -1;
    }
    /* Leaves only where a word is not zero. */
    for (w = 0; w < nw; ++w) {
      uint64_t x = get_le64 (pl + 8 * w), *leaf;
      if (x == 0)
        continue;
      leaf = sbm_leaf_alloc (&c->bits, w / LEAF_WORDS);
      if (leaf == NULL) {
        free_chain (v, i + 1);
        return command_fail (cmd, "ENOMEM", "out of memory");
      }
      leaf[w % LEAF_WORDS] = x;
    }
  }
  *out = v;
  *nout = n;
  return 0;
}

/* An error that cannot be undone: the failed state, EIO. */
static int
install_fail_hard (struct command *cmd, int e, const char *what)
{
  tracker_fail (e, "%s", what);
  return command_fail (cmd, "EIO", "%s: %s; the cbt filter takes no more "
                       "changes until nbdkit is restarted (see FAILURES in "
                       "nbdkit-cbt-filter(1))", what, strerror (e));
}

/* Remove the files of the k new checkpoints of v written so far. */
static void
unlink_new (struct ckpt **v, size_t k)
{
  size_t i;

  for (i = 0; i < k; ++i)
    if (bm_unlink (v[i]->id) == -1)
      nbdkit_error ("cbt: cannot remove the unused bitmap %" PRIu64 ": %m "
                    "(no state names it: it is removed at the next start)",
                    v[i]->id);
}

/* With the gate held and the list write-locked: write the files of the
 * chain v (n checkpoints), commit it in the state file, drop the old
 * list.  On failure the old list and its files are as they were.
 */
static int
commit_chain (struct command *cmd, struct ckpt **v, size_t n)
{
  struct ckpt **old = T.cps;
  size_t nold = T.ncps, i;
  int r, e;

  /* 1. Every bitmap file: sealed, the newest open. */
  for (i = 0; i < n; ++i) {
    r = bm_write (v[i], NULL, i + 1 < n);
    e = errno;
    if (r == -2) {
      unlink_new (v, i + 1);
      return install_fail_hard (cmd, e, "a bitmap of the installed chain is "
                                "in place, but cbt-dir could not be made "
                                "durable");
    }
    if (r == -1) {
      unlink_new (v, i);
      return command_fail_errno (cmd, e, "cannot write the bitmap of '%s'",
                                 v[i]->name);
    }
  }
  if (bm_open (v[n - 1]) == -1) {
    e = errno;
    unlink_new (v, n);
    return command_fail_errno (cmd, e, "cannot open the bitmap of '%s'",
                               v[n - 1]->name);
  }
  /* 2. The state names the new chain: the commit. */
  T.cps = v;
  T.ncps = n;
  T.next_id += n;
  r = save_state (true);
  e = errno;
  if (r == -1) {
    T.cps = old;
    T.ncps = nold;
    close (v[n - 1]->fd);
    v[n - 1]->fd = -1;
    unlink_new (v, n);
    return command_fail_errno (cmd, e, "cannot write the state file");
  }
  bm_make_active (v[n - 1]);
  /* 3. The replaced checkpoints' files go (strays if this fails). */
  for (i = 0; i < nold; ++i) {
    if (r == 0 && bm_unlink (old[i]->id) == -1)
      nbdkit_error ("cbt: cannot remove the bitmap of the replaced "
                    "checkpoint '%s': %m (removed at the next start)",
                    old[i]->name);
    ckpt_free (old[i]);
  }
  free (old);
  if (r == -2)
    return install_fail_hard (cmd, e, "the state file naming the installed "
                              "chain is in place, but cbt-dir could not be "
                              "made durable");
  return 0;
}

int
tracker_cmd_install (struct command *cmd, const char *sum, const char *how)
{
  uint8_t want[SHA256_LEN], got[SHA256_LEN];
  bool replace = false;
  struct ckpt **v = NULL;
  size_t n = 0, i;
  int r;

  if (how && strcmp (how, "replace") != 0)
    return command_fail (cmd, "EINVAL", "@cbt:install/SUM: the only option "
                         "is 'replace', not '%s'", how);
  replace = how != NULL;
  if (strlen (sum) != 2 * SHA256_LEN ||
      hex_decode (sum, want, SHA256_LEN) == -1)
    return command_fail (cmd, "EINVAL", "@cbt:install/SUM: SUM must be the "
                         "SHA-256 of the upload, 64 hexadecimal digits");

  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&T.cmd_lock);
  if (failure_check_command (&T.fail, cmd) == -1)
    return -1;
  {
    ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&up_lock);
    if (up_buf == NULL)
      return command_fail (cmd, "ENOENT", "nothing was uploaded "
                           "(@cbt:upload/COUNT)");
    if (up_open) {
      struct timespec until;
      clock_gettime (CLOCK_REALTIME, &until);
      until.tv_sec += UP_CLOSE_WAIT;
      while (up_open &&
             pthread_cond_timedwait (&up_closed, &up_lock, &until) == 0)
        ;
    }
    if (up_open)
      return command_fail (cmd, "EBUSY", "the upload is still open "
                           "(after %d s)", UP_CLOSE_WAIT);
    if (sha256_buf (up_buf, up_len, got) == -1)
      return command_fail (cmd, "EIO", "cannot compute SHA-256");
    if (memcmp (want, got, SHA256_LEN) != 0)
      return command_fail (cmd, "EINVAL", "the upload does not match its "
                           "SHA-256: incomplete or damaged; upload it again");
    if (T.ncps && !replace)
      return command_fail (cmd, "EEXIST", "this disk already has %zu "
                           "checkpoint(s) (the newest is '%s'); "
                           "@cbt:install/SUM/replace drops them", T.ncps,
                           active_ckpt ()->name);
    if (parse_upload (cmd, &v, &n) == -1)
      return -1;
    {
      GATE_HOLD_FOR_CURRENT_SCOPE (&T.gate);
      ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&T.rw);
      if (failure_check_command (&T.fail, cmd) == -1)
        r = -1;
      else
        r = commit_chain (cmd, v, n);
      if (r == -1 && T.cps != v) {
        free_chain (v, n);
        return -1;
      }
    }
    free (up_buf);
    up_buf = NULL;
    up_len = 0;
    if (r == -1)
      return -1;
  }
  nbdkit_debug ("cbt: %zu checkpoint(s) installed", n);
  jb_printf (&cmd->body, ",\"replaced\":%s,\"installed\":[",
             replace ? "true" : "false");
  for (i = 0; i < n; ++i) {
    if (i) jb_printf (&cmd->body, ",");
    jb_str (&cmd->body, v[i]->name);
  }
  jb_printf (&cmd->body, "]");
  return 0;
}
