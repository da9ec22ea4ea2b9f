#!/usr/bin/env bash
# Builds the three binaries for installing on a node into target/node/ and
# prints that directory. gpushare-runtime and gpushare-hook, which run at
# every container start, are static: built for the real musl target where
# the Rust toolchain has it (added with rustup when it can be fetched; a
# static musl program starts several times faster than a static glibc one
# on a VM, see the README's Performance section), else linked statically
# against glibc (crt-static). gpushare, the operators' command, stays
# dynamic: it loads NVML (libnvidia-ml.so.1) at run time, which a static
# program cannot do reliably.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
musl=${host%%-*}-unknown-linux-musl
has_musl() { rustup target list --installed 2>/dev/null | grep -qx "$musl"; }
if ! has_musl && command -v rustup >/dev/null 2>&1; then
  timeout 300 rustup target add "$musl" >/dev/null 2>&1 || true
fi
# The bundled SQLite is C, compiled for musl with musl-gcc (Debian: musl-tools).
if has_musl && ! command -v musl-gcc >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing musl-tools with apt-get (musl-gcc, for the bundled SQLite)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >/dev/null 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >/dev/null; } || true
fi
if has_musl && command -v musl-gcc >/dev/null 2>&1; then
  target=$musl
  cargo build --release --locked --quiet --target "$target" --bin gpushare-runtime --bin gpushare-hook
else
  echo "note: no $musl target (or no musl-gcc): gpushare-runtime and gpushare-hook are linked statically against glibc, which starts slower on a VM" >&2
  target=$host
  # Flags given with --target apply to the binaries only, not to build-time
  # helpers (proc macros cannot be linked statically).
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --quiet --target "$target" --bin gpushare-runtime --bin gpushare-hook
fi
cargo build --release --locked --quiet --bin gpushare
out=$PWD/target/node
mkdir -p "$out"
cp "target/$target/release/gpushare-runtime" "target/$target/release/gpushare-hook" target/release/gpushare "$out/"
echo "$out"
