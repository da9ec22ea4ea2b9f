#!/usr/bin/env bash
# The gpushare demo: containers share a node's GPUs through gpushare-runtime
# and the real runc. On a machine without NVIDIA GPUs it simulates a node
# with two Tesla T4 (real device nodes, so the device cgroup is real too);
# with a driver loaded it uses the node's own GPUs. Everything it makes is
# removed at the end (KEEP=1 keeps the work directory).
set -euo pipefail
cd "$(dirname "$0")/.."
. install/prereqs.sh
need_root install/demo.sh
ensure_packages mps

echo "== building"
cargo build --release --locked --quiet
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/gpushare-demo.XXXXXX)
RUNC_ROOT=$WORK/runc
IDS=()

cleanup() {
  for id in "${IDS[@]}"; do
    "$BIN/gpushare-runtime" --root "$RUNC_ROOT" delete --force "$id" >/dev/null 2>&1 || true
  done
  [ -n "${GPUSHARE_CONFIG:-}" ] && "$BIN/gpushare" mps stop >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if compgen -G "/proc/driver/nvidia/gpus/*/information" >/dev/null; then
  echo "== NVIDIA driver found: using this node's GPUs"
  cat >"$WORK/config.toml" <<TOML
[runtime]
state_dir = "$WORK/state"
[devices]
inventory = "procfs"
[mps]
root = "$WORK/mps"
# A demo leaves the GPUs' compute mode alone.
compute_mode = "leave"
TOML
  export GPUSHARE_CONFIG=$WORK/config.toml
else
  echo "== no NVIDIA driver: simulating a node with 2 x Tesla T4"
  eval "$("$BIN/gpushare" simulate --gpus 2 --dir "$WORK/node")"
fi
echo "GPUSHARE_CONFIG=$GPUSHARE_CONFIG"
"$BIN/gpushare" inventory
NGPUS=$("$BIN/gpushare" inventory --json | grep -c '"uuid"')
SECOND=$(( NGPUS > 1 ? 1 : 0 ))

echo
echo "== MPS on GPU 0: its containers get a share of its threads"
"$BIN/gpushare" mps start --gpu 0

# The image every demo container runs: a Debian-shaped root filesystem with
# glibc, busybox and cuda-probe (a small program that loads libcuda and NVML
# as CUDA programs do), and no driver file: gpushare brings the node's.
ROOTFS=$WORK/rootfs
integration/probe/rootfs.sh "$ROOTFS"

# bundle NAME ENV...: a bundle whose process shows what it was given, then waits.
bundle() {
  local name=$1; shift
  local env='"PATH=/usr/bin:/bin"'
  for e in "$@"; do env="$env, \"$e\""; done
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/config.json" <<JSON
{"ociVersion": "1.0.2-dev",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
   "args": ["sh", "-c", "echo \"\$(hostname): NVIDIA_VISIBLE_DEVICES=\$NVIDIA_VISIBLE_DEVICES \${CUDA_MPS_ACTIVE_THREAD_PERCENTAGE:+CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=\$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE} \${CUDA_MPS_PIPE_DIRECTORY:+CUDA_MPS_PIPE_DIRECTORY=\$CUDA_MPS_PIPE_DIRECTORY}\"; ls -l /dev | grep nvidia; cuda-probe; exec sleep 3600"],
   "env": [$env],
   "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
   "noNewPrivileges": true},
 "root": {"path": "$ROOTFS", "readonly": true},
 "hostname": "$name",
 "mounts": [
   {"destination": "/proc", "type": "proc", "source": "proc"},
   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
   {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}],
 "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]},
   "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}}
JSON
}

# start NAME ENV...: create through gpushare-runtime, then start with runc.
start() {
  local name=$1
  bundle "$@"
  echo "\$ gpushare-runtime create --bundle $WORK/$name $name    # ${*:2}"
  if "$BIN/gpushare-runtime" --root "$RUNC_ROOT" create --bundle "$WORK/$name" "$name" \
      >"$WORK/$name.out" 2>&1 </dev/null; then
    IDS+=("$name")
    runc --root "$RUNC_ROOT" start "$name"
  else
    echo "   refused, exit $?: $(cat "$WORK/$name.out")"
  fi
}

echo
echo "== what create would do, without doing it"
bundle demo-a NVIDIA_VISIBLE_DEVICES=0 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50
"$BIN/gpushare" explain --bundle "$WORK/demo-a"

echo
echo "== three modules: two share GPU 0 as MPS clients, one on GPU $SECOND; one asks for two GPUs"
start demo-a NVIDIA_VISIBLE_DEVICES=0 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50
start demo-b NVIDIA_VISIBLE_DEVICES=0 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25
start demo-c NVIDIA_VISIBLE_DEVICES=$SECOND
start demo-greedy NVIDIA_VISIBLE_DEVICES=0,1
sleep 1

echo
echo "== what each container sees"
for id in "${IDS[@]}"; do sed 's/^/   /' "$WORK/$id.out"; done

echo
echo "== gpushare status"
"$BIN/gpushare" status

echo
echo
echo "== deleting the containers releases their GPUs; the MPS daemon stops"
for id in "${IDS[@]}"; do "$BIN/gpushare-runtime" --root "$RUNC_ROOT" delete --force "$id"; done
IDS=()
"$BIN/gpushare" mps stop --gpu 0
"$BIN/gpushare" status
