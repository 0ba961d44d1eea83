#!/usr/bin/env bash
# The Debian package (debian/, `make deb`).  Short form: the packaging
# files are well-formed and the package version is configure's.  Long
# form (CHECK_LONG=1, about a minute): dpkg-buildpackage builds
# nbdsnap_*.deb from a copy of the tree; unpacked into a scratch root
# (dpkg -x) it holds the filters and the plugin in nbdkit's own
# directories (pkg-config --variable=filterdir/plugindir nbdkit, where
# `nbdkit --filter=snapshot` finds them once installed), nbdsnap in
# /usr/bin, the five manual pages, the sidecar scripts and units; its
# nbdkit dependency is the version it was built against; the unpacked
# filters load into nbdkit and serve the stack, and the unpacked nbdsnap
# drives it.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires dpkg-parsechangelog --version
d=$top_srcdir/debian
for f in control rules changelog copyright source/format; do
    [ -f "$d/$f" ] || fail "debian/$f missing"
done
[ -x "$d/rules" ] || fail "debian/rules is not executable"
ver=$(dpkg-parsechangelog -l "$d/changelog" -S Version)
cver=$(sed -n 's/^AC_INIT(\[nbdsnap\], \[\([^]]*\)\].*/\1/p' "$top_srcdir/configure.ac")
[ "$ver" = "$cver" ] || fail "debian/changelog says $ver, configure.ac $cver"
grep -q '^Package: nbdsnap$' "$d/control" || fail "no binary package nbdsnap"
make -n -f "$d/rules" -C "$top_srcdir" binary >/dev/null 2>&1 ||
    fail "debian/rules does not parse"

if [ -z "$CHECK_LONG" ]; then
    echo "$testname: OK (short form; CHECK_LONG=1 builds and unpacks the package)"
    exit 0
fi
requires dpkg-buildpackage --version
requires git -C "$top_srcdir" rev-parse
(cd "$top_srcdir" && dpkg-checkbuilddeps) || skip "build dependencies missing (./setup.sh installs them)"

echo "== build"
src=$tmpdir/nbdsnap-$ver
mkdir -p "$src/m4"
(cd "$top_srcdir" && git ls-files -z --cached --others --exclude-standard |
    xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
    tar --null -cf - -T -) | tar -xf - -C "$src"
(cd "$src" && timeout 900 dpkg-buildpackage -us -uc -b) > "$tmpdir/build.log" 2>&1 ||
    { tail -30 "$tmpdir/build.log" >&2; fail "dpkg-buildpackage failed"; }
deb=$(ls "$tmpdir"/nbdsnap_"$ver"_*.deb)

echo "== contents"
root=$tmpdir/root
dpkg -x "$deb" "$root"
fdir=$(pkg-config --variable=filterdir nbdkit)
pdir=$(pkg-config --variable=plugindir nbdkit)
for f in "$fdir"/nbdkit-{snapshot,cbt,freeze}-filter.so "$pdir"/nbdkit-backup-plugin.so \
         /usr/bin/nbdsnap /usr/libexec/nbdsnap/serve.sh /usr/libexec/nbdsnap/backup.sh \
         /usr/lib/systemd/system/nbdsnap-serve@.service \
         /usr/lib/systemd/system/nbdsnap-backup@.service \
         /usr/lib/systemd/system/nbdsnap-backup@.timer \
         /usr/share/man/man1/{nbdsnap,nbdkit-snapshot-filter,nbdkit-cbt-filter,nbdkit-freeze-filter,nbdkit-backup-plugin}.1.gz; do
    [ -e "$root$f" ] || fail "the package lacks $f"
done
[ -z "$(find "$root" -name '*.la')" ] || fail "the package ships libtool .la files"
nv=$(pkg-config --modversion nbdkit)
dpkg-deb -f "$deb" Depends | grep -q "nbdkit (>= $nv)" ||
    fail "the package does not depend on nbdkit $nv: $(dpkg-deb -f "$deb" Depends)"

echo "== the unpacked files work"
"$root/usr/bin/nbdsnap" --version | grep -q "$ver" || fail "nbdsnap --version"
truncate -s 1M "$tmpdir/disk.img"
start_server pkg --filter="$root$fdir/nbdkit-freeze-filter.so" \
    --filter="$root$fdir/nbdkit-cbt-filter.so" \
    --filter="$root$fdir/nbdkit-snapshot-filter.so" file "$tmpdir/disk.img" \
    snapshot-dir="$tmpdir/snap" cbt-dir="$tmpdir/cbt" freeze-dir="$tmpdir"
"$root/usr/bin/nbdsnap" snapshot create "$(uri pkg)" s1 >/dev/null
"$root/usr/bin/nbdsnap" backup "$(uri pkg)" "$tmpdir/repo" --full --no-progress >/dev/null
stop_server pkg
echo "$testname: OK ($(du -k "$deb" | cut -f1) KiB package)"
