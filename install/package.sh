#!/usr/bin/env bash
# Builds gpushare for installing on nodes, from this checkout:
#   target/debian/gpushare_<version>_<arch>.deb          (cargo-deb; installed here when missing)
#   target/gpushare-<version>-<machine>-linux.tar.gz     (the same files, for other distributions)
# The binaries are install/build.sh's: gpushare-runtime and gpushare-hook
# static, gpushare dynamic (it loads NVML at run time). Prints both paths.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
machine=$(uname -m)
bins=$(install/build.sh)

# The package's tree: the binaries in /usr/bin, and the files that name them
# pointing there.
stage=target/package
rm -rf "$stage"
mkdir -p "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/usr/share/gpushare"
cp "$bins/gpushare" "$bins/gpushare-runtime" "$bins/gpushare-hook" "$stage/usr/bin/"
sed 's|/usr/local/bin/|/usr/bin/|g' install/gpushare-mps.service >"$stage/lib/systemd/system/gpushare-mps.service"
for f in oci-gpushare-hook.json containerd-base-spec-hooks.json; do
  sed 's|/usr/local/bin/|/usr/bin/|g' "hooks/$f" >"$stage/usr/share/gpushare/$f"
done

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "installing cargo-deb (cargo install cargo-deb --locked)" >&2
  cargo install cargo-deb --locked --quiet
fi
mkdir -p target/debian
deb=$(cargo deb --no-build --no-strip --output "$PWD/target/debian/" | tail -n 1)
case $deb in /*) ;; *) deb=$PWD/$deb ;; esac

# The tarball: binaries for /usr/local/bin, the files as they name it.
name="gpushare-$version-$machine-linux"
tree="target/$name"
rm -rf "$tree"
mkdir -p "$tree/bin" "$tree/share/gpushare" "$tree/share/doc/gpushare"
cp "$bins/gpushare" "$bins/gpushare-runtime" "$bins/gpushare-hook" "$tree/bin/"
cp install/gpushare-mps.service hooks/oci-gpushare-hook.json hooks/containerd-base-spec-hooks.json \
  install/config.toml "$tree/share/gpushare/"
cp README.md SECURITY.md "$tree/share/doc/gpushare/"
tar -C target -czf "target/$name.tar.gz" "$name"
rm -rf "$tree"

echo "$deb"
echo "$PWD/target/$name.tar.gz"
