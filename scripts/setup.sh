#!/usr/bin/env bash
# Installs what pgwarden needs to build, run its demo and run its tests on
# Debian 12: PostgreSQL 15, etcd, protoc (the etcd client's build needs it),
# haproxy and pgbench for the benchmarks, iproute2/iptables for the network
# namespaces of the fault tests, and the unprivileged OS user postgres runs as.
# Idempotent; apt is only asked when something is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

packages=(postgresql-15 postgresql-client-15 etcd-server etcd-client protobuf-compiler libprotobuf-dev haproxy iproute2 iptables procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # The packages' own services (a postgres on 5432, an etcd on 2379) are not
  # needed: pgwarden starts its own on free ports.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! id postgres >/dev/null 2>&1; then
  echo "setup: creating the OS user postgres"
  $SUDO useradd --system --user-group --create-home --shell /bin/bash postgres
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
echo "setup: ready"
