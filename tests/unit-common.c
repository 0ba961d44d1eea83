/* Unit tests of common/: the text state-file reader, the binary header,
 * block geometry, whole-buffer I/O and scoped locks; and of the scoped
 * hold of filters/common/gate.h.  Exit 0 = pass.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "binhdr.h"
#include "fileio.h"
#include "gate.h"
#include "geom.h"
#include "json.h"
#include "kvtext.h"
#include "lockscope.h"

static int failures;

#define CHECK(cond) do {                                                \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: FAILED: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                       \
    }                                                                   \
  } while (0)

/* body + its sha256 line, in a malloc'd buffer. */
static char *
seal (const char *body, size_t *len)
{
  size_t n = strlen (body);
  char *t = malloc (n + KV_SHA_LINE_LEN + 1);

  memcpy (t, body, n);
  if (kv_sha_line (body, n, t + n) == -1)
    abort ();
  *len = n + KV_SHA_LINE_LEN;
  return t;
}

/* Read all of body (sealed) as MAGIC + lines; returns the number of
 * lines read, or -1 on the first error.
 */
static int
read_all (const char *body)
{
  struct kv_reader kv;
  size_t len;
  char *t = seal (body, &len), *k, *v, why[256];
  int n = 0, r;

  if (kv_begin (&kv, t, len, "magic", why, sizeof why) == -1) {
    free (t);
    return -1;
  }
  while ((r = kv_next (&kv, &k, &v, why, sizeof why)) == 1)
    n++;
  free (t);
  return r == -1 ? -1 : n;
}

static void
test_kvtext (void)
{
  struct kv_reader kv;
  char why[256], *k, *v, *f[5];
  size_t len;
  char *t;
  uint64_t u;
  uint32_t u32;
  int64_t i;

  CHECK (read_all ("magic\n") == 0);
  CHECK (read_all ("magic\nversion 1\nname a b c\n") == 2);
  CHECK (read_all ("magicx\nversion 1\n") == -1);
  CHECK (read_all ("magic\nversion  1\n") == -1);     /* two spaces */
  CHECK (read_all ("magic\nversion 1 \n") == -1);     /* trailing space */
  CHECK (read_all ("magic\nversion \n") == -1);       /* empty value */
  CHECK (read_all ("magic\nversion\n") == -1);        /* no value */
  CHECK (read_all ("magic\n\n") == -1);               /* empty line */
  CHECK (read_all ("magic\nver\tsion 1\n") == -1);    /* tab in key */
  CHECK (read_all ("magic\nversion 1\t2\n") == -1);   /* tab in value */
  CHECK (read_all ("magic\nVersion 1\n") == -1);      /* upper-case key */
  CHECK (read_all ("magic\nname a  b\n") == -1);

  /* A wrong checksum, a missing one, a truncated file. */
  t = seal ("magic\nversion 1\n", &len);
  t[8] = '2';
  CHECK (kv_begin (&kv, t, len, "magic", why, sizeof why) == -1);
  CHECK (strstr (why, "checksum") != NULL);
  free (t);
  t = strdup ("magic\nversion 1\n");
  CHECK (kv_begin (&kv, t, strlen (t), "magic", why, sizeof why) == -1);
  free (t);
  t = seal ("magic\nversion 1\n", &len);
  CHECK (kv_begin (&kv, t, len - 1, "magic", why, sizeof why) == -1);
  free (t);

  /* kv_expect and kv_split. */
  t = seal ("magic\nversion 1\nlayer 1 2 3\n", &len);
  CHECK (kv_begin (&kv, t, len, "magic", why, sizeof why) == 0);
  CHECK ((v = kv_expect (&kv, "version", why, sizeof why)) != NULL &&
         strcmp (v, "1") == 0);
  CHECK (kv_expect (&kv, "version", why, sizeof why) == NULL);
  CHECK (kv_at_end (&kv));
  free (t);
  t = seal ("magic\nlayer 1 2 3\n", &len);
  CHECK (kv_begin (&kv, t, len, "magic", why, sizeof why) == 0);
  CHECK (kv_next (&kv, &k, &v, why, sizeof why) == 1);
  CHECK (strcmp (k, "layer") == 0);
  {
    char copy[32];
    strcpy (copy, v);
    CHECK (kv_split (copy, f, 3) == 0 && strcmp (f[2], "3") == 0);
    strcpy (copy, v);
    CHECK (kv_split (copy, f, 2) == -1);
    strcpy (copy, v);
    CHECK (kv_split (copy, f, 4) == -1);
  }
  free (t);

  /* Numbers. */
  CHECK (kv_u64 ("0", &u) == 0 && u == 0);
  CHECK (kv_u64 ("18446744073709551615", &u) == 0 && u == UINT64_MAX);
  CHECK (kv_u64 ("18446744073709551616", &u) == -1);
  CHECK (kv_u64 ("01", &u) == -1);
  CHECK (kv_u64 ("1junk", &u) == -1);
  CHECK (kv_u64 ("", &u) == -1);
  CHECK (kv_u64 ("-1", &u) == -1);
  CHECK (kv_u64 ("+1", &u) == -1);
  CHECK (kv_u32 ("4294967295", &u32) == 0 && u32 == UINT32_MAX);
  CHECK (kv_u32 ("4294967296", &u32) == -1);
  CHECK (kv_i64 ("-9223372036854775808", &i) == 0 && i == INT64_MIN);
  CHECK (kv_i64 ("9223372036854775807", &i) == 0 && i == INT64_MAX);
  CHECK (kv_i64 ("9223372036854775808", &i) == -1);
  CHECK (kv_i64 ("-0", &i) == -1);
  CHECK (kv_i64 ("-", &i) == -1);
}

