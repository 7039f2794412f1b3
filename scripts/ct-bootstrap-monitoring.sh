#!/usr/bin/env bash
# Inside the monitoring container: Debian 12's Prometheus, Alertmanager and node exporter, provisioned.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'EOF'
Usage: ct-bootstrap-monitoring.sh --prometheus-yml F --rules F --alertmanager-yml F
                                  --prometheus-args F --alertmanager-args F [--secrets-stdin]

Inside the monitoring container (Debian 12, unprivileged), as root:
  1. installs Debian's prometheus, prometheus-alertmanager, prometheus-node-exporter, curl, jq
     when missing (apt-get update only then);
  2. installs the files the stack rendered (components/monitoring_render.py):
       --prometheus-yml F     -> /etc/prometheus/prometheus.yml
       --rules F              -> /etc/prometheus/rules/media-pipeline-alerts.yml
       --alertmanager-yml F   -> /etc/prometheus/alertmanager.yml (0640 root:prometheus)
       --prometheus-args F    -> /etc/default/prometheus (retention, listen address)
       --alertmanager-args F  -> /etc/default/prometheus-alertmanager
     alertmanager.yml's __SECRET_<key>__ placeholders are filled from stdin (--secrets-stdin:
     lines KEY=<JSON string>); secrets never travel as arguments;
  3. checks them with promtool check config and amtool check-config before anything restarts:
     a bad file stops here and the running services keep their old files;
  4. enables the three services and restarts only the one whose files changed.
Idempotent: a second run with the same files changes nothing.
Stdout: {"changed": [...], "versions": {...}} as one JSON object.
EOF
}

prom_yml="" rules="" am_yml="" prom_args="" am_args="" secrets_stdin=false
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --secrets-stdin) secrets_stdin=true; shift ;;
    --prometheus-yml | --rules | --alertmanager-yml | --prometheus-args | --alertmanager-args)
      need_arg "$@"
      [[ -f $2 && -r $2 ]] || die "$1 $2: no such readable file" 2
      case $1 in
        --prometheus-yml) prom_yml=$2 ;;
        --rules) rules=$2 ;;
        --alertmanager-yml) am_yml=$2 ;;
        --prometheus-args) prom_args=$2 ;;
        --alertmanager-args) am_args=$2 ;;
      esac
      shift 2
      ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
