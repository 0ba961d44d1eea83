/* nbdsnap filters: the filters' shared handle part and its callbacks. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "filterhandle.h"
#include "policy.h"

void
fh_close (void *handle)
{
  struct filter_handle *fh = handle;

  free (fh->json);
  free (fh);
}

int
fh_command (struct filter_handle *fh, const char *filter, unsigned policy,
            const struct export_name *en, int readonly, int is_tls,
            fh_perform_fn *perform, void *opaque)
{
  struct command c = { .filter = filter, .verb = en->verb };
  int r = -1;

  fh->kind = COMMAND;
  if (command_allowed (&c, strcmp (en->verb, "list") != 0, policy, readonly,
                       is_tls) == 0) {
    policy_thread_tls (is_tls);         /* for commands it opens below */
    r = perform (&c, en, opaque);
    policy_thread_tls (0);
  }
  command_finish (&c, r, &fh->json, &fh->json_len);
  if (fh->json == NULL) {
    nbdkit_error ("%s: out of memory", filter);
    return -1;
  }
  snprintf (fh->desc, sizeof fh->desc, "nbdsnap:%s command %s", filter,
            en->verb);
  return 0;
}

struct views {
  struct nbdkit_exports *exports;
  const char *filter, *before, *after;
};

static void
add_view (const char *name, void *opaque)
{
  const struct views *v = opaque;
  char buf[NAME_MAX_LEN + 16], desc[NAME_MAX_LEN + 64];

  snprintf (buf, sizeof buf, "@%s/%s", v->filter, name);
  snprintf (desc, sizeof desc, "%s%s%s", v->before, name, v->after);
  nbdkit_add_export (v->exports, buf, desc);
}

int
fh_list_views (nbdkit_next_list_exports *next, nbdkit_backend *nxdata,
               int readonly, struct nbdkit_exports *exports,
               fh_foreach_fn *foreach, const char *filter,
               const char *before, const char *after)
{
  struct views v = { exports, filter, before, after };

  if (next (nxdata, readonly, exports) == -1)
    return -1;
  foreach (add_view, &v);
  return 0;
}

int
fh_thread_model (void)
{
  return NBDKIT_THREAD_MODEL_PARALLEL;
}

int64_t
fh_get_size (nbdkit_next *next, void *handle)
{
  struct filter_handle *fh = handle;

  return fh->kind == COMMAND ? (int64_t) fh->json_len : next->get_size (next);
}

const char *
fh_export_description (nbdkit_next *next, void *handle)
{
  struct filter_handle *fh = handle;

  if ((fh->kind == LIVE || fh->kind == PASS) && next)
    return next->export_description (next);
  /* fh->desc lives as long as the handle, which is what nbdkit asks.
   * Not nbdkit_strdup_intern: in nbdkit 1.32 a string interned in a
   * shared context (nbdkit_next_context_open with shared=1, as the
   * freeze filter opens the cbt change maps) goes to a global list
   * that has no lock, so two connections doing it at once corrupt the
   * heap (ASan: double free in add_intern's realloc).
   */
  return fh->desc;
}

int
fh_block_size (nbdkit_next *next, void *handle, uint32_t *minimum,
               uint32_t *preferred, uint32_t *maximum)
{
  struct filter_handle *fh = handle;

  if (fh->kind == COMMAND) {
    *minimum = *preferred = *maximum = 0;
    return 0;
  }
  return next->block_size (next, minimum, preferred, maximum);
}

int
fh_pread (nbdkit_next *next, void *handle, void *buf, uint32_t count,
          uint64_t offset, uint32_t flags, int *err)
{
  struct filter_handle *fh = handle;

  if (fh->kind == COMMAND)
    return command_pread (fh->json, fh->json_len, buf, count, offset, err);
  return next->pread (next, buf, count, offset, flags, err);
}

int
fh_extents (nbdkit_next *next, void *handle, uint32_t count,
            uint64_t offset, uint32_t flags,
            struct nbdkit_extents *extents, int *err)
{
  struct filter_handle *fh = handle;

  if (fh->kind == COMMAND)
    return nbdkit_add_extent (extents, offset, count, 0);
  return next->extents (next, count, offset, flags, extents, err);
}

int
fh_cache (nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
          uint32_t flags, int *err)
{
  return next->cache (next, count, offset, flags, err);
}

#define PASSTHRU_OR(name, view_value, cmd_value)                        \
  int                                                                   \
  fh_##name (nbdkit_next *next, void *handle)                           \
  {                                                                     \
    struct filter_handle *fh = handle;                                  \
    if (fh->kind == COMMAND) return (cmd_value);                        \
    if (fh->kind == VIEW) return (view_value);                          \
    return next->name (next);                                           \
  }
PASSTHRU_OR (can_write, 0, 0)
PASSTHRU_OR (can_flush, 0, 0)
PASSTHRU_OR (is_rotational, next->is_rotational (next), 0)
PASSTHRU_OR (can_trim, 0, 0)
PASSTHRU_OR (can_zero, NBDKIT_ZERO_NONE, NBDKIT_ZERO_NONE)
PASSTHRU_OR (can_fast_zero, 0, 0)
PASSTHRU_OR (can_fua, NBDKIT_FUA_NONE, NBDKIT_FUA_NONE)
PASSTHRU_OR (can_multi_conn, 1, 0)
PASSTHRU_OR (can_cache, NBDKIT_CACHE_NONE, NBDKIT_CACHE_NONE)
PASSTHRU_OR (can_extents, 1, 0)
