/* nbdsnap repository: one point's files, loaded and checked.
 *
 * A member is a point as a reader, verify or merge uses it: its
 * manifest, its index mapped and checked entry by entry
 * (docs/repository-format.md, 6.3), its data file open with its header
 * checked (7.1).  member_read_entry gives one block, checked against its
 * SHA-256 (7.2).
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fileio.h"
#include "repo-internal.h"

void
member_unload (struct member *mb)
{
  if (mb->idx)
    munmap (mb->idx, mb->idxlen);
  mb->idx = NULL;
  if (mb->datafd >= 0)
    close (mb->datafd);
  mb->datafd = -1;
}

/* Is the reserved part of a data file header all zero? */
static bool
header_padding_zero (const uint8_t *hdr)
{
  size_t i;

  for (i = 16; i < DATA_HDR; ++i)
    if (hdr[i] != 0)
      return false;
  return true;
}

/* Does index entry e of mb break the rules of section 6.1? */
static bool
entry_invalid (const struct member *mb, const uint8_t *e)
{
  uint64_t b = get_le64 (e + ENTRY_BLOCK), off = get_le64 (e + ENTRY_OFF);
  uint32_t slen = get_le32 (e + ENTRY_SLEN);
  uint64_t len = geom_block_len (&mb->g, b);

  switch (e[ENTRY_KIND]) {
  case KIND_DATA:
    return slen == 0 || slen > len || (slen < len && !mb->m.compressed) ||
      off < DATA_HDR || off > mb->m.data_size ||
      slen > mb->m.data_size - off;
  case KIND_ZERO:
    return slen != 0 || off != 0;
  default:
    return true;
  }
}

/* Map and check name's index (mb->m is read).  -1 with err and errno. */
static int
member_load_index (struct repo *r, const char *name, struct member *mb,
                   char *err, size_t errlen)
{
  char path[REPO_NAME_MAX + 32];
  int fd;
  struct stat st;
  uint8_t sha[SHA256_LEN];
  uint64_t i, prev = 0;
  const char *bad = NULL;

  snprintf (path, sizeof path, "%s/index", name);
  fd = openat (r->pointsfd, path, O_RDONLY|O_NOFOLLOW|O_CLOEXEC);
  if (fd == -1 || fstat (fd, &st) == -1) {
    seterr (err, errlen, "restore point %s is damaged: cannot open "
            "%s/points/%s: %m", name, r->dir, path);
    if (fd >= 0)
      close (fd);
    return -1;
  }
  /* Every number read from a file is checked before it is used in
   * arithmetic: a count that makes the size wrap around would let the
   * entry loop run past the mapping.  Entries are distinct blocks of
   * the disk, so there are at most nblocks of them.
   */
  if (mb->m.blocks > mb->g.nblocks ||
      mb->m.blocks > (SIZE_MAX - INDEX_HDR - SHA256_LEN) / ENTRY_SIZE) {
    bad = "the manifest's block count is larger than the disk's";
    close (fd);
    goto bad;
  }
  if (st.st_size < 0 ||
      (uint64_t) st.st_size != INDEX_HDR + mb->m.blocks * ENTRY_SIZE
      + SHA256_LEN) {
    bad = "its size does not match the manifest's block count";
    close (fd);
    goto bad;
  }
  mb->idxlen = st.st_size;
  mb->idx = mmap (NULL, mb->idxlen, PROT_READ, MAP_PRIVATE, fd, 0);
  close (fd);
  if (mb->idx == MAP_FAILED) {
    mb->idx = NULL;
    seterr (err, errlen, "cannot map %s/points/%s: %m", r->dir, path);
    return -1;
  }
  if (memcmp (mb->idx, INDEX_MAGIC, 8) != 0) {
    bad = "no NBDSNAPI magic";
    goto bad;
  }
  if (get_le32 (mb->idx + 8) != INDEX_VERSION) {
    seterr (err, errlen, "%s/points/%s has format version %" PRIu32 "; this "
            "nbdsnap reads version %d", r->dir, path,
            get_le32 (mb->idx + 8), INDEX_VERSION);
    errno = EINVAL;
    return -1;
  }
  if (get_le32 (mb->idx + 12) != ENTRY_SIZE ||
      get_le64 (mb->idx + 16) != mb->m.blocks ||
      get_le32 (mb->idx + 24) != r->block_size ||
      get_le32 (mb->idx + 28) != 0) {
    bad = "its header does not match the manifest";
    goto bad;
  }
  if (sha256_buf (mb->idx, mb->idxlen - SHA256_LEN, sha) == -1 ||
      memcmp (sha, mb->idx + mb->idxlen - SHA256_LEN, SHA256_LEN) != 0 ||
      memcmp (sha, mb->m.index_sha, SHA256_LEN) != 0) {
    bad = "SHA-256 mismatch";
    goto bad;
  }
  for (i = 0; i < mb->m.blocks; ++i) {
    const uint8_t *e = member_entry (mb, i);
    uint64_t b = get_le64 (e + ENTRY_BLOCK);
    if ((i > 0 && b <= prev) || b >= mb->g.nblocks ||
        entry_invalid (mb, e)) {
      seterr (err, errlen, "restore point %s is damaged: entry %" PRIu64
              " (block %" PRIu64 ") of %s/points/%s is invalid; run "
              "'nbdsnap verify %s'", name, i, b, r->dir, path, r->dir);
      errno = EIO;
      return -1;
    }
    prev = b;
  }
  return 0;

 bad:
  seterr (err, errlen, "restore point %s is damaged: %s/points/%s is not a "
          "valid index (%s); run 'nbdsnap verify %s'", name, r->dir, path,
          bad, r->dir);
  errno = EIO;
  return -1;
}

