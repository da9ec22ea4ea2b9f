#!/usr/bin/env bash
# Builds the image the device plugin's DaemonSet runs (install/k8s/), offline
# and without a container engine: from scratch, the three binaries, static
# (Rust's musl target; gpushare built so too: without NVML, which the
# device plugin does not use), as /usr/bin/gpushare{,-runtime,-hook}, entry
# point `gpushare device-plugin`. Written as an image archive (manifest.json,
# the config, one layer) that `docker load` and `ctr images import` take,
# tagged localhost/gpushare:<version>, at target/image/gpushare-<version>.tar;
# prints that path. The layer is reproducible: sorted names, root-owned,
# time zero.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
tag="localhost/gpushare:$version"
host=$(rustc -vV | sed -n 's/^host: //p')
musl=${host%%-*}-unknown-linux-musl
case ${host%%-*} in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) echo "install/image.sh: no image architecture name for ${host%%-*}" >&2; exit 1 ;;
esac
# The node build first: it adds the musl target and musl-gcc where it can.
install/build.sh >/dev/null
if ! rustup target list --installed 2>/dev/null | grep -qx "$musl" || ! command -v musl-gcc >/dev/null 2>&1; then
  echo "install/image.sh: the image needs static binaries: add Rust's $musl target (rustup target add $musl) and musl-gcc (apt-get install musl-tools)" >&2
  exit 1
fi
cargo build --release --locked --quiet --target "$musl" --bin gpushare --bin gpushare-runtime --bin gpushare-hook

work=target/image
rm -rf "$work"
mkdir -p "$work/rootfs/usr/bin" "$work/rootfs/etc/gpushare" "$work/rootfs/tmp" "$work/archive"
for b in gpushare gpushare-runtime gpushare-hook; do
  install -m 0755 "target/$musl/release/$b" "$work/rootfs/usr/bin/$b"
done
chmod 1777 "$work/rootfs/tmp"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$work/rootfs" -cf "$work/archive/layer.tar" .
layer=$(sha256sum "$work/archive/layer.tar" | cut -d' ' -f1)
cat >"$work/archive/config.json" <<CONFIG
{"architecture":"$arch","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/bin"],"Entrypoint":["/usr/bin/gpushare"],"Cmd":["device-plugin"],"Labels":{"org.opencontainers.image.title":"gpushare","org.opencontainers.image.version":"$version"}},"rootfs":{"type":"layers","diff_ids":["sha256:$layer"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"install/image.sh"}]}
CONFIG
config=$(sha256sum "$work/archive/config.json" | cut -d' ' -f1)
mv "$work/archive/config.json" "$work/archive/$config.json"
mkdir -p "$work/archive/$layer"
mv "$work/archive/layer.tar" "$work/archive/$layer/layer.tar"
cat >"$work/archive/manifest.json" <<MANIFEST
[{"Config":"$config.json","RepoTags":["$tag"],"Layers":["$layer/layer.tar"]}]
MANIFEST
out=$PWD/$work/gpushare-$version.tar
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/archive" -cf "$out" .
echo "$out"
