#!/usr/bin/env bash
# Sets up one node for gpushare from its package, without cargo and without
# a DaemonSet: installs the package (or the tarball), wires the engine, and
# where the NVIDIA driver is loaded enables the MPS unit. Run on the node as
# root:
#   install/node-setup.sh docker|containerd|podman|crio [PACKAGE]
# PACKAGE is a gpushare_<version>_amd64.deb or a gpushare-<version>-<arch>-linux.tar.gz
# made by install/package.sh (on a machine with cargo); without it the newest
# one under target/ beside this script is used.
set -euo pipefail
engine=${1:?usage: install/node-setup.sh docker|containerd|podman|crio [PACKAGE]}
case $engine in docker|containerd|podman|crio) ;; *)
  echo "node-setup: unknown engine $engine: give docker, containerd, podman or crio" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "node-setup: needs root (it installs a package and edits the engine's config): run it with sudo" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")/.." && pwd)
pkg=${2:-$(ls -t "$here"/target/debian/gpushare_*.deb "$here"/target/gpushare-*-linux.tar.gz 2>/dev/null | head -n 1 || true)}
if [ -z "$pkg" ] || [ ! -f "$pkg" ]; then
  echo "node-setup: no gpushare package given or found under $here/target: build one with install/package.sh (where cargo is) and pass its path" >&2
  exit 1
fi
case $pkg in
  *.deb)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$(realpath "$pkg")"
    bin=/usr/bin unit_dir=/lib/systemd/system ;;
  *.tar.gz)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar -C "$tmp" -xzf "$pkg"
    top=$(echo "$tmp"/gpushare-*)
    install -m 0755 "$top"/bin/gpushare "$top"/bin/gpushare-runtime "$top"/bin/gpushare-hook /usr/local/bin/
    install -D -m 0644 "$top"/share/gpushare/gpushare-mps.service /etc/systemd/system/gpushare-mps.service
    [ -e /etc/gpushare/config.toml ] || install -D -m 0644 "$top"/share/gpushare/config.toml /etc/gpushare/config.toml
    bin=/usr/local/bin unit_dir=/etc/systemd/system ;;
  *) echo "node-setup: $pkg is neither a .deb nor a .tar.gz" >&2; exit 2 ;;
esac
"$bin"/gpushare --version
"$bin"/gpushare install "$engine"
if [ -d /proc/driver/nvidia/gpus ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  systemctl enable --now gpushare-mps
  echo "enabled gpushare-mps ($unit_dir/gpushare-mps.service)"
fi
"$bin"/gpushare inventory || true
if [ "$engine" = containerd ] || [ "$engine" = crio ]; then
  cat >&2 <<NEXT

Next, for Kubernetes: restart the engine as printed above, then label this node
so pods with runtimeClassName: gpushare are scheduled here (its node name is
usually its hostname, $(hostname)):
  kubectl label node $(hostname) gpushare.io/runtime=true
and, once per cluster: kubectl apply -f install/k8s/runtimeclass.yaml
(and, to schedule GPU shares, install/k8s/device-plugin.yaml: README, Kubernetes)
NEXT
fi
