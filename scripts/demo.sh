#!/usr/bin/env bash
# The demo: a broker, a customer's auth server and callback receiver on this machine, the
# worker, and a few events published through it. Shows tokens fetched from the auth server
# and signed callbacks arriving verified. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-rabbitmq.sh

echo "== building (first time: a few minutes)"
cargo build --quiet --bin callback-dispatcher --example demo_servers
BIN=target/debug/callback-dispatcher
CONFIG=config/demo.yaml
LOGDIR=$(mktemp -d)
cleanup() {
  [ -n "${WORKER:-}" ] && kill "$WORKER" 2>/dev/null || true
  [ -n "${SERVERS:-}" ] && kill "$SERVERS" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== checking the configuration"
$BIN check-config --config $CONFIG

echo "== starting the customer's auth server and receiver (127.0.0.1:18080, :18081)"
target/debug/examples/demo_servers >"$LOGDIR/servers.log" 2>&1 &
SERVERS=$!
for _ in $(seq 1 50); do grep -q "demo servers:" "$LOGDIR/servers.log" 2>/dev/null && break; sleep 0.1; done

echo "== asking the auth server for a token the way the worker will (token --profile demo-oauth)"
$BIN token --config $CONFIG --profile demo-oauth

echo "== starting the worker"
RUST_LOG=${RUST_LOG:-info} $BIN run --config $CONFIG >"$LOGDIR/worker.log" 2>&1 &
WORKER=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19464/readyz >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf http://127.0.0.1:19464/readyz >/dev/null || { cat "$LOGDIR/worker.log"; exit 1; }

echo "== publishing 3 events for demo-oauth and 2 for demo-ibsso"
for i in 1 2 3; do
  echo "{\"event\":\"message.delivered\",\"seq\":$i}" | $BIN publish --config $CONFIG --profile demo-oauth --message-id "demo-oauth-$i-$$"
done
for i in 1 2; do
  echo "{\"event\":\"call.answered\",\"seq\":$i}" | $BIN publish --config $CONFIG --profile demo-ibsso --message-id "demo-ibsso-$i-$$"
done

for _ in $(seq 1 100); do
  [ "$(grep -c "VERIFIED" "$LOGDIR/servers.log" || true)" -ge 5 ] && break
  sleep 0.2
done
echo "== what the customer's side saw"
cat "$LOGDIR/servers.log"
echo "== the worker's metrics"
curl -s http://127.0.0.1:19464/metrics | grep -E '^callback_dispatcher_(deliveries_total|token_requests_total|token_cache_hits_total)'
verified=$(grep -c "VERIFIED" "$LOGDIR/servers.log" || true)
kill -TERM "$WORKER"; wait "$WORKER" || true; WORKER=
if [ "$verified" -ge 5 ]; then
  echo "== demo ok: $verified signed callbacks delivered and verified"
else
  echo "== demo FAILED: $verified of 5 callbacks verified; worker log:" >&2
  cat "$LOGDIR/worker.log" >&2
  exit 1
fi
