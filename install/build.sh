#!/usr/bin/env bash
# Builds the three binaries for installing on a node into target/node/ and
# prints that directory. gpushare-runtime and gpushare-hook, which run at
# every container start, are linked statically (no dynamic loader at each
# exec: about a third of a millisecond on the bench). gpushare, the
# operators' command, stays dynamic: it loads NVML (libnvidia-ml.so.1) at run
# time, which a static glibc binary cannot do reliably.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
# On x86_64, gpushare-hook (also the full runtime) is linked against musl's
# C library rather than glibc's: static glibc's start-up costs about 0.3 ms
# more per exec on a VM (see build.rs). musl's files come from Debian's
# musl-dev, installed here when missing; without them it stays glibc.
musl=/usr/lib/x86_64-linux-musl
if [ "${host%%-*}" = x86_64 ]; then
  if [ ! -e "$musl/libc.a" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing musl-dev with apt-get (gpushare-hook is linked against musl)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-dev >/dev/null 2>&1 ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-dev >/dev/null; }
  fi
  if [ -e "$musl/libc.a" ]; then
    export GPUSHARE_MUSL_LIB=$musl
  else
    echo "warning: no musl-dev ($musl/libc.a): gpushare-hook linked against glibc, about 0.3 ms slower per GPU container start; install musl-dev and build again" >&2
  fi
fi
# Flags given with --target apply to the binaries only, not to build-time
# helpers (proc macros cannot be linked statically).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --quiet --target "$host" --bin gpushare-runtime --bin gpushare-hook
cargo build --release --locked --quiet --bin gpushare
out=$PWD/target/node
mkdir -p "$out"
cp "target/$host/release/gpushare-runtime" "target/$host/release/gpushare-hook" target/release/gpushare "$out/"
echo "$out"