/* Open and check name's data file (its size and header).  -1 with err
 * and errno.
 */
static int
member_open_data (struct repo *r, const char *name, struct member *mb,
                  char *err, size_t errlen)
{
  char path[REPO_NAME_MAX + 32];
  struct stat st;
  uint8_t hdr[DATA_HDR];

  snprintf (path, sizeof path, "%s/data", name);
  mb->datafd = openat (r->pointsfd, path, O_RDONLY|O_NOFOLLOW|O_CLOEXEC);
  if (mb->datafd == -1 || fstat (mb->datafd, &st) == -1) {
    seterr (err, errlen, "restore point %s is damaged: cannot open "
            "%s/points/%s: %m", name, r->dir, path);
    return -1;
  }
  if ((uint64_t) st.st_size != mb->m.data_size) {
    seterr (err, errlen, "restore point %s is damaged: %s/points/%s has %"
            PRIu64 " bytes, the manifest says %" PRIu64 " (%s)",
            name, r->dir, path, (uint64_t) st.st_size, mb->m.data_size,
            (uint64_t) st.st_size < mb->m.data_size ? "truncated"
            : "bytes were appended");
    errno = EIO;
    return -1;
  }
  if (pread_exact (mb->datafd, hdr, DATA_HDR, 0) == -1 ||
      memcmp (hdr, DATA_MAGIC, 8) != 0 ||
      get_le32 (hdr + 8) != DATA_VERSION ||
      get_le32 (hdr + 12) != r->block_size ||
      !header_padding_zero (hdr)) {
    seterr (err, errlen, "restore point %s is damaged: %s/points/%s has no "
            "valid NBDSNAPD header", name, r->dir, path);
    errno = EIO;
    return -1;
  }
  return 0;
}

int
member_load (struct repo *r, const char *name, struct member *mb,
             char *err, size_t errlen)
{
  memset (mb, 0, sizeof *mb);
  mb->datafd = -1;
  if (manifest_read (r, name, &mb->m, err, errlen) == -1)
    return -1;
  if (mb->m.block_size != r->block_size) {
    seterr (err, errlen, "restore point %s has block size %" PRIu32 " but "
            "the repository %s has %" PRIu32 " (a point copied from another "
            "repository?)", name, mb->m.block_size, r->dir, r->block_size);
    errno = EINVAL;
    return -1;
  }
  geom_init (&mb->g, mb->m.disk_size, r->block_size);
  mb->eff = mb->g;
  if (member_load_index (r, name, mb, err, errlen) == -1 ||
      member_open_data (r, name, mb, err, errlen) == -1) {
    int saved = errno;
    member_unload (mb);
    errno = saved;
    return -1;
  }
  return 0;
}

int
member_read_entry (struct repo *r, const struct member *mb,
                   const uint8_t *e, struct scratch *s, void *out,
                   const char *asked, char *err, size_t errlen)
{
  uint64_t b = get_le64 (e + ENTRY_BLOCK), off = get_le64 (e + ENTRY_OFF);
  uint32_t slen = get_le32 (e + ENTRY_SLEN);
  uint32_t len = geom_block_len (&mb->g, b);
  uint8_t sha[SHA256_LEN];
  char via[REPO_NAME_MAX + 32] = "";

  if (asked && strcmp (asked, mb->m.name) != 0)
    snprintf (via, sizeof via, " (read for point %s)", asked);
  /* Stored as it is, or compressed (then shorter). */
  if (pread_exact (mb->datafd, slen == len ? out : s->a, slen, off) == -1) {
    seterr (err, errlen, "restore point %s block %" PRIu64 "%s: cannot "
            "read %s/points/%s/data at offset %" PRIu64 ": %m",
            mb->m.name, b, via, r->dir, mb->m.name, off);
    return -1;
  }
  if (slen != len) {
    size_t d;
    if (s->dctx == NULL && (s->dctx = ZSTD_createDCtx ()) == NULL) {
      seterr (err, errlen, "out of memory");
      errno = ENOMEM;
      return -1;
    }
    d = ZSTD_decompressDCtx (s->dctx, out, len, s->a, slen);
    if (ZSTD_isError (d) || d != len) {
      seterr (err, errlen, "restore point %s block %" PRIu64 "%s is "
              "damaged: the compressed data in %s/points/%s/data at offset %"
              PRIu64 " does not decompress (%s)", mb->m.name, b, via, r->dir,
              mb->m.name, off,
              ZSTD_isError (d) ? ZSTD_getErrorName (d) : "wrong length");
      errno = EIO;
      return -1;
    }
  }
  if (sha256_buf (out, len, sha) == -1 ||
      memcmp (sha, e + ENTRY_SHA, SHA256_LEN) != 0) {
    seterr (err, errlen, "restore point %s block %" PRIu64 "%s is damaged: "
            "SHA-256 mismatch in %s/points/%s/data at offset %" PRIu64 "%s%s%s",
            mb->m.name, b, via, r->dir, mb->m.name, off,
            asked ? " (run 'nbdsnap verify " : "", asked ? r->dir : "",
            asked ? "')" : "");
    errno = EIO;
    return -1;
  }
  return 0;
}
