#!/usr/bin/env bash
# Sets up one Kubernetes node for gpushare, without a DaemonSet: installs the
# binaries, wires containerd (or CRI-O) and, where the NVIDIA driver is
# loaded, enables the MPS daemons. Run on the node as root, from a checkout:
#   install/node-setup.sh containerd|crio
# then restart the engine as printed, label the node as printed, and apply
# install/runtimeclass.yaml once to the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:?usage: install/node-setup.sh containerd|crio}
bins=$(install/build.sh)
install -m 0755 "$bins"/gpushare "$bins"/gpushare-runtime "$bins"/gpushare-hook /usr/local/bin/
/usr/local/bin/gpushare install "$engine"
if [ -d /proc/driver/nvidia/gpus ] && command -v systemctl >/dev/null; then
  install -m 0644 install/gpushare-mps.service /etc/systemd/system/
  systemctl daemon-reload
  systemctl enable --now gpushare-mps
fi
/usr/local/bin/gpushare inventory
cat >&2 <<NEXT

Next, for Kubernetes: restart the engine as printed above, then label this node
so pods with runtimeClassName: gpushare are scheduled here (its node name is
usually its hostname, $(hostname)):
  kubectl label node $(hostname) gpushare.io/runtime=true
and, once per cluster: kubectl apply -f install/runtimeclass.yaml
NEXT
