#!/usr/bin/env bash
# Builds the container image (deploy/Dockerfile) with podman on this machine and checks it as
# it runs in production: read-only root file system, uid/gid 10001, no capabilities, the
# configuration from a mounted directory. Against the local RabbitMQ (host networking) it
# checks /readyz, delivers signed callbacks to a receiver on the host that verifies them,
# reloads a changed configuration, and stops with exit 0 within the grace period. Prints
# each step's result, the image size and the timings. Leaves nothing running.
#
#   scripts/image.sh                 the operator's run: the binary built with the Cargo
#                                    profile `image` (release, stripped), tagged
#                                    callback-dispatcher:<version>
#   scripts/image.sh --binary PATH   a binary built already (a stripped copy goes in)
#   scripts/image.sh --quick         the test suite's check (tests/image.rs): the debug binary
#                                    cargo test built (or --binary), the cached base image, no
#                                    package installs; exits 77 with the reason printed when
#                                    podman cannot run here
#
# No registry is needed: the Debian bookworm base is bootstrapped here with mmdebstrap and
# imported into podman (once; `podman rmi localhost/debian:bookworm-minbase` to redo it),
# and the binary is built on the host (the Dockerfile's BINARY=prebuilt). Installs podman,
# runc and mmdebstrap from Debian when missing (not with --quick). podman's settings for
# this machine go to a containers.conf of this script's own (target/podman/containers.conf):
# runtime runc (crun 1.8 fails on hybrid cgroups), rlimits within the caller's hard limits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
BINARY=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --binary) BINARY=$2; shift ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
BASE=localhost/debian:bookworm-minbase
if [ "$QUICK" = 1 ]; then IMAGE=localhost/callback-dispatcher:check; else IMAGE=localhost/callback-dispatcher:$VERSION; fi
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
GRACE=30   # deploy/k8s terminationGracePeriodSeconds; what docker stop -t / stop_grace_period need
RUN_ID=image-check-$$-$(date +%s)   # the container's name and the events' id prefix
# A queue (and exchange, delay and dead-letter queues) per checkout, reused by every run:
# runs from other checkouts on the same broker never consume each other's events.
QUEUE=image-check-$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)
WORK=$(mktemp -d)
T0=$(date +%s)

now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f s", ms / 1000 }'; }
STEP=
step() { STEP=$1; STEP_T=$(now_ms); printf '== %-58s' "$1"; }
ok() { printf 'ok (%s)%s\n' "$(secs $(($(now_ms) - STEP_T)))" "${1:+: $1}"; STEP=; }
skip() { echo "image.sh: SKIPPED: $1"; exit 77; }

