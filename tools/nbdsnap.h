/* nbdsnap tool: declarations shared by the tools/ sources.
 *
 *   nbdsnap.c   main, option parsing, help, repository subcommands
 *               (init, list, verify, delete, merge)
 *   manage.c    server management subcommands (snapshot, checkpoint,
 *               freeze) through command exports
 *   backup.c    nbdsnap backup
 *   restore.c   nbdsnap restore
 *   util.c      messages, exit codes, URIs, libnbd connections, the tiny
 *               JSON reader, progress bar, sizes
 */
#ifndef NBDSNAP_TOOL_H
#define NBDSNAP_TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <signal.h>

#include <libnbd.h>

/* Exit codes (documented in nbdsnap(1)). */
#define EXIT_OK      0          /* success */
#define EXIT_FAILED  1          /* refused, damaged, or failed midway */
#define EXIT_USAGE   2          /* bad usage, or no connection at all */

#define ERRLEN 1024

/* Global options. */
extern bool opt_json;           /* --json: machine-readable stdout */
extern int opt_verbose;         /* -v: more messages on stderr */

/* Set by SIGINT/SIGTERM/SIGHUP during long operations. */
extern volatile sig_atomic_t interrupted;
void install_signal_handlers (void);

/* Messages on stderr, prefixed "nbdsnap: ". */
void msg (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void verbose (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
/* Usage error: message + hint, exit 2. */
void usage_error (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2), noreturn));
/* Print an error (stderr, and with --json {"ok":false,...} on stdout),
 * return code (for "return fail (...)").
 */
int fail (int code, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* JSON output helpers (stdout). */
void json_str (FILE *fp, const char *s);       /* "..." escaped, or null */

/* Names: [A-Za-z0-9._-]{1,64}, not ".", no "..": the filters' grammar. */
bool filter_name_ok (const char *s);

/* URIs: the user's URI with its export name replaced (malloc'd). */
char *uri_with_export (const char *uri, const char *exportname);

/* Connect to exportname on the server of uri.  meta: request
 * base:allocation.  NULL + err on failure.
 */
struct nbd_handle *connect_export (const char *uri, const char *exportname,
                                   bool meta, char *err, size_t errlen);
/* After opening an export of uri failed with err: EXIT_USAGE if the
 * server cannot be reached at all (the message says so), else
 * EXIT_FAILED (the server refused that export).  Prints the message
 * what + err (+ hint when the export was refused).
 */
int open_failed (const char *uri, const char *exportname, const char *what,
                 const char *err, const char *hint);
/* Close a handle (shutdown first, ignoring errors). */
void disconnect (struct nbd_handle *h);

/* Run a command export once: open it, read all of it, close.  Returns the
 * malloc'd text (NUL-terminated) or NULL with err set; *refused is set
 * true when the server could be reached but refused the export.
 */
char *run_command (const char *uri, const char *exportname, bool *refused,
                   char *err, size_t errlen);

/* ---- the tiny JSON reader ----------------------------------------------
 *
 * The command results are our own filters' JSON (docs/interface.md): one
 * object, keys and strings made of plain printable text.  We do not
 * carry a JSON parser: these helpers skip values structurally (strings
 * with escapes, nested objects and arrays) and look keys up at the top
 * level of one object.  Limitations: no validation beyond what they need,
 * \uXXXX escapes in strings are decoded only for ASCII (others become
 * '?'), numbers are read as unsigned 64-bit integers.  With --json the
 * tool prints the server's document as it is.
 */
/* Value of key in the object starting at obj ('{'), or NULL. */
const char *jget (const char *obj, const char *key);
/* Decode a string value into buf; false if v is not a string.  "null"
 * gives "" and returns true with *isnull (if given) set.
 */
bool jstr (const char *v, char *buf, size_t len, bool *isnull);
bool jbool (const char *v, bool *b);
bool jnum (const char *v, uint64_t *n);
/* Iterate an array value: *it = NULL first; returns the next element
 * or NULL at the end.
 */
const char *jnext (const char *array, const char **it);
/* Is "ok": true in this command result? */
bool jok (const char *doc);
/* The "error" (and "errno") of a failed result, for messages. */
void jerror (const char *doc, char *buf, size_t len);

/* ---- extents ----------------------------------------------------------- */
struct extent { uint64_t offset, length; uint32_t type; /* LIBNBD_STATE_* */ };
/* All base:allocation extents of [0, size) (adjacent extents of the same
 * type merged); the handle must have been connected with meta = true.
 */
int get_extents (struct nbd_handle *h, uint64_t size, struct extent **out,
                 size_t *n, char *err, size_t errlen);

/* ---- progress bar ------------------------------------------------------ */
struct progress;
/* enabled: draw on stderr; total: bytes expected. */
struct progress *progress_start (bool enabled, const char *what,
                                 uint64_t total);
void progress_add (struct progress *p, uint64_t bytes);  /* thread-safe */
void progress_stop (struct progress *p, bool ok);
/* --progress / --no-progress / default: is stderr a tty. */
bool progress_wanted (int opt);

/* ---- sizes and times ---------------------------------------------------- */
/* "4096", "64K", "1M", "1G": false on a bad value. */
bool parse_size (const char *s, uint64_t *out);
/* Human size "1.5G" into buf. */
const char *human_size (uint64_t n, char *buf, size_t len);
/* RFC 3339 UTC. */
const char *rfc3339 (int64_t t, char *buf, size_t len);
double now_seconds (void);
bool is_zero (const void *buf, size_t len);

/* ---- subcommands -------------------------------------------------------- */
/* Parse the options of a subcommand (--json, -v, and --force or
 * --block-size where force or block_size is not NULL) and its positional
 * arguments into pos; usage error beyond maxpos.  Returns their number.
 */
int parse_args (int argc, char **argv, bool *force, uint64_t *block_size,
                char **pos, int maxpos);

int cmd_init (int argc, char **argv);
int cmd_list (int argc, char **argv);
int cmd_verify (int argc, char **argv);
int cmd_delete (int argc, char **argv);
int cmd_merge (int argc, char **argv);
int cmd_snapshot (int argc, char **argv);
int cmd_checkpoint (int argc, char **argv);
int cmd_freeze (int argc, char **argv);
int cmd_backup (int argc, char **argv);
int cmd_restore (int argc, char **argv);

/* Open a repository, printing a clear error; NULL on failure. */
struct repo;
struct repo *open_repo (const char *dir);

#endif /* NBDSNAP_TOOL_H */
