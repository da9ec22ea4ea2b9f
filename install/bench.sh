#!/usr/bin/env bash
# What gpushare costs a container start, measured on this machine (root):
# the shim against /bin/true and against runc, and the hook with a ledger
# of 1000 entries. Uses the static binaries that install/build.sh makes.
set -euo pipefail
cd "$(dirname "$0")/.."
. install/prereqs.sh
need_root install/bench.sh
ensure_packages
bins=$(install/build.sh)
GPUSHARE_BIN_DIR=$bins cargo bench --locked --quiet --bench shim
