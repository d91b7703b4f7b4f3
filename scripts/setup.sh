#!/usr/bin/env bash
# Installs what pgwarden needs to build, run its demo, run its tests and
# benchmarks and make its release, on a Debian 12 that has nothing but Rust
# (scripts/fresh-check proves it on a debootstrapped root):
#   build      gcc + libc6-dev (rustc links through cc), ca-certificates (crates.io),
#              protoc + libprotobuf-dev (the etcd client's build script needs
#              protoc and protobuf's well-known types)
#   run/test   postgresql-15 (pgbench is part of it), etcd-server + etcd-client,
#              iproute2 + iptables (network namespaces of the fault tests), procps,
#              openssl + curl (tests/security.rs makes its certificates and
#              checks the HTTPS API)
#   alerts     prometheus (promtool checks the generated rules file),
#              prometheus-alertmanager (a real Alertmanager receives alerts)
#   benchmarks haproxy (measured side by side with the proxy)
#   ui test    chromium + chromium-driver (the dashboard's end-to-end test drives
#              a headless browser through WebDriver)
#   release    systemd (systemd-analyze verifies the units), debootstrap (fresh-check)
# and the unprivileged OS user postgres runs as. Idempotent; apt is only
# asked when something is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

packages=(
  gcc libc6-dev ca-certificates protobuf-compiler libprotobuf-dev
  postgresql-15 postgresql-client-15 etcd-server etcd-client iproute2 iptables procps
  haproxy openssl curl
  chromium chromium-driver
  prometheus prometheus-alertmanager
  systemd debootstrap
)
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
