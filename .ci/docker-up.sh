#!/usr/bin/env bash
# Start a Docker engine on this machine for the container tests, and make the local base image the
# Dockerfile builds FROM in CI (no registry is reachable here: debootstrap a Debian with Python).
# Needs root and Debian's packages. Prints nothing on success but one line per step.
set -euo pipefail

STATE=${DOCKER_CI_STATE:-/var/tmp/harness-docker}
BASE=${HARNESS_CI_BASE_IMAGE:-harness-ci-base:bookworm}

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  mkdir -p "$STATE"/{data,exec}
  # No iptables or bridge here: containers use the host network (as the trainer does anyway).
  nohup dockerd --iptables=false --ip6tables=false --bridge=none \
    --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
    --default-ulimit nofile=1024:1024 >"$STATE/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "docker: daemon did not start" >&2; tail -20 "$STATE/dockerd.log" >&2; exit 1; }
fi
echo "docker: engine up (state in $STATE)"

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  root="$STATE/rootfs"
  rm -rf "$root"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" >"$STATE/debootstrap.log" 2>&1 || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
  tar -C "$root" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$root"
fi
echo "docker: base image $BASE ready"