CONTAINER=
RECEIVER=
cleanup() {
  rc=$?
  if [ -n "$STEP" ]; then
    echo "FAILED"
    echo "image.sh: step failed: $STEP" >&2
    if [ -n "$CONTAINER" ]; then
      echo "-- container: $(podman inspect --format '{{.State.Status}}, exit code {{.State.ExitCode}}' "$CONTAINER" 2>&1); its log:" >&2
      podman logs --tail 40 "$CONTAINER" >&2 2>&1 || true
    fi
    [ -s "$WORK/received.jsonl" ] && { echo "-- receiver saw:" >&2; cut -c1-400 "$WORK/received.jsonl" >&2; }
  fi
  [ -n "$CONTAINER" ] && podman rm -f -t 0 "$CONTAINER" >/dev/null 2>&1 || true
  [ -n "$RECEIVER" ] && kill "$RECEIVER" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# --- tools and settings ---------------------------------------------------------------
step "podman, runc and mmdebstrap"
missing=()
for t in podman runc mmdebstrap; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$QUICK" = 1 ]; then STEP=; echo "missing"; skip "${missing[*]} not installed (scripts/image.sh without --quick installs them)"; fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "image.sh: ${missing[*]} missing; install them (Debian: apt-get install podman runc mmdebstrap uidmap)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman runc mmdebstrap uidmap fuse-overlayfs slirp4netns >/dev/null
  ok "installed ${missing[*]}"
else
  ok "$(podman --version), $(runc --version | head -1)"
fi

step "podman settings (target/podman/containers.conf)"
mkdir -p target/podman
export CONTAINERS_CONF=$ROOT/target/podman/containers.conf
limit() { # the caller's hard limit, at most $2: podman may not raise it without CAP_SYS_RESOURCE
  local h; h=$(ulimit -H "$1")
  if [ "$h" = unlimited ] || [ "$h" -gt "$2" ]; then echo "$2"; else echo "$h"; fi
}
NOFILE=$(limit -n 20000)
NPROC=$(limit -u 4096)
{
  echo "# Written by scripts/image.sh; podman reads it through CONTAINERS_CONF."
  echo "[containers]"
  echo "default_ulimits = [\"nofile=$NOFILE:$NOFILE\", \"nproc=$NPROC:$NPROC\"]"
  echo "[engine]"
  echo "runtime = \"runc\""
  echo "events_logger = \"file\""
  [ -d /run/systemd/system ] || echo "cgroup_manager = \"cgroupfs\""
} >"$CONTAINERS_CONF"
if ! podman info >"$WORK/podman-info" 2>&1; then
  if [ "$QUICK" = 1 ]; then STEP=; echo "no"; skip "podman cannot run here: $(tail -1 "$WORK/podman-info")"; fi
  cat "$WORK/podman-info" >&2; exit 1
fi
ok "runc, nofile $NOFILE, nproc $NPROC"

# --- the base image -------------------------------------------------------------------
step "base image $BASE"
if podman image exists "$BASE"; then
  ok "cached"
else
  # What debian:bookworm-slim is, bootstrapped here: minbase, merged /usr without the
  # usrmerge package (and its perl), no documentation, manuals or translations.
  nice -n 10 mmdebstrap --variant=minbase --quiet \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='Acquire::Languages "none"' \
    bookworm - \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main" 2>"$WORK/mmdebstrap.log" \
    | podman import --quiet --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null \
    || { tail -30 "$WORK/mmdebstrap.log" >&2; false; }
  ok "bootstrapped, $(podman image inspect --format '{{.Size}}' "$BASE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
fi

# --- the binary -----------------------------------------------------------------------
BUILD_SECS=
if [ -z "$BINARY" ] && [ "$QUICK" = 1 ]; then
  BINARY=target/debug/callback-dispatcher
  [ -x "$BINARY" ] || { echo "image.sh: $BINARY missing: cargo build first, or pass --binary" >&2; exit 1; }
fi
if [ -z "$BINARY" ]; then
  step "binary: cargo build --profile image"
  nice -n 10 cargo build --quiet --locked --profile image --bin callback-dispatcher
  BINARY=target/image/callback-dispatcher
  BUILD_SECS=$(($(now_ms) - STEP_T))
  ok "$(du -m "$BINARY" | cut -f1) MB"
fi
# The build context: the repository as the Dockerfile expects it (.dockerignore keeps it to
# the sources, the config and target/image/callback-dispatcher), or, for another binary, a
# context of its own holding a stripped copy at that path.
if [ "$(realpath "$BINARY")" = "$ROOT/target/image/callback-dispatcher" ]; then
  CONTEXT=$ROOT
else
  step "binary: a stripped copy"
  CONTEXT=$WORK/context
  mkdir -p "$CONTEXT/target/image" "$CONTEXT/config" "$CONTEXT/deploy"
  cp deploy/Dockerfile "$CONTEXT/deploy/"
  cp .dockerignore Cargo.toml Cargo.lock "$CONTEXT/"
  cp config/dispatcher.yaml "$CONTEXT/config/"
  strip -o "$CONTEXT/target/image/callback-dispatcher" "$BINARY"
  ok "$(du -m "$CONTEXT/target/image/callback-dispatcher" | cut -f1) MB, from $BINARY"
fi

# --- the image ------------------------------------------------------------------------
step "image build $IMAGE"
# For cargo in the Dockerfile's build stage (not run with BINARY=prebuilt): the host's CA
# bundle, which a TLS-inspecting proxy's certificate may be in.
CA_BUNDLE=
for f in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  [ -n "$f" ] && [ -s "$f" ] && { CA_BUNDLE=$f; break; }
done
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || REVISION=$REVISION-dirty
nice -n 10 podman build --quiet -f "$CONTEXT/deploy/Dockerfile" \
  --build-arg BINARY=prebuilt --build-arg RUNTIME_BASE="$BASE" \
  --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  ${CA_BUNDLE:+--secret "id=ca-bundle,src=$CA_BUNDLE"} \
  -t "$IMAGE" "$CONTEXT" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; false; }
