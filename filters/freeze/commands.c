/* nbdsnap freeze filter: the begin, end and list commands. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <nbdkit-filter.h>

#include "filesize.h"
#include "command.h"
#include "lockscope.h"
#include "points-internal.h"

/* Is json (len bytes) a command result whose "ok" is true?  Any other
 * document, valid or not, is no.
 */
static bool
result_ok (const char *json, size_t len)
{
  json_tokener *tok = json_tokener_new ();
  json_object *doc = NULL, *ok;
  bool r = false;

  if (tok == NULL)
    return false;
  doc = json_tokener_parse_ex (tok, json, len);
  if (doc && json_tokener_get_error (tok) == json_tokener_success &&
      json_tokener_get_parse_end (tok) == len &&
      json_object_is_type (doc, json_type_object) &&
      json_object_object_get_ex (doc, "ok", &ok) &&
      json_object_is_type (ok, json_type_boolean))
    r = json_object_get_boolean (ok);
  json_object_put (doc);
  json_tokener_free (tok);
  return r;
}

/* Ask a cbt filter below to create checkpoint name.  1: made; 0: there
 * is no cbt filter below; -1: it refused (why says why).
 */
static int
make_checkpoint (nbdkit_backend *backend, const char *name,
                 char *why, size_t whylen)
{
  char ex[NAME_MAX_LEN + 32];
  nbdkit_next *next;
  const char *d;
  char *json = NULL;
  int64_t size;
  int err = 0, r = -1;

  snprintf (ex, sizeof ex, "@cbt:create/%s", name);
  next = nbdkit_next_context_open (backend, 0, ex, 1);
  if (next == NULL)
    return 0;
  if (next->prepare (next) == -1) {
    nbdkit_next_context_close (next);
    return 0;
  }
  d = next->export_description (next);
  if (d == NULL || strncmp (d, "nbdsnap:cbt", 11) != 0) {
    r = 0;
    goto fin;
  }
  size = next->get_size (next);
  if (size <= 0 || size > 65536 || (json = calloc (1, size + 1)) == NULL ||
      next->pread (next, json, size, 0, 0, &err) == -1) {
    snprintf (why, whylen, "cannot read the cbt filter's answer");
    goto fin;
  }
  /* The document ends in a newline, which is whitespace to a parser. */
  while (size > 0 && json[size - 1] == '\n')
    json[--size] = '\0';
  if (result_ok (json, size))
    r = 1;
  else {
    json[strcspn (json, "\n")] = '\0';
    snprintf (why, whylen, "the cbt filter refused the checkpoint: %s",
              json);
  }
 fin:
  next->finalize (next);
  nbdkit_next_context_close (next);
  free (json);
  return r;
}

static void
json_point (struct jbuf *j, struct point *p)
{
  bool failed = point_failed (p);

  jb_printf (j, "{\"name\":");
  jb_str (j, p->name);
  jb_printf (j, ",\"created\":");
  jb_time (j, p->created);
  jb_printf (j, ",\"checkpoint\":%s,\"scratch_bytes\":%" PRIu64
             ",\"aborted\":%s,\"error\":",
             p->checkpoint ? "true" : "false",
             __atomic_load_n (&p->used, __ATOMIC_RELAXED),
             failed ? "true" : "false");
  jb_str (j, failed ? p->failure : NULL);
  jb_printf (j, "}");
}

/* A new point called name with its scratch file (P.lock held). */
static struct point *
point_new (struct command *c, const char *name)
{
  struct point *p = calloc (1, sizeof *p);

  if (p == NULL || bitset_init (&p->saved, P.g.nblocks) == -1) {
    free (p);
    command_fail (c, "ENOMEM", "out of memory");
    return NULL;
  }
  p->refs = 1;
  p->created = time (NULL);
  snprintf (p->name, sizeof p->name, "%s", name);
  if (scratch_open (p) == -1) {
    int e = errno;
    if (e == EFBIG)
      command_fail (c, "EFBIG", "cannot create scratch space in freeze-dir: "
                    "its file system cannot hold even one block, or the "
                    "disk would need more than "
                    FILESIZE_STR (FILESIZE_MAX_SEGS) " scratch files (a "
                    "file size limit, ulimit -f?)");
    else
      command_fail_errno (c, e, "cannot create scratch space in freeze-dir");
    point_free (p);
    return NULL;
  }
  return p;
}

