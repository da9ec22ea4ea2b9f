#!/usr/bin/env bash
# Runs every test: unit tests, the binaries against fixture bundles, and the
# end-to-end tests with real runc, podman and NVIDIA's MPS daemon on a
# simulated node (these need root), with the binaries a node installs.
set -euo pipefail
cd "$(dirname "$0")/.."
. install/prereqs.sh
need_root install/test.sh
ensure_packages tests
# The package and the tarball, for integration/package.rs to install and purge.
built=$(install/package.sh)
export GPUSHARE_DEB=$(echo "$built" | sed -n 1p)
export GPUSHARE_TARBALL=$(echo "$built" | sed -n 2p)
# The device plugin's image, for integration/package.rs to import and run.
export GPUSHARE_IMAGE=$(install/image.sh)
# Debian 13's containerd 1.7, Docker 26 and podman 5.4, for the engine matrix.
export GPUSHARE_TRIXIE_ENGINES=$(trixie_engines "$PWD/target/engines/trixie")
export GPUSHARE_TRIXIE_PODMAN=$PWD/target/engines/trixie/podman5
# The tests run the binaries a node installs (install/build.sh's, which the
# package holds), not cargo's debug build of them.
export GPUSHARE_BIN_DIR=$PWD/target/node
exec cargo test --locked --features root-tests
