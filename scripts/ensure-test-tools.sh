#!/usr/bin/env bash
# What the test suite needs besides RabbitMQ: redis-server (the shared token cache's tests
# start their own on a free port), tinyproxy (the egress proxy's tests start their own on a
# free port with a configuration they write), Authlib (a real OAuth 2.0 server implementation the
# Basic-header test runs against) and stress-ng (to run the suite with a core kept busy, as
# a loaded machine would: `stress-ng --cpu 1 --timeout 30m &`). Installs what is missing:
# Debian/Ubuntu packages as root, Authlib with pip. Idempotent.
set -euo pipefail

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq "$@" >/dev/null
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-test-tools: installing redis-server"
  apt_install redis-server || { echo "ensure-test-tools: redis-server is missing; install Redis 6+" >&2; exit 1; }
fi

if ! command -v tinyproxy >/dev/null 2>&1; then
  echo "ensure-test-tools: installing tinyproxy"
  # The binary alone where the distribution splits it off (no system service to start).
  apt_install tinyproxy-bin || apt_install tinyproxy || { echo "ensure-test-tools: tinyproxy is missing; install it (a forward proxy)" >&2; exit 1; }
fi

if ! python3 -c "import authlib" >/dev/null 2>&1; then
  echo "ensure-test-tools: installing Authlib"
  python3 -m pip install --quiet authlib >/dev/null 2>&1 \
    || apt_install python3-authlib \
    || { echo "ensure-test-tools: cannot install Authlib (pip install authlib)" >&2; exit 1; }
fi
if ! command -v stress-ng >/dev/null 2>&1; then
  echo "ensure-test-tools: installing stress-ng"
  # Optional: the suite itself does not need it.
  apt_install stress-ng || echo "ensure-test-tools: stress-ng is missing (optional; install it to test under load)" >&2
fi
echo "ensure-test-tools: redis-server, tinyproxy, Authlib and stress-ng present"
