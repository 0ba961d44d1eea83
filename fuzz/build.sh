#!/bin/bash
# Build the libFuzzer harnesses (clang, -fsanitize=fuzzer,address,undefined)
# into fuzz/bin/.  Needs a configured tree (for config.h):
#
#   fuzz/build.sh [BUILDDIR]        BUILDDIR: where configure ran (default: the tree)
#
# Each harness is compiled together with the sources it exercises; the
# list is below, one line per harness: NAME SOURCES...
set -euo pipefail

src=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
build=$(cd "${1:-$src}" && pwd)
out=$build/fuzz/bin
mkdir -p "$out"
CC=${FUZZ_CC:-clang}
command -v "$CC" >/dev/null || { echo "fuzz/build.sh: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 77; }
[ -f "$build/config.h" ] || { echo "fuzz/build.sh: $build/config.h missing: run configure first" >&2; exit 1; }

CFLAGS="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
  -I$build -I$src/common -I$src/filters/common -I$src/repo -I$src/tools
  $(pkg-config --cflags gnutls json-c libnbd)"
LIBS="$(pkg-config --libs gnutls json-c libnbd) -lzstd -lpthread"

harnesses=(
  "exportname  fuzz/fuzz-exportname.c common/exportname.c"
  "kvtext      fuzz/fuzz-kvtext.c common/kvtext.c common/statefile.c common/fileio.c"
  "binhdr      fuzz/fuzz-binhdr.c common/binhdr.c common/statefile.c common/fileio.c"
  "jsonread    fuzz/fuzz-jsonread.c tools/jsonread.c"
  "repo        fuzz/fuzz-repo.c $(cd "$src" && echo repo/*.c) common/kvtext.c common/statefile.c common/fileio.c common/exportname.c"
)
[ -f "$src/fuzz/harnesses.extra" ] && mapfile -t -O ${#harnesses[@]} harnesses < "$src/fuzz/harnesses.extra"

for h in "${harnesses[@]}"; do
    # shellcheck disable=SC2086
    set -- $h
    name=$1; shift
    files=()
    for f in "$@"; do files+=("$src/$f"); done
    echo "fuzz: building $name"
    # shellcheck disable=SC2086
    $CC $CFLAGS -o "$out/fuzz-$name" "${files[@]}" $LIBS
done