for pair in "prometheus-yml:$prom_yml" "rules:$rules" "alertmanager-yml:$am_yml" \
  "prometheus-args:$prom_args" "alertmanager-args:$am_args"; do
  [[ -n ${pair#*:} ]] || die "--${pair%%:*} is required (see --help)" 2
done
need_root

# --- secrets: KEY=<JSON string> lines on stdin -------------------------------------------
declare -A SECRET=()
if $secrets_stdin; then
  while IFS= read -r line || [[ -n $line ]]; do
    [[ -n $line ]] || continue
    [[ $line =~ ^([A-Za-z][A-Za-z0-9]*)=(\".*\")$ ]] || die "stdin: a line is not KEY=\"json string\" (the stack writes them)" 2
    SECRET[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
  done
fi

# --- packages ------------------------------------------------------------------------------
PACKAGES=(prometheus prometheus-alertmanager prometheus-node-exporter curl jq)
step "Packages: ${PACKAGES[*]}"
mapfile -t missing < <(apt_missing "${PACKAGES[@]}")
if [[ ${#missing[@]} -gt 0 ]]; then
  step "Installing ${missing[*]} (a minute)"
  retry 3 10 apt_quiet update || die "apt-get update failed (network, or a broken apt source?)"
  export DEBIAN_FRONTEND=noninteractive
  retry 2 10 apt_quiet install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" ||
    die "apt-get install failed for: ${missing[*]}"
  changed "installed ${missing[*]}"
else
  ok "all packages already installed"
fi
getent group prometheus >/dev/null || die "the prometheus package made no prometheus group: is the package broken?"

# --- files: rendered into a staging dir, checked, then moved into place ---------------------
stage=$(mktemp -d /etc/prometheus/.homelab-media.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cp "$prom_yml" "$stage/prometheus.yml"
mkdir -p "$stage/rules"
cp "$rules" "$stage/rules/media-pipeline-alerts.yml"
mapfile -t secret_keys < <({ grep -o '__SECRET_[A-Za-z0-9]*__' "$am_yml" || true; } | sort -u | sed 's/^__SECRET_//; s/__$//')
am_text=$(<"$am_yml") am_check=$am_text
for key in "${secret_keys[@]}"; do
  [[ -n ${SECRET[$key]:-} ]] ||
    die "alertmanager.yml needs the secret $key: set it with \`pulumi config set --secret $STACK_NS:$key\`" 2
  am_text=${am_text//"__SECRET_${key}__"/"${SECRET[$key]}"}
  # amtool checks a copy with a stand-in value: its messages may quote what they refuse
  am_check=${am_check//"__SECRET_${key}__"/'"redacted"'}
done
printf '%s\n' "$am_text" >"$stage/alertmanager.yml"
printf '%s\n' "$am_check" >"$stage/alertmanager-check.yml"
# the rules sit beside prometheus.yml in the stage, as in /etc/prometheus
sed 's#/etc/prometheus/rules/#rules/#' "$stage/prometheus.yml" >"$stage/check.yml"

step "Checking the files (promtool, amtool)"
( cd "$stage" && promtool check config check.yml >"$stage/promtool.log" 2>&1 ) ||
  { tail -n 20 "$stage/promtool.log" >&2; die "promtool refused prometheus.yml or the rules (above); nothing was changed" 2; }
amtool check-config "$stage/alertmanager-check.yml" >"$stage/amtool.log" 2>&1 ||
  { tail -n 20 "$stage/amtool.log" >&2; die "amtool refused alertmanager.yml (above); nothing was changed" 2; }
ok "files check out"

restart_prom=false restart_am=false
install_file() { # install_file SRC DEST MODE OWNER: true when DEST changed
  local src=$1 dest=$2 mode=$3 owner=$4
  mkdir -p "$(dirname "$dest")"
  if write_if_changed "$dest" "$mode" <"$src"; then
    chown "$owner" "$dest"
    changed "wrote $dest"
    return 0
  fi
  chown "$owner" "$dest"
  return 1
}
install_file "$stage/prometheus.yml" /etc/prometheus/prometheus.yml 0644 root:root && restart_prom=true
install_file "$stage/rules/media-pipeline-alerts.yml" /etc/prometheus/rules/media-pipeline-alerts.yml 0644 root:root &&
  restart_prom=true
install_file "$prom_args" /etc/default/prometheus 0644 root:root && restart_prom=true
install_file "$stage/alertmanager.yml" /etc/prometheus/alertmanager.yml 0640 root:prometheus && restart_am=true
install_file "$am_args" /etc/default/prometheus-alertmanager 0644 root:root && restart_am=true

# --- services --------------------------------------------------------------------------------
step "Services: prometheus, prometheus-alertmanager, prometheus-node-exporter"
for unit in prometheus prometheus-alertmanager prometheus-node-exporter; do
  if [[ $(systemctl is-enabled "$unit" 2>/dev/null || true) != enabled ]]; then
    systemctl enable --quiet "$unit"
    changed "enabled $unit"
  fi
done
restart() { # restart UNIT WANTED
  if $2 || ! systemctl is-active --quiet "$1"; then
    systemctl restart "$1" || { journalctl -u "$1" -n 20 --no-pager >&2 || true; die "$1 did not start (journal above)"; }
    changed "restarted $1"
  fi
}
restart prometheus "$restart_prom"
restart prometheus-alertmanager "$restart_am"
restart prometheus-node-exporter false
ok "services running"

version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
json_obj \
  changed "$(json_arr "${CHANGED[@]}")" \
  versions "$(json_obj prometheus "$(json_str "$(version prometheus)")" \
    alertmanager "$(json_str "$(version prometheus-alertmanager)")" \
    nodeExporter "$(json_str "$(version prometheus-node-exporter)")")"
echo