/* Freeze at this instant, with a cbt checkpoint of the same name if a
 * cbt filter is below (gate held: no write is in flight).
 */
static int
begin_held (struct command *c, struct point *p, nbdkit_backend *backend,
            bool cbt_below)
{
  struct point **np;
  char buf[256];
  int cp = 0;

  if (cbt_below)
    cp = make_checkpoint (backend, p->name, buf, sizeof buf);
  if (cp == -1)
    return command_fail (c, "EIO", "%s", buf);
  p->checkpoint = cp == 1;
  {
    ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&P.rw);
    np = realloc (P.pts, (P.npts + 1) * sizeof *np);
    if (np == NULL)
      return command_fail (c, "ENOMEM", "out of memory%s", cp == 1 ?
                           " (the checkpoint was made; delete it with "
                           "@cbt:delete)" : "");
    P.pts = np;
    P.pts[P.npts] = p;
    __atomic_store_n (&P.npts, P.npts + 1, __ATOMIC_RELEASE);
  }
  return 0;
}

int
points_cmd_begin (struct command *c, const char *name,
                  nbdkit_backend *backend, bool cbt_below)
{
  struct point *p;
  char buf[256];
  int r;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&P.lock);

  if (!name_valid (name, buf, sizeof buf))
    return command_fail (c, "EINVAL", "%s", buf);
  if (point_find (name))
    return command_fail (c, "EEXIST", "frozen point '%s' already exists",
                         name);
  p = point_new (c, name);
  if (p == NULL)
    return -1;

  /* One instant for the checkpoint and the frozen point: no write is in
   * flight through this filter while both happen.
   */
  gate_hold (&P.gate);
  r = begin_held (c, p, backend, cbt_below);
  gate_release (&P.gate);
  if (r == -1) {
    point_free (p);
    return -1;
  }
  nbdkit_debug ("freeze: frozen point '%s'%s", name,
                p->checkpoint ? " with checkpoint" : "");
  jb_printf (&c->body, ",\"point\":");
  json_point (&c->body, p);
  return 0;
}

/* Seconds end waits for the views of a point to close. */
#define END_WAIT 3

/* Wait (P.lock held) up to END_WAIT seconds until p has no open view. */
static void
wait_views_closed (struct point *p)
{
  struct timespec until;

  clock_gettime (CLOCK_REALTIME, &until);
  until.tv_sec += END_WAIT;
  while (p->refs > 1)
    if (pthread_cond_timedwait (&P.unref, &P.lock, &until) != 0)
      break;
}

int
points_cmd_end (struct command *c, const char *name)
{
  struct point *p;
  char buf[256];
  size_t i;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&P.lock);

  if (!name_valid (name, buf, sizeof buf))
    return command_fail (c, "EINVAL", "%s", buf);
  p = point_find (name);
  if (p == NULL)
    return command_fail (c, "ENOENT", "no frozen point '%s'", name);
  {
    ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&P.rw);
    for (i = 0; P.pts[i] != p; ++i)
      ;
    memmove (&P.pts[i], &P.pts[i + 1], (P.npts - i - 1) * sizeof *P.pts);
    __atomic_store_n (&P.npts, P.npts - 1, __ATOMIC_RELEASE);
  }
  /* A client that has just closed its view may not be closed on this
   * side yet: give views that are going away a moment to go.
   */
  wait_views_closed (p);
  jb_printf (&c->body, ",\"point\":");
  json_point (&c->body, p);
  if (p->refs > 1) {
    /* Views still open would now see later writes: make them fail.  No
     * writer can save into p any more (it is out of the list), so its
     * scratch space goes at once.
     */
    point_fail (p, "the backup was ended while this view was open", 0);
    point_release_scratch (p);
  }
  point_unref (p);
  return 0;
}

int
points_cmd_list (struct command *c)
{
  size_t i;
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&P.lock);

  jb_printf (&c->body, ",\"block_size\":%" PRIu32 ",\"max_size\":%" PRIu64
             ",\"points\":[", P.g.block_size, P.max_size);
  for (i = 0; i < P.npts; ++i) {
    if (i) jb_printf (&c->body, ",");
    json_point (&c->body, P.pts[i]);
  }
  jb_printf (&c->body, "]");
  return 0;
}
