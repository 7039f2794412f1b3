#!/usr/bin/env bash
# Time the program's life cycle against the local lab; count the remote work each step does.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
  cat <<'USAGE'
Usage: lab/bench.sh [--out FILE]

Starts the local lab (lab-up.sh), empties the lab stack, then measures, in order:
  up_from_empty   pulumi up on an empty stack
  noop_up         pulumi up again (nothing to do)
  preview         pulumi preview
  destroy         pulumi destroy
For each: wall time, SSH commands run on the node (ssh-commands.log), pct calls and
pct exec calls (pct.log), container starts (lxc-events.log) and Proxmox API requests
(fakepve). Also the time of lab-up itself. Writes JSON (default bench-results/lab.json).
As root. With the toolchain incomplete (docs/adr/0002) the program runs without the
engine (lab/run-program.py, docs/adr/0006; no preview step); the JSON says which
driver ran. The lab is left running.
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)
out=$project/bench-results/lab.json
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
need_root
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"

t0=$(date +%s.%N)
"$here/lab-up.sh" >&2
lab_up=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
# shellcheck source=/dev/null
source "$project/.lab/env"
# shellcheck source=tools/pulumi-env.sh
source "$project/tools/pulumi-env.sh"
export PULUMI_CONFIG_PASSPHRASE=lab PULUMI_BACKEND_URL="file://$project/.pulumi-state"
cd "$project"
driver=engine
if ! bash "$project/tools/toolchain.sh" --check >/dev/null 2>&1; then
  driver=run-program.py
  warn "the Pulumi toolchain is incomplete here: measuring lab/run-program.py (no engine)"
fi
runner() { "$project/.venv/bin/python" "$here/run-program.py" "$@" >/dev/null; }

# counters: "ssh pct exec starts api" right now.
counters() {
  local api
  api=$(curl -skf -H "Authorization: Lab $(cat "$LAB_PVE_PASSWORD_FILE")" "${LAB_ENDPOINT}lab/state" | jq .requests)
  printf '%s %s %s %s %s\n' \
    "$(wc -l <"$LAB_SSH_LOG")" \
    "$(grep -c ' pct ' "$LAB_PCT_LOG" || true)" \
    "$(grep -c ' pct exec ' "$LAB_PCT_LOG" || true)" \
    "$(grep -c ' start pid=' "$LAB_EVENTS_LOG" || true)" \
    "$api"
}

results="{}"
# measure NAME CMD...: run CMD and record the step.
measure() {
  local name=$1 a b t s
  shift
  step "$name: $*"
  read -r -a a <<<"$(counters)"
  t=$(date +%s.%N)
  "$@" >&2
  s=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  read -r -a b <<<"$(counters)"
  results=$(jq -c --arg n "$name" --argjson s "$s" \
    --argjson ssh $((b[0] - a[0])) --argjson pct $((b[1] - a[1])) --argjson ex $((b[2] - a[2])) \
    --argjson st $((b[3] - a[3])) --argjson api $((b[4] - a[4])) \
    '.[$n] = {seconds: ($s * 10 | round / 10), ssh_commands: $ssh, pct_calls: $pct, pct_exec: $ex,
              container_starts: $st, api_requests: $api}' <<<"$results")
  ok "$name: ${s%.*}s, $((b[0] - a[0])) SSH commands, $((b[2] - a[2])) pct exec"
}

step "Emptying the lab stack"
if [[ $driver == engine ]]; then
  if [[ $(pulumi stack export --stack lab | jq '[.deployment.resources // [] | .[] | select(.type != "pulumi:pulumi:Stack")] | length') -gt 0 ]]; then
    if [[ -n $(curl -skf -H "Authorization: Lab $(cat "$LAB_PVE_PASSWORD_FILE")" "${LAB_ENDPOINT}lab/state" | jq '.containers[]') ]]; then
      pulumi destroy --stack lab --yes --skip-preview --non-interactive >&2
    else
      # state from an earlier lab: fakepve forgot it all
      pulumi stack rm --stack lab --yes --force --preserve-config >&2
      "$here/lab-up.sh" >&2
    fi
  fi
  measure up_from_empty pulumi up --stack lab --yes --skip-preview --non-interactive
  measure noop_up pulumi up --stack lab --yes --skip-preview --non-interactive
  measure preview pulumi preview --stack lab --non-interactive
  measure destroy pulumi destroy --stack lab --yes --skip-preview --non-interactive
else
  runner destroy
  measure up_from_empty runner up --stack lab
  measure noop_up runner up --stack lab
  measure destroy runner destroy --stack lab
fi

mkdir -p "$(dirname "$out")"
jq -n --argjson steps "$results" --argjson lab_up "$lab_up" \
  --arg date "$(date -u +%FT%TZ)" --arg cpus "$(nproc)" --arg kernel "$(uname -r)" \
  --arg pulumi "$(pulumi version 2>/dev/null || echo none)" --arg driver "$driver" \
  '{date: $date, machine: {cpus: ($cpus | tonumber), kernel: $kernel}, pulumi: $pulumi, driver: $driver,
    lab_up_seconds: ($lab_up * 10 | round / 10), steps: $steps}' >"$out"
ok "results in $out"
cat "$out"
