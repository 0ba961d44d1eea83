/* nbdsnap tool: migrate: carrying the source's checkpoints to the
 * destination.
 *
 * Checkpoint Ci's bitmap holds the blocks written from Ci until the
 * next checkpoint; the newest carried checkpoint is the one the migrate
 * made at the instant it copied, so its bitmap is empty.  Each map comes
 * from the source's @cbt:diff/Ci/C(i+1) (a change map in byte extents:
 * `hole` = unchanged), is turned into bits at the destination's
 * granularity (a destination block is marked if any byte of it changed:
 * never fewer blocks), and the whole chain goes in one upload
 * (@cbt:upload/COUNT), installed at once by @cbt:install/SUM
 * (docs/cbt-format.md section 9).
 */
#include <config.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "migrate.h"
#include "minmax.h"
#include "statefile.h"

#define UP_HDR 64
#define UP_REC 128
#define UP_CHUNK (4u << 20)

/* "2026-11-25T18:51:54Z" into seconds since the epoch (0 if not one). */
static int64_t
parse_time (const char *s)
{
  struct tm tm;
  const char *end;

  memset (&tm, 0, sizeof tm);
  if (s == NULL || (end = strptime (s, "%Y-%m-%dT%H:%M:%SZ", &tm)) == NULL ||
      *end)
    return 0;
  return timegm (&tm);
}

int
choose_chain (struct migrate *m)
{
  char err[ERRLEN];
  struct result res;
  struct json_object *c;
  size_t n, i, first;
  bool consistent;

  if (!m->made_checkpoint)
    return EXIT_OK;             /* no cbt filter on the source */
  if (run_command (m->src, "@cbt:list", &res, err, sizeof err) != CMD_DONE)
    return fail (EXIT_FAILED, "cannot list the source's checkpoints: %s",
                 err);
  if (!res.ok) {
    result_error (res.root, err, sizeof err);
    result_free (&res);
    return fail (EXIT_FAILED, "cannot list the source's checkpoints: %s",
                 err);
  }
  n = jlen (res.root, "checkpoints");
  c = n ? jat (res.root, "checkpoints", n - 1) : NULL;
  if (n == 0 || jstr (c, "name") == NULL ||
      strcmp (jstr (c, "name"), m->name) != 0) {
    result_free (&res);
    return fail (EXIT_FAILED, "checkpoint '%s' that this migration made is "
                 "not the source's newest (another client made one at the "
                 "same time?)", m->name);
  }
  /* "consistent" is true for a checkpoint when every bitmap from it on
   * can be trusted: the consistent ones are the newest few.
   */
  first = n;
  while (first > 0) {
    consistent = false;
    jbool (jat (res.root, "checkpoints", first - 1), "consistent",
           &consistent);
    if (!consistent)
      break;
    first--;
  }
  if (n - first > MIG_MAX_CKPTS)
    first = n - MIG_MAX_CKPTS;
  m->skipped = first;
  for (i = first; i < n; ++i) {
    c = jat (res.root, "checkpoints", i);
    m->carry[m->ncarry] = strdup (jstr (c, "name") ? jstr (c, "name") : "");
    m->created[m->ncarry] = parse_time (jstr (c, "created"));
    if (m->carry[m->ncarry] == NULL) {
      result_free (&res);
      return fail (EXIT_FAILED, "out of memory");
    }
    m->ncarry++;
  }
  result_free (&res);
  if (m->skipped)
    msg ("note: %zu older checkpoint(s) of the source are not consistent "
         "(an unclean stop with cbt-sync=flush) and are not carried",
         m->skipped);
  return EXIT_OK;
}

/* Mark in bits (granularity g) every block the change map from checkpoint
 * since to until touches.  -1 with err set.
 */
static int
read_map (struct migrate *m, const char *since, const char *until,
          uint8_t *bits, uint32_t g, char *err, size_t errlen)
{
  char ex[256], e2[ERRLEN];
  struct nbd_handle *h;
  struct extent *v = NULL;
  size_t n = 0, i;
  uint64_t b, last;

  snprintf (ex, sizeof ex, "@cbt:diff/%s/%s", since, until);
  h = connect_export (m->src, ex, true, NULL, e2, sizeof e2);
  if (h == NULL) {
    snprintf (err, errlen, "cannot open %s on the source: %.700s", ex, e2);
    return -1;
  }
  if (!nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) ||
      nbd_get_size (h) != (int64_t) m->size ||
      get_extents (h, m->size, &v, &n, e2, sizeof e2) == -1) {
    snprintf (err, errlen, "cannot read the change map %s: %.700s", ex,
              nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) ?
              e2 : "no base:allocation");
    disconnect (h);
    free (v);
    return -1;
  }
  disconnect (h);
  for (i = 0; i < n; ++i) {
    if (v[i].type == LIBNBD_STATE_HOLE || v[i].length == 0)
      continue;                 /* unchanged */
    last = (v[i].offset + v[i].length - 1) / g;
    for (b = v[i].offset / g; b <= last; ++b) {
      bits[b / 8] |= 1u << (b % 8);
      m->map_blocks++;
    }
  }
  free (v);
  return 0;
}

