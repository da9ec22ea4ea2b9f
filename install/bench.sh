#!/usr/bin/env bash
# What gpushare costs a container, measured on this machine (root): the
# process-start floor, gpushare's own cost with a stand-in runtime, two
# container lives (long-running and short-lived) against plain runc as a
# share of runc's own, 200 creates at once, and the hook used alone, with
# containers held in the ledger (BENCH_HELD, 100). Uses the binaries that
# install/build.sh makes, as a node installs them. GPUSHARE_BENCH_BASELINE=DIR
# (another build's three binaries) measures that build beside this one.
set -euo pipefail
cd "$(dirname "$0")/.."
. install/prereqs.sh
need_root install/bench.sh
ensure_packages
# The floor's reference, a static musl `true`, and the node build's bundled
# SQLite for musl need musl-gcc (Debian: musl-tools).
if ! command -v musl-gcc >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools >/dev/null 2>&1 ||
    echo "musl-tools could not be installed: the floor is shown without the musl line" >&2
fi
bins=$(install/build.sh)
GPUSHARE_BIN_DIR=$bins cargo bench --locked --quiet --features root-tests --bench shim
