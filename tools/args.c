/* nbdsnap tool: the command line: global options, the options of the
 * repository and server management subcommands, sizes.
 */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "nbdsnap.h"

bool opt_json;
int opt_verbose;

/* Options of the repository and server management subcommands. */
int
parse_args (int argc, char **argv, bool *force, uint64_t *block_size,
            char **pos, int maxpos)
{
  static const struct option long_opts[] = {
    { "force", no_argument, NULL, 'f' },
    { "json", no_argument, NULL, 'j' },
    { "verbose", no_argument, NULL, 'v' },
    { "block-size", required_argument, NULL, 'b' },
    { NULL, 0, NULL, 0 }
  };
  int c, n = 0;

  optind = 0;
  opterr = 0;
  while ((c = getopt_long (argc, argv, "v", long_opts, NULL)) != -1) {
    switch (c) {
    case 'f':
      if (force == NULL)
        usage_error ("%s: unknown option --force", argv[0]);
      *force = true;
      break;
    case 'j': opt_json = true; break;
    case 'v': opt_verbose++; break;
    case 'b':
      if (block_size == NULL)
        usage_error ("%s: unknown option --block-size", argv[0]);
      if (!parse_size (optarg, block_size) || *block_size == 0 ||
          *block_size > UINT32_MAX)
        usage_error ("%s: bad --block-size '%s'", argv[0], optarg);
      break;
    default:
      usage_error ("%s: unknown option '%s'", argv[0], argv[optind - 1]);
    }
  }
  for (; optind < argc; optind++) {
    if (n == maxpos)
      usage_error ("%s: too many arguments ('%s')", argv[0], argv[optind]);
    pos[n++] = argv[optind];
  }
  return n;
}

/* A size with an optional K, M, G, T suffix (powers of 1024). */
bool
parse_size (const char *s, uint64_t *out)
{
  char *end;
  uint64_t n, m = 1;

  if (!isdigit ((unsigned char) *s))
    return false;
  errno = 0;
  n = strtoull (s, &end, 10);
  if (errno)
    return false;
  switch (toupper ((unsigned char) *end)) {
  case '\0': break;
  case 'K': m = 1ULL << 10; end++; break;
  case 'M': m = 1ULL << 20; end++; break;
  case 'G': m = 1ULL << 30; end++; break;
  case 'T': m = 1ULL << 40; end++; break;
  default: return false;
  }
  if (m > 1 && (strcasecmp (end, "iB") == 0 || strcasecmp (end, "B") == 0))
    end += strlen (end);
  if (*end != '\0' || (n && m > UINT64_MAX / n))
    return false;
  *out = n * m;
  return true;
}
