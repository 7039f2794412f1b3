#!/usr/bin/env bash
# Install the Debian packages the tests and the lab need (only those missing).
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib-exec.sh"

PACKAGES=(python3-venv shellcheck ffmpeg debootstrap openssh-client openssl procps iproute2 util-linux curl jq
  chromium chromium-driver python3-jinja2 python3-prometheus-client prometheus nginx-light caddy
  nftables slirp4netns postgresql)

usage() {
  cat <<'USAGE'
Usage: tools/deps.sh [--check]

Installs, with apt-get, the Debian packages that the test suite and the local lab use:
  python3-venv shellcheck ffmpeg debootstrap openssh-client openssl procps iproute2 util-linux curl jq
  chromium chromium-driver (the status page in a real browser), python3-jinja2
  python3-prometheus-client (media-pipeline on Debian's python3, as in the container),
  prometheus (promtool: checks and unit-tests monitoring/prometheus/alerts.yml),
  nginx-light caddy (the status page behind docs/reverse-proxy.md's TLS proxy snippets),
  nftables slirp4netns (the lab node's own network: NAT for its containers' bridge, and
  the link to this machine; LXC itself is installed inside the node's tree, not here),
  postgresql (PostgreSQL 15 and libpq: tests/queue start their own server with initdb/pg_ctl,
  and psycopg in the venv loads libpq)
Only missing packages are installed; a second run changes nothing.
  --check   list what is missing and exit 1 if anything is
USAGE
}

check=false
case ${1:-} in
  -h|--help) usage; exit 0 ;;
  --check) check=true ;;
  "") ;;
  *) die "unknown option $1 (see --help)" ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  ok "Debian packages present (${#PACKAGES[@]})"
  exit 0
fi
if $check; then
  warn "missing: ${missing[*]}"
  exit 1
fi
[[ $(id -u) -eq 0 ]] || die "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}"
step "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
retry 3 5 quiet apt-get update
quiet apt-get install -y --no-install-recommends "${missing[@]}"
ok "Installed ${missing[*]}"
