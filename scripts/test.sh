#!/usr/bin/env bash
# The test command: a broker and the test tools, then format, lint and the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rabbitmq.sh
bash scripts/ensure-test-tools.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets --no-fail-fast
