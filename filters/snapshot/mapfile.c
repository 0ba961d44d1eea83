/* nbdsnap snapshot filter: the bytes of a layer's map file.
 *
 * Format 4 (docs/snapshot-format.md section 6): the binhdr header, then
 * one entry per leaf that holds a block, in increasing leaf order: the
 * leaf index (u64; bit 63 set if sector masks follow), the leaf's
 * LEAF_WORDS 2-bit state words (u64 each, LE), and, if flagged, one u16
 * sector mask per block of the leaf (0 for every block that is not
 * partial).  Format 3 was the same without partial blocks (no flag, no
 * state 3): still read.  Format 1 was a dense array of every word of the
 * disk; 2 was never written.
 */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "binhdr.h"
#include "mapfile.h"
#include "statefile.h"

#define MAP_ENTRY (8 + LEAF_WORDS * 8)
#define MAP_MASKS (LEAF_BLOCKS * 2)
#define HAS_MASKS (UINT64_C (1) << 63)
#define PAIRS UINT64_C (0x5555555555555555)

/* The mask of every sector of block b (16 sectors of bs/16 bytes; the
 * last block of the disk may have fewer).
 */
static uint16_t
full_of (const struct geom *g, uint64_t b)
{
  uint64_t bl = geom_block_len (g, b), ss = g->block_size / 16;

  return (uint16_t) ((UINT64_C (1) << ((bl + ss - 1) / ss)) - 1);
}

int
map_encode (struct layer *l, const struct geom *g, uint8_t **bufp,
            size_t *lenp)
{
  const size_t nw = (l->st.nleaves + 63) / 64;
  uint64_t *present, *mroom;
  size_t i, w, room = BINHDR_SIZE;
  uint8_t *buf, *ep;

  /* The leaves to write: those present when the copy starts.  A leaf
   * made later holds only blocks marked after that, which this map need
   * not have (layer_save); a leaf present then is never left out.  The
   * same for the room for sector masks: a leaf that had no mask then
   * had no partial block, and one that becomes partial later is left
   * out of this map (absent), like any block marked after the start.
   */
  present = calloc (2 * nw + 2, sizeof *present);
  if (present == NULL)
    return -1;
  mroom = present + nw + 1;
  for (w = 0; w < nw; ++w)
    present[w] = __atomic_load_n (&l->st.present[w], __ATOMIC_ACQUIRE);
  for (i = sparse_next (present, l->st.nleaves, 0); i < l->st.nleaves;
       i = sparse_next (present, l->st.nleaves, i + 1)) {
    room += MAP_ENTRY;
    if (__atomic_load_n (&l->pmask.leaf[i], __ATOMIC_ACQUIRE)) {
      room += MAP_MASKS;
      mroom[i / 64] |= UINT64_C (1) << (i % 64);
    }
  }
  buf = calloc (1, room);
  if (buf == NULL) {
    free (present);
    errno = ENOMEM;
    return -1;
  }

  ep = buf + BINHDR_SIZE;
  for (i = sparse_next (present, l->st.nleaves, 0); i < l->st.nleaves;
       i = sparse_next (present, l->st.nleaves, i + 1)) {
    const uint64_t *lf = smap_leaf (&l->st, i);
    const bool room_masks = (mroom[i / 64] >> (i % 64)) & 1;
    uint8_t *masks = ep + MAP_ENTRY;
    uint64_t any = 0;
    bool has = false;

    for (w = 0; w < LEAF_WORDS; ++w) {
      uint64_t v = __atomic_load_n (&lf[w], __ATOMIC_ACQUIRE);
      uint64_t part = v & (v >> 1) & PAIRS;

      while (part) {
        unsigned bit = __builtin_ctzll (part);
        uint64_t b = ((uint64_t) i << LEAF_SHIFT) + w * 32 + bit / 2;
        uint16_t full = full_of (g, b);
        uint16_t m = room_masks ? omap_get (&l->pmask, b) & full : 0;

        part &= part - 1;
        if (!room_masks)        /* partial since the start: not here */
          v &= ~(UINT64_C (3) << bit);
        else if (m == full)     /* every sector is there: DATA */
          v &= ~(UINT64_C (2) << bit);
        else if (m == 0) {
          /* Cannot happen: a mask is set before its state (partial.h). */
          free (present);
          free (buf);
          errno = EIO;
          return -1;
        }
        else {
          masks[2 * (b & (LEAF_BLOCKS - 1))] = m & 0xff;
          masks[2 * (b & (LEAF_BLOCKS - 1)) + 1] = m >> 8;
          has = true;
        }
      }
      put_le64 (ep + 8 + 8 * w, v);
      any |= v;
    }
    if (any == 0)
      continue;                 /* nothing held: no entry, no masks */
    put_le64 (ep, i | (has ? HAS_MASKS : 0));
    ep += MAP_ENTRY + (has ? MAP_MASKS : 0);
  }
  free (present);
  *bufp = buf;
  *lenp = ep - buf;
  return 0;
}