static void
test_binhdr (void)
{
  struct binhdr h = { .magic = "NBDSNAPX", .version = 1, .block_size = 4096,
                      .id = 7, .nblocks = 3, .disk_size = 12000,
                      .payload_len = 16 }, out;
  uint8_t file[BINHDR_SIZE + 16];
  char why[256];
  bool sealed;

  memset (file, 0xab, sizeof file);
  binhdr_put (file, &h);
  /* Unsealed: only where allowed. */
  CHECK (binhdr_check (file, sizeof file, "NBDSNAPX", 1, false, "f", "thing",
                       &out, &sealed, why, sizeof why) == -1);
  CHECK (strstr (why, "never sealed") != NULL);
  CHECK (binhdr_check (file, sizeof file, "NBDSNAPX", 1, true, "f", "thing",
                       &out, &sealed, why, sizeof why) == 0 && !sealed);
  CHECK (binhdr_seal (file, sizeof file) == 0);
  CHECK (binhdr_check (file, sizeof file, "NBDSNAPX", 1, false, "f", "thing",
                       &out, &sealed, why, sizeof why) == 0 && sealed);
  CHECK (out.id == 7 && out.nblocks == 3 && out.disk_size == 12000 &&
         out.block_size == 4096 && out.payload_len == 16);
  /* The check zeroed the sum: seal again, then damage one payload byte. */
  CHECK (binhdr_seal (file, sizeof file) == 0);
  file[BINHDR_SIZE + 3] ^= 1;
  CHECK (binhdr_check (file, sizeof file, "NBDSNAPX", 1, false, "f", "thing",
                       &out, &sealed, why, sizeof why) == -1);
  CHECK (strstr (why, "checksum mismatch") != NULL);
  file[BINHDR_SIZE + 3] ^= 1;
  CHECK (binhdr_check (file, sizeof file - 1, "NBDSNAPX", 1, true, "f",
                       "thing", &out, &sealed, why, sizeof why) == -1);
  CHECK (binhdr_check (file, sizeof file, "NBDSNAPY", 1, true, "f", "thing",
                       &out, &sealed, why, sizeof why) == -1);
  CHECK (strstr (why, "bad magic") != NULL);
  CHECK (binhdr_check (file, sizeof file, "NBDSNAPX", 2, true, "f", "thing",
                       &out, &sealed, why, sizeof why) == -1);
  CHECK (binhdr_check (file, 10, "NBDSNAPX", 1, true, "f", "thing",
                       &out, &sealed, why, sizeof why) == -1);
}

static void
test_geom (void)
{
  struct geom g;

  geom_init (&g, 10000, 4096);
  CHECK (g.nblocks == 3 && g.shift == 12);
  CHECK (geom_block_len (&g, 0) == 4096 && geom_block_len (&g, 2) == 1808);
  CHECK (geom_block_len (&g, 3) == 0);
  CHECK (geom_block (&g, 8191) == 1 && geom_offset (&g, 2) == 8192);
  geom_init (&g, 8192, 4096);
  CHECK (g.nblocks == 2 && geom_block_len (&g, 1) == 4096);
  geom_init (&g, 0, 65536);
  CHECK (g.nblocks == 0);
  CHECK (geom_blocks (65537, 65536) == 2);
  CHECK (geom_block_size_ok (4096) && geom_block_size_ok (16 << 20));
  CHECK (!geom_block_size_ok (2048) && !geom_block_size_ok (32 << 20) &&
         !geom_block_size_ok (12288));
}