IMAGE_BUILD_MS=$(($(now_ms) - STEP_T))
# What earlier builds left untagged (the previous image, the binary's stage): removed, so that
# a check per test run does not pile up binaries. Only images built from this Dockerfile.
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  old=()
  for id in $(podman images -a --filter dangling=true --format '{{.ID}}'); do
    podman history --no-trunc --format '{{.CreatedBy}}' "$id" 2>/dev/null \
      | grep -q '/callback-dispatcher' && old+=("$id")
  done
  [ ${#old[@]} -eq 0 ] && break
  podman rmi "${old[@]}" >/dev/null 2>&1 || break
done
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')
ok "$SIZE"

step "image: user, group, labels, entrypoint"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$user" = "10001:10001" ] || { echo "USER is $user" >&2; false; }
ids=$(podman run --rm --read-only --read-only-tmpfs=false --entrypoint /usr/bin/id "$IMAGE")
[ "$ids" = "uid=10001(dispatcher) gid=10001(dispatcher) groups=10001(dispatcher)" ] || { echo "id: $ids" >&2; false; }
for l in title description licenses version revision created; do
  v=$(podman image inspect --format "{{index .Config.Labels \"org.opencontainers.image.$l\"}}" "$IMAGE")
  [ -n "$v" ] || { echo "label org.opencontainers.image.$l missing" >&2; false; }
done
ep=$(podman image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' "$IMAGE")
[ "$ep" = '["/usr/local/bin/callback-dispatcher"] ["run"]' ] || { echo "entrypoint: $ep" >&2; false; }
ok "$ids"

# --- running it -----------------------------------------------------------------------
step "broker on 127.0.0.1:5672"
if [ "$QUICK" = 0 ]; then bash scripts/ensure-rabbitmq.sh >/dev/null; fi
timeout 2 bash -c '</dev/tcp/127.0.0.1/5672' 2>/dev/null || { echo "no broker on 127.0.0.1:5672 (scripts/ensure-rabbitmq.sh)" >&2; false; }
ok

step "receiver on the host"
python3 scripts/image-receiver.py "$WORK/receiver.port" "$WORK/received.jsonl" "$SECRET" &
RECEIVER=$!
for _ in $(seq 1 50); do [ -s "$WORK/receiver.port" ] && break; sleep 0.1; done
RPORT=$(cat "$WORK/receiver.port")
MPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ok "127.0.0.1:$RPORT, verifies v1 signatures"

# The configuration directory, mounted read-only where the image's own file is: the
# worker's defaults plus a queue of this run's own, one profile to the receiver.
CONF=$WORK/conf
mkdir -p "$CONF"
write_config() { # $1: extra profile lines
  cat >"$CONF/.dispatcher.yaml.new" <<EOF
amqp:
  url: "\${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  queue: $QUEUE
  exchange: $QUEUE
delivery:
  timeout: 15s
  allow_networks: [127.0.0.0/8]   # the receiver is on this host
retry:
  max_attempts: 1                 # a failed delivery is dead-lettered at once: no delay queues
metrics:
  listen: "127.0.0.1:$MPORT"
log:
  format: json
profiles:
  - id: image-check
    url: "http://127.0.0.1:$RPORT/callbacks/image-check"
    signing:
      secrets: ["$SECRET"]
$1
EOF
  chmod 0644 "$CONF/.dispatcher.yaml.new"
  mv "$CONF/.dispatcher.yaml.new" "$CONF/dispatcher.yaml"   # replaced whole, as a ConfigMap is
}
write_config ""
chmod 0755 "$WORK" "$CONF"
RUN_OPTS=(--read-only --read-only-tmpfs=false --user 10001:10001 --cap-drop ALL
  --security-opt no-new-privileges --network host
  -v "$CONF:/etc/callback-dispatcher:ro")

step "start: read-only root, uid 10001, no capabilities"
START=$(now_ms)
CONTAINER=$RUN_ID
podman run -d --name "$CONTAINER" "${RUN_OPTS[@]}" -e RUST_LOG=info "$IMAGE" >/dev/null
ok

step "/readyz"
ready=0
for _ in $(seq 1 300); do
  if curl -sf -o /dev/null "http://127.0.0.1:$MPORT/readyz"; then ready=1; break; fi
  [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || break
  sleep 0.1
done
[ "$ready" = 1 ]
READY_MS=$(($(now_ms) - START))
curl -sf -o /dev/null "http://127.0.0.1:$MPORT/healthz"
ok "ready $(secs $READY_MS) after start"

publish() { # $1: message id prefix, $2: count, $3: more JSON fields
  echo "{\"event\":\"image.check\",\"run\":\"$RUN_ID\"${3:-}}" \
    | podman run --rm -i "${RUN_OPTS[@]}" "$IMAGE" publish --profile image-check \
      --message-id "$1" --count "$2" >/dev/null
}
received() { # $1: message id prefix, $2: a jq-free python filter on the record r
  python3 - "$WORK/received.jsonl" "$1" "$2" <<'EOF'
import json, sys
path, prefix, cond = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0
try:
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if (
            r["phase"] == "answered"
            and r["id"].startswith(prefix)
            and r["verified"]
            and eval(cond, {"r": r})
        ):
            n += 1
except FileNotFoundError:
    pass
print(n)
EOF
}
wait_received() { # $1 prefix, $2 count, $3 condition
  for _ in $(seq 1 150); do
    [ "$(received "$1" "$3")" -ge "$2" ] && return 0
    sleep 0.2
  done
  echo "received $(received "$1" "$3") of $2 ($1)" >&2
  return 1
}

step "deliver 3 signed callbacks (published with the image)"
publish "$RUN_ID-a" 3
wait_received "$RUN_ID-a" 3 'True'
ok "3 verified"

step "reload: a header added to the mounted configuration"
write_config '    headers: { X-Image-Check: reloaded }'
reloaded=0
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$MPORT/metrics" | grep -q '^callback_dispatcher_config_reloads_total{outcome="success"} [1-9]'; then reloaded=1; break; fi
  sleep 0.1
done
[ "$reloaded" = 1 ] || { echo "no successful reload in the metrics" >&2; false; }
publish "$RUN_ID-b" 1
wait_received "$RUN_ID-b" 1 'r["headers"].get("x-image-check") == "reloaded"'
ok "reloaded without a restart, the next callback carries it"

step "stop (SIGTERM, grace $GRACE s) with a delivery in flight"
publish "$RUN_ID-c" 1 ',"slow":true'   # the receiver answers it after 3 s
for _ in $(seq 1 100); do grep -q "\"$RUN_ID-c" "$WORK/received.jsonl" && break; sleep 0.1; done
grep -q "\"$RUN_ID-c" "$WORK/received.jsonl" || { echo "the slow callback never arrived" >&2; false; }
STOP=$(now_ms)
podman stop -t "$GRACE" "$CONTAINER" >/dev/null
STOP_MS=$(($(now_ms) - STOP))
code=$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")
[ "$code" = 0 ] || { echo "exit code $code" >&2; false; }
[ "$STOP_MS" -lt $((GRACE * 1000)) ] || { echo "took $(secs $STOP_MS): killed at the grace period" >&2; false; }
wait_received "$RUN_ID-c" 1 True
[ "$STOP_MS" -ge 1500 ] || { echo "stopped after $(secs $STOP_MS): did not wait for the delivery in flight" >&2; false; }
if podman logs "$CONTAINER" 2>&1 | grep -q '"level":"ERROR"'; then
  echo "errors logged:" >&2; podman logs "$CONTAINER" 2>&1 | grep '"level":"ERROR"' >&2; false
fi
ok "in-flight delivery completed, exit 0 after $(secs $STOP_MS)"

echo
echo "image.sh: $IMAGE ok"
echo "  image size:      $SIZE (base $(podman image inspect --format '{{.Size}}' "$BASE" | awk '{ printf "%.0f MB", $1 / 1e6 }'), binary $(du -m "$CONTEXT/target/image/callback-dispatcher" | cut -f1) MB)"
[ -n "$BUILD_SECS" ] && echo "  binary build:    $(secs "$BUILD_SECS")"
echo "  image build:     $(secs $IMAGE_BUILD_MS)"
echo "  start to ready:  $(secs $READY_MS)"
echo "  stop:            $(secs $STOP_MS)"
echo "  whole run:       $(($(date +%s) - T0)) s"
