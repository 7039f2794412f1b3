#!/usr/bin/env bash
# Inside the monitoring container: do Prometheus, Alertmanager (and Grafana) answer; how many targets are up.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'EOF'
Usage: verify-monitoring.sh [--prometheus-port 9090] [--alertmanager-port 9093]
                            [--grafana-port N] [--wait SECONDS] [--strict]

Inside the monitoring container, after ct-bootstrap-monitoring.sh:
  - Prometheus: GET /-/ready, its version (/api/v1/status/buildinfo), the rules it loaded,
    and its scrape targets (/api/v1/targets). It waits up to --wait seconds (default 90) for
    every target's first scrape, so "up" counts are real;
  - Alertmanager: GET /-/ready and its version (/api/v2/status);
  - Grafana (with --grafana-port): GET /api/health.
Stdout: one JSON object {prometheus, alertmanager, grafana, targets, targetsUp, targetsTotal, ok,
reason}. ok is false when a service does not answer or a target is down; --strict then exits 1.
EOF
}

prom_port=9090 am_port=9093 grafana_port="" wait_s=90 strict=false
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --strict) strict=true; shift ;;
    --prometheus-port | --alertmanager-port | --grafana-port | --wait)
      need_arg "$@"
      need_int "$1" "$2"
      case $1 in
        --prometheus-port) prom_port=$2 ;;
        --alertmanager-port) am_port=$2 ;;
        --grafana-port) grafana_port=$2 ;;
        --wait) wait_s=$2 ;;
      esac
      shift 2
      ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
for c in curl jq; do command -v "$c" >/dev/null || die "$c is missing: run ct-bootstrap-monitoring.sh first"; done

get() { curl -fsS --max-time 5 "$1" 2>/dev/null; }
reasons=()

step "Prometheus on 127.0.0.1:$prom_port"
prom_ok=false prom_version=""
deadline=$((SECONDS + wait_s))
until get "http://127.0.0.1:$prom_port/-/ready" >/dev/null; do
  if ((SECONDS >= deadline)); then break; fi
  sleep 1
done
if get "http://127.0.0.1:$prom_port/-/ready" >/dev/null; then
  prom_ok=true
  prom_version=$(get "http://127.0.0.1:$prom_port/api/v1/status/buildinfo" | jq -r '.data.version // ""' || true)
  ok "Prometheus $prom_version ready"
else
  reasons+=("Prometheus does not answer on 127.0.0.1:$prom_port (journalctl -u prometheus)")
fi

targets='[]' up=0 total=0 rules=0
if $prom_ok; then
  # a service the same deploy just (re)started may refuse the first scrape: wait for its next one
  step "Waiting up to ${wait_s}s for every target to be up"
  while :; do
    targets=$(get "http://127.0.0.1:$prom_port/api/v1/targets?state=active" |
      jq -c '[.data.activeTargets[] | {job: .labels.job, instance: .labels.instance, health, lastError}]') || targets='[]'
    pending=$(jq '[.[] | select(.health != "up")] | length' <<<"$targets")
    if ((pending == 0)) || ((SECONDS >= deadline)); then break; fi
    sleep 1
  done
  up=$(jq '[.[] | select(.health == "up")] | length' <<<"$targets")
  total=$(jq 'length' <<<"$targets")
  rules=$(get "http://127.0.0.1:$prom_port/api/v1/rules" | jq '[.data.groups[].rules[]] | length' || echo 0)
  ok "$up of $total targets up, $rules rules loaded"
  while IFS= read -r line; do
    [[ -n $line ]] && reasons+=("target $line")
  done < <(jq -r '.[] | select(.health != "up") | "\(.job) \(.instance) is \(.health): \(.lastError)"' <<<"$targets")
  ((rules > 0)) || reasons+=("Prometheus loaded no alert rules (/etc/prometheus/rules)")
fi

step "Alertmanager on 127.0.0.1:$am_port"
am_ok=false am_version=""
until get "http://127.0.0.1:$am_port/-/ready" >/dev/null || ((SECONDS >= deadline)); do sleep 1; done
if get "http://127.0.0.1:$am_port/-/ready" >/dev/null; then
  am_ok=true
  am_version=$(get "http://127.0.0.1:$am_port/api/v2/status" | jq -r '.versionInfo.version // ""' || true)
  ok "Alertmanager $am_version ready"
else
  reasons+=("Alertmanager does not answer on 127.0.0.1:$am_port (journalctl -u prometheus-alertmanager)")
fi

grafana='null'
if [[ -n $grafana_port ]]; then
  step "Grafana on 127.0.0.1:$grafana_port"
  until get "http://127.0.0.1:$grafana_port/api/health" >/dev/null || ((SECONDS >= deadline)); do sleep 1; done
  if health=$(get "http://127.0.0.1:$grafana_port/api/health"); then
    grafana=$(jq -c '{answers: true, version: (.version // ""), database: (.database // "")}' <<<"$health")
    ok "Grafana answers"
  else
    grafana='{"answers":false}'
    reasons+=("Grafana does not answer on 127.0.0.1:$grafana_port (journalctl -u grafana-server)")
  fi
fi

all_ok=false
[[ ${#reasons[@]} -eq 0 ]] && all_ok=true
reason=$(IFS='; '; echo "${reasons[*]}")
json_obj \
  prometheus "$(json_obj answers "$(json_bool "$prom_ok")" version "$(json_str "$prom_version")" rules "$rules")" \
  alertmanager "$(json_obj answers "$(json_bool "$am_ok")" version "$(json_str "$am_version")")" \
  grafana "$grafana" \
  targets "$targets" targetsUp "$up" targetsTotal "$total" \
  ok "$(json_bool "$all_ok")" reason "$(json_str_or_null "$reason")"
echo
if ! $all_ok; then
  warn "$reason"
  $strict && exit 1
fi
exit 0
