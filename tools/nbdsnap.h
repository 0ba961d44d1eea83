/* nbdsnap tool: declarations shared by the tools/ sources, one section
 * per file.
 *
 *   nbdsnap.c        main: global options, help, dispatch
 *   repository.c     init, list, verify, delete, merge (the repository)
 *   manage.c         snapshot, checkpoint, freeze (command exports)
 *   backup*.c        backup (see backup.h)
 *   restore*.c       restore (see restore.h)
 *   migrate*.c       migrate (see migrate.h)
 *   quiesce.c        --freeze-cmd/--thaw-cmd hooks (see quiesce.h)
 *   prune.c          checkpoint retention: prune (see quiesce.h)
 *
 *   msg.c            messages on stderr, exit codes, JSON strings on stdout
 *   signals.c        SIGINT/SIGTERM/SIGHUP stop long operations
 *   args.c           the subcommands' options, sizes on the command line
 *   format.c         human-readable sizes and times, the clock
 *   conn.c           libnbd connections; running a command export
 *   jsonread.c       reading a command's JSON result (json-c)
 *   extents.c        which parts of a disk hold data
 *   progress.c       the progress bar
 */
#ifndef NBDSNAP_TOOL_H
#define NBDSNAP_TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <signal.h>

#include <libnbd.h>

struct json_object;

/*---------------------------------------------------------------- msg.c --*/

/* Exit codes (documented in nbdsnap(1)). */
#define EXIT_OK      0          /* success */
#define EXIT_FAILED  1          /* refused, damaged, or failed midway */
#define EXIT_USAGE   2          /* bad usage, or no connection at all */

#define ERRLEN 1024

/* Message on stderr, prefixed "nbdsnap: ". */
void msg (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
/* The same, only with -v. */
void verbose (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
/* Usage error: message + hint on stderr (and with --json
 * {"ok":false,...} on stdout), exit 2.
 */
void usage_error (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2), noreturn));
/* Print an error (stderr, and with --json {"ok":false,...} on stdout),
 * return code (for "return fail (...)").
 */
