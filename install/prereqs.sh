#!/usr/bin/env bash
# Sourced by demo.sh, test.sh and bench.sh: checks for root and installs
# what the end-to-end runs need (runc, a static busybox for the test rootfs,
# podman for the hooks.d tests) with apt-get when it is missing.
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$1: needs root (it makes device nodes and runs containers with runc): run it as root or with sudo" >&2
    exit 1
  fi
}

# NVIDIA's MPS daemon and NVML library are in Debian's non-free component
# (NVML's alternatives package in contrib); this adds both components for
# the Debian suites this machine uses, in a file of its own.
enable_non_free() {
  local list=/etc/apt/sources.list.d/gpushare-non-free.sources
  local codename
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  cat >"$list" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
}

# ensure_packages [mps|tests]: runc and busybox-static always; NVIDIA's MPS
# control daemon (nvidia-cuda-mps) and the driver's user-space (libcuda1,
# libnvidia-ml1, nvidia-smi) for mps and tests; the engines (podman,
# docker.io, containerd), gcc and protoc for tests.
ensure_packages() {
  local missing=()
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  if [ "${1:-}" = tests ]; then
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v containerd >/dev/null 2>&1 || missing+=(containerd)
  fi
  if [ -n "${1:-}" ] && ! command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
    missing+=(nvidia-cuda-mps)
    enable_non_free
  fi
  # The driver's user-space (Debian's real libraries and nvidia-smi, which
  # load and answer "no driver" without a GPU), injected into GPU containers.
  if [ -n "${1:-}" ] && ! ldconfig -p | grep -q 'libnvidia-ml.so.1 '; then
    missing+=(libnvidia-ml1)
    enable_non_free
  fi
  if [ -n "${1:-}" ] && ! ldconfig -p | grep -q 'libcuda.so.1 '; then
    missing+=(libcuda1)
    enable_non_free
  fi
  if [ -n "${1:-}" ] && [ ! -e /usr/bin/nvidia-smi ]; then
    missing+=(nvidia-smi)
    enable_non_free
  fi
  # The driver tests build a small C program into an image rootfs; the CRI
  # test's client is generated from Kubernetes' protobuf files (protoc).
  if [ "${1:-}" = tests ]; then
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    [ -e /usr/include/dlfcn.h ] || missing+=(libc6-dev)
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    # A user-namespaced pod needs a network of its own: Debian's CNI plugins.
    [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  fi
  if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
    missing+=(busybox-static)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing ${missing[*]} and no apt-get to install them: install runc and a static busybox at /bin/busybox by hand" >&2
    exit 1
  fi
  echo "installing ${missing[*]} with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Debian 13's containerd (1.7) and Docker (26), for the tests' engine
# matrix beside Debian 12's: downloaded with apt from trixie into $1 and
# extracted there, never installed over the system (their binaries need
# only glibc 2.34; runc stays Debian 12's). Prints the directory whose
# usr/bin and usr/sbin hold them. Idempotent.
trixie_engines() {
  local dir=$1
  if [ -x "$dir/root/usr/bin/containerd" ] && [ -x "$dir/root/usr/sbin/dockerd" ] && [ -x "$dir/root/usr/bin/docker" ]; then
    echo "$dir/root"
    return 0
  fi
  rm -rf "$dir"
  mkdir -p "$dir/lists/partial" "$dir/debs" "$dir/root"
  cat >"$dir/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
LIST
  local apt=(apt-get -qq -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$dir/lists" -o APT::Get::List-Cleanup=0)
  echo "fetching Debian 13's containerd and docker.io into $dir (for the engine matrix)" >&2
  "${apt[@]}" update >&2
  (cd "$dir/debs" && "${apt[@]}" -o APT::Sandbox::User=root download containerd docker.io docker-cli >&2)
  local deb
  for deb in "$dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$dir/root"
  done
  echo "$dir/root"
}