/* Write the len bytes of buf into @cbt:upload/count on the destination. */
static int
upload (struct migrate *m, const uint8_t *buf, uint64_t len, size_t count,
        char *err, size_t errlen)
{
  char ex[64], e2[ERRLEN];
  struct nbd_handle *h;
  uint64_t off;
  int r = 0;

  snprintf (ex, sizeof ex, "@cbt:upload/%zu", count);
  h = connect_export (m->dst, ex, false, NULL, e2, sizeof e2);
  if (h == NULL) {
    snprintf (err, errlen, "the destination refused %s: %.900s", ex, e2);
    return -1;
  }
  if (nbd_get_size (h) != (int64_t) len) {
    snprintf (err, errlen, "the destination's upload has %" PRId64
              " bytes, not %" PRIu64 " (another geometry?)",
              nbd_get_size (h), len);
    disconnect (h);
    return -1;
  }
  for (off = 0; off < len && r == 0; off += UP_CHUNK)
    r = nbd_pwrite (h, buf + off, min64 (UP_CHUNK, len - off), off, 0);
  if (r == 0)
    r = nbd_flush (h, 0);
  if (r == -1)
    snprintf (err, errlen, "uploading the checkpoints: %s", nbd_get_error ());
  if (r == 0 && nbd_shutdown (h, 0) == -1) {
    snprintf (err, errlen, "closing the upload: %s", nbd_get_error ());
    r = -1;
  }
  nbd_close (h);
  return r;
}

int
carry_chain (struct migrate *m)
{
  uint32_t g = m->dst_gran;
  uint64_t nblocks, payload, rec, len;
  uint8_t *buf, sum[SHA256_LEN];
  char hex[2 * SHA256_LEN + 1], ex[160], err[ERRLEN];
  struct result res;
  enum command_status st;
  size_t i;

  /* Nothing to carry (then the destination may have no cbt filter, and
   * no granularity).
   */
  if (m->ncarry == 0)
    return EXIT_OK;
  nblocks = (m->size + g - 1) / g;
  payload = 8 * ((nblocks + 63) / 64);
  rec = UP_REC + payload;
  len = UP_HDR + m->ncarry * rec;
  buf = calloc (1, len);
  if (buf == NULL)
    return fail (EXIT_FAILED, "out of memory (%" PRIu64 " bytes of "
                 "bitmaps)", len);
  memcpy (buf, "NBDSNAPU", 8);
  put_le32 (buf + 8, 1);
  put_le32 (buf + 12, g);
  put_le64 (buf + 16, nblocks);
  put_le64 (buf + 24, m->size);
  put_le64 (buf + 32, m->ncarry);
  for (i = 0; i < m->ncarry; ++i) {
    uint8_t *r = buf + UP_HDR + i * rec;
    put_le64 (r, (uint64_t) m->created[i]);
    memcpy (r + 8, m->carry[i], strlen (m->carry[i]));
    if (i + 1 < m->ncarry &&
        read_map (m, m->carry[i], m->carry[i + 1], r + UP_REC, g, err,
                  sizeof err) == -1) {
      free (buf);
      return fail (EXIT_FAILED, "%s", err);
    }
  }
  if (sha256_buf (buf, len, sum) == -1) {
    free (buf);
    return fail (EXIT_FAILED, "cannot compute SHA-256");
  }
  hex_encode (sum, SHA256_LEN, hex);
  if (upload (m, buf, len, m->ncarry, err, sizeof err) == -1) {
    free (buf);
    return fail (EXIT_FAILED, "%s", err);
  }
  free (buf);
  snprintf (ex, sizeof ex, "@cbt:install/%s%s", hex,
            m->replace ? "/replace" : "");
  st = run_command (m->dst, ex, &res, err, sizeof err);
  if (st != CMD_DONE)
    return fail (EXIT_FAILED, "installing the checkpoints on the "
                 "destination%s: %s", st == CMD_LOST ? " (its outcome is "
                 "unknown: see 'nbdsnap checkpoint list DST')" : "", err);
  if (!res.ok) {
    result_error (res.root, err, sizeof err);
    result_free (&res);
    return fail (EXIT_FAILED, "the destination refused the checkpoints: %s",
                 err);
  }
  result_free (&res);
  m->installed = true;
  verbose ("%zu checkpoint(s) installed on the destination", m->ncarry);
  return EXIT_OK;
}
