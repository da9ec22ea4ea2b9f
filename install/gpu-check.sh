#!/usr/bin/env bash
# The checks that need a real NVIDIA GPU, in one go, with a report.
#
#   install/gpu-check.sh prepare   # here (cargo, gcc): stage target/gpu-check
#   install/gpu-check.sh run       # on the GPU machine (root), from the repo root
#
# `prepare` builds the node binaries (install/build.sh), the probe image
# (integration/probe/rootfs.sh: glibc + busybox + cuda-probe, no driver file)
# and stages runc with its libseccomp, so `run` needs neither cargo nor gcc
# nor network: carry target/gpu-check to the GPU machine.
#
# `run` writes its report to $OUT/gpu-check.txt (or ./gpu-check.txt) and
# checks, with the node's real driver:
#  1. a container through gpushare-runtime + runc, NVIDIA_VISIBLE_DEVICES=0:
#     cuInit = 0, one device and its name, a context, a 1 MiB allocation set
#     and read back; nvidia-smi inside lists exactly one GPU;
#  2. the same through the hook alone (runc with the hooks.d-style hooks);
#  3. MPS (daemon started by gpushare, compute mode left as the card has it):
#     two clients at 25 % and 50 % at once, each context's SM count
#     (cuCtxGetExecAffinity), and `gpushare status` while both hold the GPU;
#  4. a third client, given the control utility by the `utility`
#     capability, sends `quit`: the daemon must refuse it and keep serving;
#  5. throughput: four clients running the same kernel loop at once for a
#     fixed time, under MPS at 25 % each and without MPS (time-slicing):
#     the aggregate kernels per second of each, side by side;
#  6. the device plugin (`gpushare device-plugin`, kubelet's side played by
#     the staged bench binary) allocates 30 units: the container created
#     with that allocation, under MPS, gets about 30 % of the SMs;
#  7. the bench (install/bench.sh's: the shim, whole lives against the
#     stand-in and against plain runc, 200 creates at once, the hook alone,
#     the NRI plugin), staged with its C helpers by `prepare`.
# Without a driver it runs against a simulated node as far as it can and
# says what it could not check.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=$PWD/target/gpu-check

