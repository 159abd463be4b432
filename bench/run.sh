#!/usr/bin/env bash
# Shepherd's benchmark, one command: builds release binaries (Shepherd, mock-upstream and the
# load generator bench/loadgen), installs nginx when missing, and runs direct / nginx / Shepherd
# with the same load (see bench/bench.py and docs/performance.md). Options pass through, e.g.
# `bench/run.sh --rounds 1 --soak 10`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "== installing nginx"
  apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "the bench needs 2 cores (proxy on one, load on the other)" >&2
  exit 1
fi

echo "== building release binaries"
cargo build --release --quiet -p shepherd -p mock-upstream -p shepherd-loadgen
cargo build --release --quiet -p shepherd --example ledger_insert

echo "== running"
exec python3 bench/bench.py "$@"