static void
test_fileio (void)
{
  char path[] = "/tmp/unit-common-XXXXXX", buf[16];
  int fd = mkstemp (path);

  CHECK (fd >= 0);
  unlink (path);
  CHECK (pwrite_full (fd, "abcdefgh", 8, 0) == 0);
  memset (buf, 'x', sizeof buf);
  CHECK (pread_sparse (fd, buf, 12, 4) == 0);
  CHECK (memcmp (buf, "efgh\0\0\0\0\0\0\0\0", 12) == 0);
  errno = 0;
  CHECK (pread_exact (fd, buf, 12, 4) == -1 && errno == EIO);
  CHECK (pread_exact (fd, buf, 4, 4) == 0 && memcmp (buf, "efgh", 4) == 0);
  CHECK (lseek (fd, 0, SEEK_END) == 8);
  CHECK (write_full (fd, "ij", 2) == 0);
  CHECK (pread_exact (fd, buf, 10, 0) == 0 &&
         memcmp (buf, "abcdefghij", 10) == 0);
  CHECK (close_written (fd) == 0);
  CHECK (pwrite_full (fd, "a", 1, 0) == -1 && errno == EBADF);
}

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;

static int
locked_return (int early)
{
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&m);
  ACQUIRE_RDLOCK_FOR_CURRENT_SCOPE (&rw);
  if (early)
    return 1;
  return 2;
}

static void
test_lockscope (void)
{
  CHECK (locked_return (1) == 1);
  CHECK (pthread_mutex_trylock (&m) == 0);
  pthread_mutex_unlock (&m);
  CHECK (pthread_rwlock_trywrlock (&rw) == 0);
  pthread_rwlock_unlock (&rw);
  CHECK (locked_return (0) == 2);
  CHECK (pthread_mutex_trylock (&m) == 0);
  pthread_mutex_unlock (&m);
  {
    ACQUIRE_WRLOCK_FOR_CURRENT_SCOPE (&rw);
    CHECK (pthread_rwlock_tryrdlock (&rw) != 0);
  }
  CHECK (pthread_rwlock_tryrdlock (&rw) == 0);
  pthread_rwlock_unlock (&rw);
}

static struct gate g = GATE_INIT;

static int
held_return (int early)
{
  GATE_HOLD_FOR_CURRENT_SCOPE (&g);
  ACQUIRE_LOCK_FOR_CURRENT_SCOPE (&m);
  if (early)
    return 1;
  return 2;
}

static void
test_gate_scope (void)
{
  CHECK (held_return (1) == 1);
  CHECK (__atomic_load_n (&g.held, __ATOMIC_SEQ_CST) == 0);
  CHECK (pthread_mutex_trylock (&g.holder) == 0);
  pthread_mutex_unlock (&g.holder);
  CHECK (held_return (0) == 2);
  {
    GATE_HOLD_FOR_CURRENT_SCOPE (&g);
    CHECK (__atomic_load_n (&g.held, __ATOMIC_SEQ_CST) == 1);
  }
  CHECK (__atomic_load_n (&g.held, __ATOMIC_SEQ_CST) == 0);
  gate_enter (&g);              /* would wait if the gate were held */
  gate_leave (&g);
}

/* jb_str of s must give exactly want. */
static void
check_jstr (const char *s, const char *want)
{
  struct jbuf j = { 0 };

  jb_str (&j, s);
  CHECK (!j.oom && j.p && strcmp (j.p, want) == 0);
  if (j.p && strcmp (j.p, want) != 0)
    fprintf (stderr, "  jb_str gave %s, wanted %s\n", j.p, want);
  jb_free (&j);
}

static void
test_json_writer (void)
{
  check_jstr ("plain", "\"plain\"");
  check_jstr ("q\"b\\", "\"q\\\"b\\\\\"");
  check_jstr ("\n\x01\x7f", "\"\\u000a\\u0001\\u007f\"");
  check_jstr ("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80" "",
              "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  /* Not UTF-8: a lone continuation byte, a cut sequence, an overlong
   * form, a surrogate, a byte that never starts a sequence.
   */
  check_jstr ("a\x80" "b", "\"a\\ufffdb\"");
  check_jstr ("\xc3", "\"\\ufffd\"");
  check_jstr ("\xc0\xaf", "\"\\ufffd\\ufffd\"");
  check_jstr ("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
  check_jstr ("\xff", "\"\\ufffd\"");
}

int
main (void)
{
  test_kvtext ();
  test_binhdr ();
  test_geom ();
  test_fileio ();
  test_lockscope ();
  test_json_writer ();
  test_gate_scope ();
  if (failures) {
    fprintf (stderr, "unit-common: %d check(s) failed\n", failures);
    return 1;
  }
  printf ("unit-common: all checks passed\n");
  return 0;
}