prepare() {
  set -e
  mkdir -p "$STAGE/bin"
  bins=$(install/build.sh)
  cp "$bins"/gpushare "$bins"/gpushare-runtime "$bins"/gpushare-hook "$STAGE/bin/"
  rm -rf "$STAGE/rootfs"
  integration/probe/rootfs.sh "$STAGE/rootfs"
  # runc as Debian builds it, with the one library it links beyond glibc.
  runc=$(command -v runc)
  cp -L "$runc" "$STAGE/bin/runc.real"
  mkdir -p "$STAGE/lib"
  cp -L "$(ldd "$runc" | awk '/libseccomp/ {print $3}')" "$STAGE/lib/"
  cat >"$STAGE/bin/runc" <<'SH'
#!/bin/sh
d=$(dirname "$0")
LD_LIBRARY_PATH="$d/../lib" exec "$d/runc.real" "$@"
SH
  chmod 755 "$STAGE/bin/runc"
  # The bench (integration/bench.rs, as install/bench.sh runs it), built
  # here with its C helpers, since the GPU machine has no compiler.
  local exe
  exe=$(cargo bench --no-run --locked --features root-tests --bench shim 2>&1 |
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
  [ -x "$exe" ] || { echo "gpu-check prepare: the bench did not build" >&2; exit 1; }
  mkdir -p "$STAGE/bench"
  cp "$exe" "$STAGE/bench/shim"
  "$STAGE/bench/shim" --stage-helpers "$STAGE/bench"
  du -sh "$STAGE"
  echo "staged $STAGE: carry target/gpu-check, then run install/gpu-check.sh run"
}

say() { echo "$*" | tee -a "$REPORT"; }
section() { say; say "== $*"; }
# Runs a command, its output into the report.
show() { "$@" 2>&1 | tee -a "$REPORT"; return "${PIPESTATUS[0]}"; }

run() {
  [ "$(id -u)" -eq 0 ] || { echo "gpu-check run: needs root" >&2; exit 1; }
  [ -x "$STAGE/bin/gpushare-runtime" ] || { echo "gpu-check run: $STAGE is not staged: run install/gpu-check.sh prepare first (where cargo is)" >&2; exit 1; }
  local out=${OUT:-$PWD}
  REPORT=$out/gpu-check.txt
  : >"$REPORT"
  BIN=$STAGE/bin
  # On /run, as a node keeps it (not /dev/shm: the MPS daemons cover that).
  WORK=$(mktemp -d /run/gpushare-gpu-check.XXXXXX)
  RUNC_ROOT=$WORK/runc-root
  local runc_path
  runc_path=$(command -v runc || echo "$BIN/runc")
  trap 'for c in $(ls "$RUNC_ROOT" 2>/dev/null); do "$runc_path" --root "$RUNC_ROOT" delete --force "$c" >/dev/null 2>&1; done; "$BIN/gpushare" mps stop >/dev/null 2>&1; rm -rf "$WORK"' EXIT

  section "machine"
  say "date: $(date -u +%FT%TZ)"
  say "kernel: $(uname -r)"
  show nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,compute_mode --format=csv,noheader
  say "runc: $runc_path ($("$runc_path" --version | head -1))"
  say "gpushare: $("$BIN/gpushare" --version)"
  say "ld.so.cache driver entries:"
  ldconfig -p | grep -E 'libcuda\.so|libnvidia-ml\.so' | tee -a "$REPORT"
  local real=0
  if compgen -G "/proc/driver/nvidia/gpus/*/information" >/dev/null; then
    real=1
    cat >"$WORK/config.toml" <<TOML
[runtime]
path = "$runc_path"
state_dir = "$WORK/state"
[devices]
inventory = "procfs"
[mps]
root = "$WORK/mps"
compute_mode = "leave"
TOML
    export GPUSHARE_CONFIG=$WORK/config.toml
  else
    say "no NVIDIA driver loaded: a simulated node, the host's driver user-space"
    eval "$("$BIN/gpushare" simulate --gpus 2 --dir "$WORK/node")"
    sed -i "s|^\[runtime\]|[runtime]\npath = \"$runc_path\"|" "$GPUSHARE_CONFIG"
  fi
  show "$BIN/gpushare" inventory

  # bundle NAME SCRIPT ENV...: a bundle on its own copy of the probe image
  # (with the annotations in $ANNOTATIONS, a JSON object).
  ANNOTATIONS='{}'
  bundle() {
    local name=$1 script=$2; shift 2
    local env='"PATH=/usr/bin:/bin"'
    for e in "$@"; do env="$env, \"$e\""; done
    mkdir -p "$WORK/$name"
    cp -a "$STAGE/rootfs" "$WORK/$name/rootfs"
    cat >"$WORK/$name/config.json" <<JSON
{"ociVersion": "1.0.2-dev",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
   "args": ["sh", "-c", "$script"], "env": [$env],
   "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
   "noNewPrivileges": true},
 "root": {"path": "rootfs", "readonly": false},
 "hostname": "$name",
 "annotations": $ANNOTATIONS,
 "mounts": [
   {"destination": "/proc", "type": "proc", "source": "proc"},
   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
   {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}],
 "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]},
   "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}}
JSON
  }
  with_hook() { # bundle: hooks as a hooks.d file gives them
    python3 - "$WORK/$1/config.json" "$BIN/gpushare-hook" "$GPUSHARE_CONFIG" <<'PY'
import json, sys
p, hook, cfg = sys.argv[1:]
s = json.load(open(p))
h = lambda st: [{"path": hook, "args": ["gpushare-hook", st], "env": ["GPUSHARE_CONFIG=" + cfg]}]
s["hooks"] = {"prestart": h("prestart"), "poststop": h("poststop")}
json.dump(s, open(p, "w"))
PY
  }
  local fails=0
  expect() { # what, pattern, file
    if grep -qE "$2" "$3"; then say "ok: $1"; else say "FAILED: $1 (no /$2/ in the output above)"; fails=$((fails + 1)); fi
  }

  section "1. CUDA through gpushare-runtime + runc (NVIDIA_VISIBLE_DEVICES=0)"
  bundle shim "cuda-probe; nvidia-smi -L; echo smi-exit \$?" NVIDIA_VISIBLE_DEVICES=0
  show timeout 120 "$BIN/gpushare-runtime" --root "$RUNC_ROOT" run --bundle "$WORK/shim" gc-shim </dev/null >"$WORK/shim.out"
  cat "$WORK/shim.out" # (show put it in the report)
  if [ $real = 1 ]; then
    expect "cuInit = 0" 'cuInit=0 ' "$WORK/shim.out"
    expect "one device" '^devices: 1$' "$WORK/shim.out"
    expect "1 MiB set and read back" 'memory: 1 MiB allocated, set and read back: ok' "$WORK/shim.out"
    expect "nvidia-smi lists one GPU" '^GPU 0: ' "$WORK/shim.out"
  else
    expect "the real libcuda answered" 'cuInit=(100|999)' "$WORK/shim.out"
  fi

  section "2. CUDA through the hook alone (runc, hooks.d-style hooks)"
  bundle hook "cuda-probe" NVIDIA_VISIBLE_DEVICES=0
  with_hook hook
  show timeout 120 "$runc_path" --root "$RUNC_ROOT" run --bundle "$WORK/hook" gc-hook </dev/null >"$WORK/hook.out"
  cat "$WORK/hook.out" # (show put it in the report)
  if [ $real = 1 ]; then
    expect "cuInit = 0 (hook alone)" 'cuInit=0 ' "$WORK/hook.out"
    expect "1 MiB set and read back (hook alone)" 'read back: ok' "$WORK/hook.out"
  else
    expect "the real libcuda answered (hook alone)" 'cuInit=(100|999)' "$WORK/hook.out"
  fi

  section "3. MPS: two clients at 25 % and 50 % at once"
  show "$BIN/gpushare" mps start --gpu 0
  for pct in 25 50; do
    bundle "mps$pct" "cuda-probe --hold 20" NVIDIA_VISIBLE_DEVICES=0 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$pct
    "$BIN/gpushare-runtime" --root "$RUNC_ROOT" create --bundle "$WORK/mps$pct" "gc-mps$pct" </dev/null >"$WORK/mps$pct.out" 2>&1
    "$runc_path" --root "$RUNC_ROOT" start "gc-mps$pct"
  done
  for _ in $(seq 1 60); do
    grep -q 'read back' "$WORK/mps25.out" && grep -q 'read back' "$WORK/mps50.out" && break
    grep -q 'cuInit=[1-9]' "$WORK/mps25.out" && grep -q 'cuInit=[1-9]' "$WORK/mps50.out" && break
    sleep 0.5
  done
  say "-- while both hold the GPU: gpushare status"
  show "$BIN/gpushare" status
  "$BIN/gpushare" status --json >"$WORK/status.json" 2>&1
  for pct in 25 50; do
    for _ in $(seq 1 60); do "$runc_path" --root "$RUNC_ROOT" state "gc-mps$pct" 2>/dev/null | grep -q '"stopped"' && break; sleep 0.5; done
    say "-- client at $pct %:"
    tee -a "$REPORT" <"$WORK/mps$pct.out"
    "$runc_path" --root "$RUNC_ROOT" delete --force "gc-mps$pct" >/dev/null 2>&1
  done
  if [ $real = 1 ]; then
    local sms a b
    sms=$(sed -n 's/^device 0: .*, \([0-9]*\) SMs$/\1/p' "$WORK/shim.out")
    a=$(sed -n 's/^context: SM count //p' "$WORK/mps25.out")
    b=$(sed -n 's/^context: SM count //p' "$WORK/mps50.out")
    say "SMs: device $sms, client at 25 % $a, client at 50 % $b"
    expect "25 % client ran" 'read back: ok' "$WORK/mps25.out"
    expect "50 % client ran" 'read back: ok' "$WORK/mps50.out"
    if [ -n "$sms" ] && [ -n "$a" ] && [ -n "$b" ] && [ $((a * 4)) -le $((sms * 3 / 2)) ] && [ $((a * 4)) -ge $((sms / 2)) ] && [ $((b * 2)) -le $((sms * 3 / 2)) ] && [ $((b * 2)) -ge $((sms / 2)) ]; then
      say "ok: SM counts are about a quarter and a half"
    else
      say "FAILED: SM counts are not about a quarter and a half"; fails=$((fails + 1))
    fi
    expect "status lists both clients" '"thread_percentage": 25' "$WORK/status.json"
  else
    say "(no GPU: an MPS client's libcuda meets the daemon, which cannot start a server)"
    expect "the clients reached the MPS daemon" 'CUDA_ERROR_MPS' "$WORK/mps25.out"
  fi

  section "4. a client sends quit to the MPS control daemon"
  bundle quitter "echo quit | nvidia-cuda-mps-control; echo control-exit \$?" NVIDIA_VISIBLE_DEVICES=0 NVIDIA_DRIVER_CAPABILITIES=compute,utility
  show timeout 60 "$BIN/gpushare-runtime" --root "$RUNC_ROOT" run --bundle "$WORK/quitter" gc-quit </dev/null >"$WORK/quit.out"
  cat "$WORK/quit.out" # (show put it in the report)
  show "$BIN/gpushare" mps status --gpu 0 >"$WORK/mps-status.out"
  expect "the daemon still runs after a client's quit" 'running' "$WORK/mps-status.out"
  show "$BIN/gpushare" mps stop --gpu 0

  section "5. throughput: four clients, the same kernel loop for ${TP_SECONDS:=20} s, with MPS (25 % each) and without"
  # clients MODE ENV...: four containers at once, each running the loop;
  # their aggregate kernels per second into $WORK/tp-MODE.rate.
  clients() {
    local mode=$1; shift
    for i in 1 2 3 4; do
      bundle "tp-$mode-$i" "cuda-probe --kernels $TP_SECONDS" NVIDIA_VISIBLE_DEVICES=0 "$@"
      "$BIN/gpushare-runtime" --root "$RUNC_ROOT" create --bundle "$WORK/tp-$mode-$i" "gc-tp-$mode-$i" </dev/null >"$WORK/tp-$mode-$i.out" 2>&1
    done
    for i in 1 2 3 4; do "$runc_path" --root "$RUNC_ROOT" start "gc-tp-$mode-$i"; done
    for i in 1 2 3 4; do
      for _ in $(seq 1 $((TP_SECONDS * 2 + 120))); do "$runc_path" --root "$RUNC_ROOT" state "gc-tp-$mode-$i" 2>/dev/null | grep -q '"stopped"' && break; sleep 0.5; done
      "$runc_path" --root "$RUNC_ROOT" delete --force "gc-tp-$mode-$i" >/dev/null 2>&1
      say "-- $mode, client $i: $(grep -E '^(kernels|libcuda|context)' "$WORK/tp-$mode-$i.out" | tr '\n' ' ')"
    done
    cat "$WORK"/tp-"$mode"-?.out | sed -n 's|^kernels: .*, \([0-9.]*\)/s$|\1|p' |
      awk '{s += $1; n++} END {if (n == 4) printf "%.1f", s}' >"$WORK/tp-$mode.rate"
  }
  show "$BIN/gpushare" mps start --gpu 0
  clients mps CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25
  show "$BIN/gpushare" mps stop --gpu 0
  clients timeslice
  local mps_rate slice_rate
  mps_rate=$(cat "$WORK/tp-mps.rate")
  slice_rate=$(cat "$WORK/tp-timeslice.rate")
  if [ $real = 1 ]; then
    if [ -n "$mps_rate" ] && [ -n "$slice_rate" ]; then
      say "aggregate kernels per second: MPS at 25 % each $mps_rate, time-slicing $slice_rate"
      say "ok: both ran four clients to the end"
    else
      say "FAILED: not every client ran its loop to the end (MPS: '${mps_rate}', time-slicing: '${slice_rate}')"
      fails=$((fails + 1))
    fi
  else
    say "(no GPU: the clients' libcuda answers without a device; no kernel ran)"
    expect "the real libcuda answered (throughput clients)" 'cuInit=(100|999)' "$WORK/tp-timeslice-1.out"
  fi

  section "6. the device plugin's allocation (30 units) applied to a container"
  mkdir -p "$WORK/kubelet"
  "$BIN/gpushare" device-plugin --kubelet-dir "$WORK/kubelet" 2>"$WORK/device-plugin.log" &
  local dp=$!
  if [ -x "$STAGE/bench/shim" ]; then
    show timeout 60 "$STAGE/bench/shim" --kubelet-allocate "$WORK/kubelet" 30 >"$WORK/alloc.out"
  else
    say "FAILED: no staged bench (kubelet's side of the allocation): run install/gpu-check.sh prepare"
    fails=$((fails + 1))
  fi
  kill "$dp" 2>/dev/null; wait "$dp" 2>/dev/null
  tee -a "$REPORT" <"$WORK/device-plugin.log"
  local key
  key=$(sed -n 's|^annotation gpushare.io/allocation=||p' "$WORK/alloc.out" 2>/dev/null)
  if [ -n "$key" ]; then
    show "$BIN/gpushare" mps start --gpu 0
    # The pod's own variables ask for something else: the allocation wins.
    ANNOTATIONS="{\"gpushare.io/allocation\": \"$key\"}"
    bundle alloc "cuda-probe; env | grep -E '^(NVIDIA_VISIBLE_DEVICES|CUDA_MPS_ACTIVE_THREAD_PERCENTAGE)='" NVIDIA_VISIBLE_DEVICES=0 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=80
    ANNOTATIONS='{}'
    show timeout 120 "$BIN/gpushare-runtime" --root "$RUNC_ROOT" run --bundle "$WORK/alloc" gc-alloc </dev/null >"$WORK/alloc-run.out"
    cat "$WORK/alloc-run.out" # (show put it in the report)
    show "$BIN/gpushare" mps stop --gpu 0
    expect "the allocation's share in the container" '^CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30$' "$WORK/alloc-run.out"
    if [ $real = 1 ]; then
      local sms c
      sms=$(sed -n 's/^device 0: .*, \([0-9]*\) SMs$/\1/p' "$WORK/shim.out")
      c=$(sed -n 's/^context: SM count //p' "$WORK/alloc-run.out")
      say "SMs: device $sms, the allocated container $c"
      if [ -n "$sms" ] && [ -n "$c" ] && [ $((c * 100)) -le $((sms * 45)) ] && [ $((c * 100)) -ge $((sms * 15)) ]; then
        say "ok: the allocated container's SM count is about 30 %"
      else
        say "FAILED: the allocated container's SM count is not about 30 %"; fails=$((fails + 1))
      fi
    fi
  else
    say "FAILED: the device plugin gave no allocation"
    fails=$((fails + 1))
  fi

  section "7. what gpushare costs a container on this host (the bench, against plain runc)"
  if [ -x "$STAGE/bench/shim" ]; then
    show env PATH="$(dirname "$runc_path"):$PATH" GPUSHARE_BIN_DIR="$BIN" \
      GPUSHARE_BENCH_PREBUILT="$STAGE/bench" BENCH_N="${BENCH_N:-100}" \
      timeout 300 "$STAGE/bench/shim" --bench >"$WORK/bench.out"
    cat "$WORK/bench.out" # (show put it in the report)
    expect "the bench ran to its end" 'hook alone, poststop' "$WORK/bench.out"
  else
    say "FAILED: no staged bench: run install/gpu-check.sh prepare"
    fails=$((fails + 1))
  fi

  section "result"
  if [ $real = 0 ]; then say "simulated node: the checks that need a GPU were not run: cuInit = 0 and a context (1, 2), the MPS clients' SM shares and status with both (3), the kernel throughput with and without MPS (5), the allocated container's SM count (6)"; fi
  say "failed checks: $fails"
  [ $fails -eq 0 ]
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: install/gpu-check.sh prepare|run" >&2; exit 2 ;;
esac
