#!/usr/bin/env bash
# Builds the three binaries for installing on a node into target/node/ and
# prints that directory. gpushare-runtime and gpushare-hook, which run at
# every container start, are linked statically against glibc (crt-static:
# no dynamic loader and no library search at each exec). gpushare, the
# operators' command, stays dynamic: it loads NVML (libnvidia-ml.so.1) at
# run time, which a static glibc program cannot do reliably.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
# Flags given with --target apply to the binaries only, not to build-time
# helpers (proc macros cannot be linked statically).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --quiet --target "$host" --bin gpushare-runtime --bin gpushare-hook
cargo build --release --locked --quiet --bin gpushare
out=$PWD/target/node
mkdir -p "$out"
cp "target/$host/release/gpushare-runtime" "target/$host/release/gpushare-hook" target/release/gpushare "$out/"
echo "$out"
