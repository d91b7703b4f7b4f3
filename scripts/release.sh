#!/usr/bin/env bash
# Builds the release artifacts into dist/:
#
#   pgwarden-VERSION-x86_64-linux.tar.gz  the static binary, example configs,
#       systemd units, man pages, bash/zsh/fish completions, LICENSE, README,
#       and SHA256SUMS of every file in it;
#   pgwarden_VERSION_amd64.deb            the same, installed the Debian way:
#       /usr/bin/pgwarden, /lib/systemd/system/pgwarden-{keeper@,sentinel,proxy}.service,
#       /usr/share/doc/pgwarden/examples/*.toml, /usr/share/man/man1/pgwarden*.1.gz,
#       bash and zsh completions. Installing it enables and starts nothing.
#
# The binary links glibc statically (`-C target-feature=+crt-static`; there
# is no musl target here). --target keeps build scripts and proc macros,
# which run on the build host, dynamic. The build refuses to package a
# binary that ldd does not call static. Man pages and completions come from
# the binary itself (`pgwarden man`, `pgwarden completions`).
#
# Run from anywhere, after ./scripts/setup.sh: scripts/release.sh
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
target=x86_64-unknown-linux-gnu
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$version" ] || { echo "release: no version in Cargo.toml [workspace.package]" >&2; exit 1; }
name="pgwarden-$version-x86_64-linux"
dist="$repo/dist"

echo "release: building pgwarden $version (static, $target)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p pgwarden
built="target/$target/release/pgwarden"
# The packaged binary: stripped (symbols are a quarter of its size; panics
# still name their source location).
bin="$dist/pgwarden.stripped"
mkdir -p "$dist"
strip --strip-all -o "$bin" "$built"
linkage="$(ldd "$bin" 2>&1 || true)"
case "$linkage" in
  *"not a dynamic executable"* | *"statically linked"*) echo "release: ldd pgwarden: $(echo "$linkage" | tr -d '\t')" ;;
  *) echo "release: $bin is not static; ldd says:" >&2; echo "$linkage" >&2; exit 1 ;;
esac

rm -rf "$dist/$name" "$dist/deb"
stage="$dist/$name"
mkdir -p "$stage"/{bin,systemd,examples,man/man1,completions}
install -m 755 "$bin" "$stage/bin/pgwarden"
install -m 644 packaging/systemd/*.service "$stage/systemd/"
install -m 644 packaging/examples/*.toml "$stage/examples/"
"$stage/bin/pgwarden" man --dir "$stage/man/man1"
"$stage/bin/pgwarden" completions bash >"$stage/completions/pgwarden.bash"
"$stage/bin/pgwarden" completions zsh >"$stage/completions/_pgwarden"
"$stage/bin/pgwarden" completions fish >"$stage/completions/pgwarden.fish"
install -m 644 LICENSE README.md "$stage/"
(cd "$stage" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)
# Reproducible archive: fixed owner, order and times.
mtime="$(git log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$mtime" \
  -C "$dist" -czf "$dist/$name.tar.gz" "$name"

# The .deb, built with dpkg-deb from a staged root.
root="$dist/deb"
doc="$root/usr/share/doc/pgwarden"
install -D -m 755 "$bin" "$root/usr/bin/pgwarden"
install -D -m 644 -t "$root/lib/systemd/system" packaging/systemd/*.service
install -D -m 644 -t "$doc/examples" packaging/examples/*.toml
install -D -m 644 README.md "$doc/README.md"
install -D -m 644 packaging/debian/copyright "$doc/copyright"
install -d "$root/usr/share/man/man1"
for page in "$stage"/man/man1/*.1; do
  gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
install -D -m 644 "$stage/completions/pgwarden.bash" "$root/usr/share/bash-completion/completions/pgwarden"
install -D -m 644 "$stage/completions/_pgwarden" "$root/usr/share/zsh/vendor-completions/_pgwarden"
install -d -m 755 "$root/etc/pgwarden"
install -d "$root/DEBIAN"
install -m 755 packaging/debian/postinst packaging/debian/postrm "$root/DEBIAN/"
installed_kb="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@INSTALLED_SIZE@/$installed_kb/" \
  packaging/debian/control >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs md5sum >DEBIAN/md5sums)
deb="$dist/pgwarden_${version}_amd64.deb"
SOURCE_DATE_EPOCH="$(date -d "$mtime" +%s)" dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
rm -rf "$root" "$bin"

echo "release: $dist/$name.tar.gz ($(du -h "$dist/$name.tar.gz" | cut -f1))"
echo "release: $deb ($(du -h "$deb" | cut -f1))"
echo "release: binary $(stat -c %s "$stage/bin/pgwarden") bytes (unstripped $(stat -c %s "$built")), sha256 $(sha256sum "$stage/bin/pgwarden" | cut -c1-16)..."
