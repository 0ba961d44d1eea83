#!/usr/bin/env bash
# `make install` puts everything where it is found: the filters and the
# backup plugin in nbdkit's own directories (so `--filter=snapshot` and
# the plugin name `backup` work by short name), nbdsnap in bindir, the
# five man pages in man1, the bash completion.  Installed with DESTDIR
# into $tmpdir; then, in a private mount namespace (`unshare -m`), the
# DESTDIR's filter and plugin directories are laid over nbdkit's with
# overlayfs, so the real system is never touched.  There the stack runs
# by short names, a backup is taken and served back by the backup plugin,
# and its bytes are compared with what was written.
[ -n "$BASH_VERSION" ] || exec bash "$0" "$@"
. "${top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"
requires make --version
requires nbdsh --version
fdir=$(pkg-config nbdkit --variable=filterdir)
pdir=$(pkg-config nbdkit --variable=plugindir)
[ -d "$fdir" ] && [ -d "$pdir" ] || skip "pkg-config nbdkit gives no filterdir/plugindir"
if grep -q -e '--with-nbdkit-filterdir' -e '--with-nbdkit-plugindir' "$top_builddir/config.log"; then
    skip "configured with --with-nbdkit-filterdir/plugindir: not nbdkit's directories"
fi
grep -q "^filterdir = $fdir\$" "$top_builddir/Makefile" ||
    fail "configure did not default filterdir to nbdkit's ($fdir)"
grep -q "^plugindir = $pdir\$" "$top_builddir/Makefile" ||
    fail "configure did not default plugindir to nbdkit's ($pdir)"

dest=$tmpdir/root
make -s -C "$top_builddir" install DESTDIR="$dest" prefix=/usr/local \
     > "$tmpdir/install.log" 2>&1 || { cat "$tmpdir/install.log"; fail "make install failed"; }

# 1. The files, where nbdkit, the shell, man and bash look.
for f in "$fdir"/nbdkit-{snapshot,cbt,freeze}-filter.so \
         "$pdir"/nbdkit-backup-plugin.so \
         /usr/local/bin/nbdsnap \
         /usr/local/share/man/man1/{nbdkit-snapshot-filter,nbdkit-cbt-filter,nbdkit-freeze-filter,nbdkit-backup-plugin,nbdsnap}.1 \
         /usr/local/share/bash-completion/completions/nbdsnap; do
    [ -s "$dest$f" ] || fail "make install did not install $f"
done
"$dest/usr/local/bin/nbdsnap" --version || fail "the installed nbdsnap does not run"
grep -q '^\.TH nbdsnap 1 ' "$dest/usr/local/share/man/man1/nbdsnap.1" ||
    fail "nbdsnap.1 is not a man page"
ls -R "$dest" | grep -E '\.(la|a)$' && fail "libtool archives installed"
# Nothing went to the real directories.
for f in "$fdir"/nbdkit-{snapshot,cbt,freeze}-filter.so "$pdir"/nbdkit-backup-plugin.so; do
    [ -e "$f" ] && skip "$f is already installed on this system: cannot tell ours from it"
done

# 2. Short names, in a private mount namespace.
requires unshare --version
[ "$(id -u)" = 0 ] || skip "needs root for unshare -m and overlay mounts"
cat > "$tmpdir/inside.sh" <<INSIDE
set -e
mount -t overlay overlay -o lowerdir=$dest$fdir:$fdir $fdir
mount -t overlay overlay -o lowerdir=$dest$pdir:$pdir $pdir
export PATH=$dest/usr/local/bin:\$PATH
cd $tmpdir
nbdkit -U - --filter=freeze --filter=cbt --filter=snapshot memory 16M \\
       snapshot-dir=$tmpdir/snap cbt-dir=$tmpdir/cbt freeze-dir=$tmpdir \\
       --run '
    nbdsnap snapshot create "\$uri" clean
    nbdsh -u "\$uri" -c "h.pwrite(open(\"$tmpdir/data.bin\", \"rb\").read(), 0); h.flush()"
    nbdsnap backup "\$uri" $tmpdir/repo --full --name p1 --no-progress
'
nbdkit -U - -r backup repo=$tmpdir/repo point=p1 --run 'nbdcopy "\$uri" $tmpdir/served.img'
INSIDE
head -c 1M /dev/urandom > "$tmpdir/data.bin"
cp "$tmpdir/data.bin" "$tmpdir/expect.img"
truncate -s 16M "$tmpdir/expect.img"
if ! unshare -m true 2>/dev/null; then skip "unshare -m is not allowed here"; fi
if ! unshare -m sh -c "mount -t overlay overlay -o lowerdir=$dest$fdir:$fdir $fdir" 2>/dev/null; then
    skip "overlay mounts are not possible here"
fi
unshare -m bash "$tmpdir/inside.sh" || fail "the installed stack did not run by short names"
cmp "$tmpdir/expect.img" "$tmpdir/served.img" ||
    fail "the installed backup plugin served other bytes than were backed up"
# Outside the namespace nbdkit still does not know the short name.
nbdkit --filter=snapshot memory 1M --run true >/dev/null 2>&1 &&
    fail "the real filter directory was changed"
echo "ok: installed files in place; --filter=snapshot/cbt/freeze and backup by short name"
