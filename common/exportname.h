/* nbdsnap common: the in-band export-name grammar (docs/interface.md).
 *
 *   LIVE   any name not starting with '@': the disk itself
 *   VIEW   "@" FILTER "/" NAME
 *   VERB   "@" FILTER ":" VERB *( "/" ARG )
 *   OTHER  "@" FILTER ... for a FILTER that is not ours: pass it down
 */
#ifndef NBDSNAP_EXPORTNAME_H
#define NBDSNAP_EXPORTNAME_H

#include <stdbool.h>
#include <stddef.h>

#define NAME_MAX_LEN 64
#define EXPORT_MAX_ARGS 4

enum export_kind { EXPORT_LIVE, EXPORT_VIEW, EXPORT_VERB, EXPORT_OTHER,
                   EXPORT_BAD };

struct export_name {
  enum export_kind kind;
  char verb[NAME_MAX_LEN + 1];          /* EXPORT_VERB only */
  int nargs;                            /* VIEW: 1 (the name); VERB: 0.. */
  char args[EXPORT_MAX_ARGS][NAME_MAX_LEN + 1];
};

/* Parse name for the filter called filter ("snapshot", "cbt", ...).
 * On EXPORT_BAD a reason is written to why.  Arguments are split but not
 * validated as names: see name_valid.
 */
enum export_kind export_name_parse (const char *name, const char *filter,
                                    struct export_name *out,
                                    char *why, size_t whylen)
  __attribute__ ((nonnull (1, 2, 3, 4)));

/* Is s a valid snapshot/checkpoint name: [A-Za-z0-9._-]{1,64}, no "..".
 * If not, a reason is written to why.
 */
bool name_valid (const char *s, char *why, size_t whylen)
  __attribute__ ((nonnull (1, 2)));

#endif /* NBDSNAP_EXPORTNAME_H */
