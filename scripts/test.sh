#!/usr/bin/env bash
# The test command: a broker and the test tools, then format, lint and the whole suite.
#
# With cargo-nextest (installed here; `cargo install cargo-nextest --locked` elsewhere) the
# tests run as separate processes, three at a time, and tests/faults.rs, whose tests change
# the broker's global state (forced connection closes, a memory alarm, a broker restart),
# runs afterwards alone, one test at a time. Without it, `cargo test` runs every test binary
# in turn.
# Benchmarks are linted (clippy --all-targets) and run with `cargo bench`, not here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rabbitmq.sh
bash scripts/ensure-test-tools.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  failed=0
  cargo nextest run --locked --lib --bins --tests --examples --no-fail-fast \
    -E 'not binary(faults)' -j 3 || failed=1
  cargo nextest run --locked --test faults --no-fail-fast -j 1 || failed=1
  exit "$failed"
else
  echo "test.sh: cargo-nextest not found; running the suite with cargo test, one binary at a time"
  cargo test --locked --lib --bins --tests --examples --no-fail-fast
fi
