#!/usr/bin/env bash
# On the Proxmox node: Debian's prometheus-node-exporter (CPU, memory, disks) for the monitoring container.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'EOF'
Usage: host-node-exporter.sh --listen ADDR:PORT

On the Proxmox VE node, as root:
  1. installs Debian's prometheus-node-exporter when missing (PVE 8 is Debian 12);
  2. writes /etc/default/prometheus-node-exporter so it listens on --listen (e.g.
     192.168.1.10:9100, or :9100 for every address); other settings there are kept;
  3. enables it and restarts it only when that file changed.
Idempotent. Stdout: {"listen", "version", "changed": [...]} as one JSON object.
EOF
}

listen=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --listen) need_arg "$@"; listen=$2; shift 2 ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
[[ -n $listen ]] || die "--listen is required (see --help)" 2
listen_re='^[][A-Za-z0-9.:_-]*:[0-9]{1,5}$'
[[ $listen =~ $listen_re ]] || die "--listen must be ADDR:PORT or :PORT (got $listen)" 2
need_root

step "prometheus-node-exporter"
if [[ -n $(apt_missing prometheus-node-exporter) ]]; then
  retry 3 10 apt_quiet update || die "apt-get update failed on the node (network, or a broken apt source?)"
  DEBIAN_FRONTEND=noninteractive retry 2 10 apt_quiet install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold prometheus-node-exporter ||
    die "apt-get install prometheus-node-exporter failed on the node"
  changed "installed prometheus-node-exporter"
else
  ok "already installed"
fi

# Debian's unit runs `prometheus-node-exporter $ARGS` (EnvironmentFile=/etc/default/prometheus-node-exporter):
# only our flag is set in ARGS; a line the admin added stays.
defaults=/etc/default/prometheus-node-exporter
touch "$defaults"
want="ARGS=\"--web.listen-address=$listen\" # homelab-media (monitoring.nodeAddress/nodeExporterPort)"
restart=false
if { grep -v '^ARGS=' "$defaults" || true; echo "$want"; } | write_if_changed "$defaults" 0644; then
  changed "listen on $listen"
  restart=true
fi

if [[ $(systemctl is-enabled prometheus-node-exporter 2>/dev/null || true) != enabled ]]; then
  systemctl enable --quiet prometheus-node-exporter
  changed "enabled prometheus-node-exporter"
fi
if $restart || ! systemctl is-active --quiet prometheus-node-exporter; then
  systemctl restart prometheus-node-exporter || die "prometheus-node-exporter did not start (journalctl -u prometheus-node-exporter)"
  changed "restarted prometheus-node-exporter"
fi
ok "node exporter on $listen"

json_obj listen "$(json_str "$listen")" \
  version "$(json_str "$(dpkg-query -W -f='${Version}' prometheus-node-exporter 2>/dev/null || true)")" \
  changed "$(json_arr "${CHANGED[@]}")"
echo
