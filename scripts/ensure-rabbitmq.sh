#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672: start it if it is installed but
# stopped; install it first (Debian/Ubuntu, as root) if it is missing. Idempotent.
set -euo pipefail

if [ -n "${AMQP_URL:-}" ] && [ "${AMQP_URL}" != "amqp://guest:guest@127.0.0.1:5672/%2f" ]; then
  echo "ensure-rabbitmq: AMQP_URL points elsewhere; not managing a local broker"
  exit 0
fi

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "ensure-rabbitmq: installing rabbitmq-server"
    sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq rabbitmq-server >/dev/null
  else
    echo "ensure-rabbitmq: rabbitmq-server is missing and this is not a Debian/Ubuntu machine; install RabbitMQ 3.9+ or set AMQP_URL" >&2
    exit 1
  fi
fi

# Ordered delivery (amqp.partitions) needs the consistent-hash exchange, which RabbitMQ
# ships as a plugin; enabling it on a running broker needs no restart.
ready() {
  timeout 60 rabbitmq-plugins enable --quiet rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
    || echo "ensure-rabbitmq: could not enable rabbitmq_consistent_hash_exchange (ordered delivery tests need it)" >&2
  echo "ensure-rabbitmq: broker is running"
  exit 0
}

if timeout 60 rabbitmqctl await_startup >/dev/null 2>&1; then
  ready
fi

echo "ensure-rabbitmq: starting rabbitmq-server"
sudo_if_needed rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 60); do
  if timeout 30 rabbitmqctl await_startup >/dev/null 2>&1; then
    ready
  fi
  sleep 2
done
echo "ensure-rabbitmq: the broker did not start; see /var/log/rabbitmq/" >&2
exit 1