/* Load the sector masks at e of leaf li into l->pmask (the states are
 * loaded): a valid mask for every partial block, 0 for the others.
 */
static int
load_masks (struct layer *l, const struct geom *g, uint64_t li,
            const uint8_t *e, const char *name, char *why, size_t whylen)
{
  uint64_t j, b0 = li << LEAF_SHIFT;

  if (omap_leaf_make (&l->pmask, li) == NULL) {
    snprintf (why, whylen, "%s: out of memory", name);
    return -1;
  }
  for (j = 0; j < LEAF_BLOCKS; ++j) {
    uint16_t m = e[2 * j] | (e[2 * j + 1] << 8);
    uint64_t b = b0 + j;
    bool part = b < g->nblocks && smap_get (&l->st, b) == BSTATE_PARTIAL;
    uint16_t full = part ? full_of (g, b) : 0;

    if (!part && m != 0) {
      snprintf (why, whylen, "%s: sector mask of block %" PRIu64 " that is "
                "not partial (file is corrupt)", name, b);
      return -1;
    }
    if (part && (m == 0 || m == full || (m & ~full))) {
      snprintf (why, whylen, "%s: invalid sector mask %#x of block %" PRIu64
                " (file is corrupt)", name, m, b);
      return -1;
    }
    if (part)
      omap_set (&l->pmask, b, m);
  }
  return 0;
}

int
map_decode (struct layer *l, const struct geom *g, uint32_t version,
            const uint8_t *p, size_t len, const char *name, char *why,
            size_t whylen)
{
  const uint64_t last_words = ((g->nblocks - 1) & (LEAF_BLOCKS - 1)) / 32 + 1;
  size_t off = 0, w, nent = 0;
  uint64_t prev = 0;

  while (off < len) {
    const uint8_t *e = p + off;
    uint64_t raw, li, *lf, npart = 0;
    bool has, last;

    if (len - off < MAP_ENTRY)
      goto badlen;
    raw = get_le64 (e);
    has = version > 3 && (raw & HAS_MASKS);
    li = has ? raw & ~HAS_MASKS : raw;
    if (has && len - off - MAP_ENTRY < MAP_MASKS)
      goto badlen;
    if (li >= l->st.nleaves || (nent > 0 && li <= prev)) {
      snprintf (why, whylen, "%s: invalid leaf index %" PRIu64 " (file is "
                "corrupt)", name, li);
      return -1;
    }
    prev = li;
    nent++;
    last = li == l->st.nleaves - 1;
    if ((lf = smap_leaf_make (&l->st, li)) == NULL) {
      snprintf (why, whylen, "%s: out of memory", name);
      return -1;
    }
    for (w = 0; w < LEAF_WORDS; ++w) {
      uint64_t v = get_le64 (e + 8 + 8 * w);
      /* State 3 (partial) only from version 4; bits past the last block
       * must be clear.
       */
      if ((version == 3 && (v & (v >> 1) & PAIRS)) ||
          (last && w >= last_words && v) ||
          (last && w == last_words - 1 && (g->nblocks & 31) &&
           (v >> ((g->nblocks & 31) * 2)))) {
        snprintf (why, whylen, "%s: invalid block state (file is corrupt)",
                  name);
        return -1;
      }
      lf[w] = v;
      npart += __builtin_popcountll (v & (v >> 1) & PAIRS);
    }
    if (npart > 0 && !has) {
      snprintf (why, whylen, "%s: leaf %" PRIu64 " has partial blocks but "
                "no sector masks (file is corrupt)", name, li);
      return -1;
    }
    if (has && npart == 0) {
      snprintf (why, whylen, "%s: leaf %" PRIu64 " has sector masks but no "
                "partial block (file is corrupt)", name, li);
      return -1;
    }
    if (has && load_masks (l, g, li, e + MAP_ENTRY, name, why, whylen) == -1)
      return -1;
    off += MAP_ENTRY + (has ? MAP_MASKS : 0);
  }
  return 0;

 badlen:
  snprintf (why, whylen, "%s: truncated or wrong length (%zu bytes of "
            "entries, the last one cut short)", name, len);
  return -1;
}