int fail (int code, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
/* Print s as a JSON string literal ("..." escaped), or null if s is NULL. */
void json_str (FILE *fp, const char *s) __attribute__ ((nonnull (1)));

/*------------------------------------------------------------ signals.c --*/

/* Set (to the signal) by SIGINT/SIGTERM/SIGHUP during long operations. */
extern volatile sig_atomic_t interrupted;
/* Catch SIGINT, SIGTERM, SIGHUP into interrupted; ignore SIGPIPE. */
void install_signal_handlers (void);

/*--------------------------------------------------------------- args.c --*/

/* Global options. */
extern bool opt_json;           /* --json: machine-readable stdout */
extern int opt_verbose;         /* -v: more messages on stderr */

/* Parse the options of a subcommand (--json, -v, and --force or
 * --block-size where force or block_size is not NULL) and its positional
 * arguments into pos; usage error beyond maxpos.  Returns their number.
 */
int parse_args (int argc, char **argv, bool *force, uint64_t *block_size,
                char **pos, int maxpos)
  __attribute__ ((nonnull (2, 5)));
/* "4096", "64K", "1M", "1G" (also "1MiB", "1MB"): false on a bad value. */
bool parse_size (const char *s, uint64_t *out) __attribute__ ((nonnull));

/*------------------------------------------------------------- format.c --*/

/* Human size "1.5G" into buf; returns buf. */
const char *human_size (uint64_t n, char *buf, size_t len)
  __attribute__ ((nonnull));
/* RFC 3339 UTC time into buf; returns buf. */
const char *rfc3339 (int64_t t, char *buf, size_t len)
  __attribute__ ((nonnull));
/* Monotonic clock, in seconds. */
double now_seconds (void);

/*--------------------------------------------------------------- conn.c --*/

/* Is uri an NBD URI (its scheme one of libnbd's)?  Else usage error. */
void check_uri (const char *uri) __attribute__ ((nonnull));
/* Connect to the server of uri (the URI as libnbd takes it: transport,
 * TLS, query) and open exportname there (NULL: the export the URI
 * names).  meta: request base:allocation.  NULL + err on failure, with
 * *refused (if not NULL) set true when the server refused exportname
 * but would open the URI's own export: it is there, and serves us.
 */
struct nbd_handle *connect_export (const char *uri, const char *exportname,
                                   bool meta, bool *refused,
                                   char *err, size_t errlen)
  __attribute__ ((nonnull (1, 5)));
/* After connect_export of exportname failed with err: if the server
 * could not be reached at all, "cannot connect" and EXIT_USAGE; else
 * (refused) what + err (+ hint) and EXIT_FAILED.
 */
int open_failed (const char *uri, const char *exportname, bool refused,
                 const char *what, const char *err, const char *hint)
  __attribute__ ((nonnull (1, 2, 4, 5)));
/* Close a handle (shut down or abort negotiation first, ignoring
 * errors).  NULL is ignored.
 */
void disconnect (struct nbd_handle *h);

/* A command export's result (docs/interface.md): the text as the server
 * sent it and its parse.
 */
struct result {
  char *text;                   /* NUL-terminated */
  struct json_object *root;     /* the top-level object */
  bool ok;                      /* its "ok" */
};
enum command_status {
  CMD_DONE,                     /* the command ran: see res->ok */
  CMD_UNREACHABLE,              /* the server could not be reached */
  CMD_REFUSED,                  /* it refused the export, or served no
                                 * command result (no such filter) */
  CMD_INVALID,                  /* its result is not a valid result */
  CMD_LOST,                     /* the export was opened, so the command
                                 * ran, but its result could not be read
                                 * (out of memory, connection lost): what
                                 * it did is unknown */
};
/* Run a command export once: open it (which runs the command), read all
 * of it, close, parse.  CMD_DONE fills res (result_free it); otherwise
 * err says why.
 */
enum command_status run_command (const char *uri, const char *exportname,
                                 struct result *res, char *err, size_t errlen)
  __attribute__ ((nonnull));

/*----------------------------------------------------------- jsonread.c --*/

/* Parse text (len bytes, NUL-terminated) as a command result: one JSON
 * object (strict JSON, UTF-8, nothing after it but white space) whose
 * "ok" is true or false.  Fills res (taking text) and returns 0, or
 * returns -1 with err set (text not taken).
 */
int result_parse (char *text, size_t len, struct result *res,
                  char *err, size_t errlen)
  __attribute__ ((nonnull));
/* Free what res holds. */
void result_free (struct result *res) __attribute__ ((nonnull));
/* The "error" (and "errno") of a failed result, for messages. */
void result_error (struct json_object *o, char *buf, size_t len)
  __attribute__ ((nonnull (2)));

/* Member key of object o: NULL if o is NULL or not an object, key is
 * missing or its value is null.
 */
struct json_object *jget (struct json_object *o, const char *key)
  __attribute__ ((nonnull (2)));
/* String member: NULL if missing, null, not a string or not text (has
 * a NUL in it).
 */
const char *jstr (struct json_object *o, const char *key)
  __attribute__ ((nonnull (2)));
/* Boolean member into *b; false (*b untouched) if it is not a boolean. */
bool jbool (struct json_object *o, const char *key, bool *b)
  __attribute__ ((nonnull (2, 3)));
/* Non-negative integer member into *n; false (*n untouched) if it is not
 * one.
 */
bool jnum (struct json_object *o, const char *key, uint64_t *n)
  __attribute__ ((nonnull (2, 3)));
/* Array member: its length (0 if missing or not an array) and elements. */
size_t jlen (struct json_object *o, const char *key)
  __attribute__ ((nonnull (2)));
struct json_object *jat (struct json_object *o, const char *key, size_t i)
  __attribute__ ((nonnull (2)));

/*------------------------------------------------------------ extents.c --*/

struct extent { uint64_t offset, length; uint32_t type; /* LIBNBD_STATE_* */ };
/* All base:allocation extents of [0, size) (adjacent extents of the same
 * type merged); the handle must have been connected with meta = true.
 */
int get_extents (struct nbd_handle *h, uint64_t size, struct extent **out,
                 size_t *n, char *err, size_t errlen)
  __attribute__ ((nonnull));
/* Are the len bytes at buf all zero? */
bool is_zero (const void *buf, size_t len) __attribute__ ((nonnull));

/*----------------------------------------------------------- progress.c --*/

struct progress;
/* enabled: draw on stderr (four times a second); total: bytes expected.
 * NULL when out of memory (the other functions then do nothing).
 */
struct progress *progress_start (bool enabled, const char *what,
                                 uint64_t total)
  __attribute__ ((nonnull (2)));
/* bytes more are done (thread-safe). */
void progress_add (struct progress *p, uint64_t bytes);
/* Stop drawing (the final line if ok) and free p. */
void progress_stop (struct progress *p, bool ok);
/* --progress (1) / --no-progress (0) / default (-1): is stderr a tty. */
bool progress_wanted (int opt);

/*--------------------------------------------------------- subcommands --*/

/* repository.c */
int cmd_init (int argc, char **argv);
int cmd_list (int argc, char **argv);
int cmd_verify (int argc, char **argv);
int cmd_delete (int argc, char **argv);
int cmd_merge (int argc, char **argv);
/* Open a repository, printing a clear error; NULL on failure. */
struct repo;
struct repo *open_repo (const char *dir) __attribute__ ((nonnull));

/* manage.c */
int cmd_snapshot (int argc, char **argv);
int cmd_checkpoint (int argc, char **argv);
int cmd_freeze (int argc, char **argv);

/* backup.c, restore.c */
int cmd_backup (int argc, char **argv);
int cmd_restore (int argc, char **argv);

/* migrate.c */
int cmd_migrate (int argc, char **argv);

#endif /* NBDSNAP_TOOL_H */
