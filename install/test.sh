#!/usr/bin/env bash
# Runs every test: unit tests, the binaries against fixture bundles, and the
# end-to-end tests with real runc, podman and NVIDIA's MPS daemon on a
# simulated node (these need root).
set -euo pipefail
cd "$(dirname "$0")/.."
. install/prereqs.sh
need_root install/test.sh
ensure_packages tests
exec cargo test --locked --features root-tests
