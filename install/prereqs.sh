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
    # Debian 13's podman runs on its own C library, set with patchelf.
    command -v patchelf >/dev/null 2>&1 || missing+=(patchelf)
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

# Debian 13's containerd (1.7), Docker (26) and podman (5.4), for the tests'
# engine matrix beside Debian 12's: downloaded with apt from trixie into $1
# and extracted there, never installed over the system. containerd and
# Docker need only glibc 2.34 and run as they are; podman needs Debian 13's
# glibc, so it and netavark get Debian 13's C library and their other
# libraries from an extracted tree of their own ($1/podman5), set as their
# interpreter and search path (patchelf): the system's C library is never
# touched. runc and conmon stay Debian 12's. Prints the containerd/Docker
# tree; the podman tree is beside it. Idempotent.
TRIXIE_PODMAN_DEBS="podman netavark libc6 libgcc-s1 libgpgme11t64 libassuan9 libgpg-error0 libseccomp2 libsqlite3-0 libsubid5 libaudit1 libcap-ng0 libselinux1 libpcre2-8-0 libsemanage2 libsepol2 libbsd0 libmd0 libacl1 libattr1 libbz2-1.0 libcrypt1 libpam0g"
trixie_engines() {
  local dir=$1
  if [ -x "$dir/root/usr/bin/containerd" ] && [ -x "$dir/root/usr/sbin/dockerd" ] && [ -x "$dir/root/usr/bin/docker" ] \
    && [ -x "$dir/podman5/usr/bin/podman" ] && [ -e "$dir/podman5/.patched" ]; then
    echo "$dir/root"
    return 0
  fi
  rm -rf "$dir"
  mkdir -p "$dir/lists/partial" "$dir/debs" "$dir/podman-debs" "$dir/root" "$dir/podman5"
  cat >"$dir/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
LIST
  local apt=(apt-get -qq -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$dir/lists" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
  echo "fetching Debian 13's containerd, docker.io and podman into $dir (for the engine matrix)" >&2
  "${apt[@]}" update >&2
  (cd "$dir/debs" && "${apt[@]}" download containerd docker.io docker-cli >&2)
  # shellcheck disable=SC2086
  (cd "$dir/podman-debs" && "${apt[@]}" download $TRIXIE_PODMAN_DEBS >&2)
  local deb
  for deb in "$dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$dir/root"
  done
  for deb in "$dir"/podman-debs/*.deb; do
    dpkg-deb -x "$deb" "$dir/podman5"
  done
  local p=$dir/podman5 lib=$dir/podman5/usr/lib/x86_64-linux-gnu b
  for b in usr/bin/podman usr/lib/podman/netavark; do
    patchelf --set-interpreter "$lib/ld-linux-x86-64.so.2" --force-rpath \
      --set-rpath "$lib:$p/lib/x86_64-linux-gnu" "$p/$b"
  done
  touch "$p/.patched"
  echo "$dir/root"
}
