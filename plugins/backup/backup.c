/* nbdkit backup plugin: serve one restore point of an nbdsnap backup
 * repository, read-only.
 *
 *   nbdkit backup repo=DIR point=NAME
 *
 * All repository access goes through repo/repo.h: the point's chain is
 * loaded once (configuration time), each block's owner is found through
 * the reader's per-block map, and every block read is checked against its
 * SHA-256 (a mismatch is EIO, never wrong data).
 */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "repo.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *repo_path;                 /* repo= */
static char *point_name;                /* point= */
static struct repo *repo;
static struct repo_reader *reader;
static uint32_t block_size;
static char description[256];

static void
backup_unload (void)
{
  repo_reader_close (reader);
  repo_close (repo);
  free (repo_path);
  free (point_name);
}

static int
backup_config (const char *key, const char *value)
{
  char **dst;

  if (strcmp (key, "repo") == 0)
    dst = &repo_path;
  else if (strcmp (key, "point") == 0)
    dst = &point_name;
  else {
    nbdkit_error ("unknown parameter '%s' (the backup plugin takes "
                  "repo=DIR and point=NAME)", key);
    return -1;
  }
  if (*dst != NULL) {
    nbdkit_error ("%s= given more than once", key);
    return -1;
  }
  *dst = strdup (value);
  if (*dst == NULL) {
    nbdkit_error ("strdup: %m");
    return -1;
  }
  return 0;
}

/* Open the repository and the point here, before nbdkit starts serving,
 * so that a missing repository, unknown point or damaged chain stops
 * nbdkit with a clear message.
 */
static int
backup_config_complete (void)
{
  char err[1024];

  if (repo_path == NULL || point_name == NULL) {
    nbdkit_error ("%s%s%s missing: use nbdkit backup repo=DIR point=NAME "
                  "('nbdsnap list DIR' shows the points)",
                  repo_path ? "" : "repo=",
                  !repo_path && !point_name ? " and " : "",
                  point_name ? "" : "point=");
    return -1;
  }
  repo = repo_open (repo_path, err, sizeof err);
  if (repo == NULL) {
    nbdkit_error ("%s", err);
    return -1;
  }
  reader = repo_reader_open (repo, point_name, err, sizeof err);
  if (reader == NULL) {
    nbdkit_error ("%s", err);
    return -1;
  }
  block_size = repo_reader_block_size (reader);
  snprintf (description, sizeof description, "restore point %s of %s",
            point_name, repo_path);
  nbdkit_debug ("backup: serving point %s: %" PRIu64 " bytes, %" PRIu64
                " blocks of %" PRIu32, point_name, repo_reader_size (reader),
                repo_reader_blocks (reader), block_size);
  return 0;
}

#define backup_config_help \
  "repo=DIR       (required) The backup repository.\n" \
  "point=NAME     (required) The restore point to serve."

static void *
backup_open (int readonly)
{
  return NBDKIT_HANDLE_NOT_NEEDED;
}

static int64_t
backup_get_size (void *handle)
{
  return repo_reader_size (reader);
}

static const char *
backup_export_description (void *handle)
{
  return description;
}

static int
backup_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                   uint32_t *maximum)
{
  *minimum = 1;
  *preferred = block_size;
  *maximum = 0xffffffff;
  return 0;
}

static int
backup_can_write (void *handle)
{
  return 0;
}

static int
backup_can_extents (void *handle)
{
  return 1;
}

static int
backup_can_multi_conn (void *handle)
{
  return 1;
}

static int
backup_can_cache (void *handle)
{
  return NBDKIT_CACHE_NONE;
}

/* Read one block into out (its whole length); -1 after nbdkit_error. */
static int
read_block (uint64_t b, void *out)
{
  char err[1024];

  if (repo_reader_read (reader, b, out, err, sizeof err) == -1) {
    nbdkit_error ("%s", err);
    nbdkit_set_error (EIO);
    return -1;
  }
  return 0;
}

static int
backup_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  uint64_t size = repo_reader_size (reader);
  char *p = buf, *scratch = NULL;
  int ret = -1;

  while (count > 0) {
    uint64_t b = offset / block_size;
    uint32_t boff = offset % block_size;
    uint64_t blen = size - b * block_size < block_size
      ? size - b * block_size : block_size;
    uint32_t n = blen - boff < count ? blen - boff : count;

    if (repo_reader_kind (reader, b) == REPO_BLOCK_ZERO)
      memset (p, 0, n);
    else if (boff == 0 && n == blen) {
      if (read_block (b, p) == -1)
        goto out;
    }
    else {
      if (scratch == NULL && (scratch = malloc (block_size)) == NULL) {
        nbdkit_error ("malloc: %m");
        goto out;
      }
      if (read_block (b, scratch) == -1)
        goto out;
      memcpy (p, scratch + boff, n);
    }
    p += n;
    offset += n;
    count -= n;
  }
  ret = 0;
 out:
  free (scratch);
  return ret;
}

/* Data blocks are type 0, blocks that read as zero HOLE|ZERO; runs of
 * the same type are merged into one extent.
 */
static int
backup_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents)
{
  uint64_t size = repo_reader_size (reader);
  uint64_t end = offset + count, pos = offset, b;
  bool req_one = flags & NBDKIT_FLAG_REQ_ONE;

  if (end > size)
    end = size;
  b = pos / block_size;
  while (pos < end) {
    int kind = repo_reader_kind (reader, b);
    uint64_t run_end;

    /* Extend the run over following blocks of the same kind. */
    for (++b; b * block_size < end && repo_reader_kind (reader, b) == kind;
         ++b)
      ;
    run_end = b * block_size < end ? b * block_size : end;
    if (nbdkit_add_extent (extents, pos, run_end - pos,
                           kind == REPO_BLOCK_ZERO
                           ? NBDKIT_EXTENT_HOLE|NBDKIT_EXTENT_ZERO : 0) == -1)
      return -1;
    pos = run_end;
    if (req_one)
      break;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name               = "backup",
  .longname           = "nbdsnap backup restore point",
  .version            = PACKAGE_VERSION,
  .unload             = backup_unload,
  .config             = backup_config,
  .config_complete    = backup_config_complete,
  .config_help        = backup_config_help,
  .open               = backup_open,
  .get_size           = backup_get_size,
  .export_description = backup_export_description,
  .block_size         = backup_block_size,
  .can_write          = backup_can_write,
  .can_extents        = backup_can_extents,
  .can_multi_conn     = backup_can_multi_conn,
  .can_cache          = backup_can_cache,
  .pread              = backup_pread,
  .extents            = backup_extents,
};

NBDKIT_REGISTER_PLUGIN (plugin)
