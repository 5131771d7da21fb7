#!/usr/bin/env bash
# The end-to-end load runs (examples/load_run.rs): builds the release binary and the examples,
# makes sure a broker runs, then `load_run [SCENARIO] [EVENTS] [ROUNDS]`
# (SCENARIO: throughput | profiles | protection | receipts | ordered | backlog | all; default all, 30000 events, 3 rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rabbitmq.sh
cargo build --release --quiet --bin callback-dispatcher --example bare_consumer --example load_run
exec target/release/examples/load_run "$@"
