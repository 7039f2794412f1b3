#!/usr/bin/env bash
# After an interrupted `pulumi up` (killed, lost connection, power cut): unlock the stack and
# settle its pending creates, so the next `pulumi up` converges.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/stack-cli.sh"

usage() {
  cat <<EOF
Usage: tools/recover.sh [--stack NAME] [--dry-run] [--help]

What an \`up\` that did not finish leaves, and what this does about it:
  1. the stack lock ("the stack is currently locked"): removed with \`pulumi cancel\`, but only
     when no update is running (with a file backend, the lock's pid on this host is checked);
  2. pending creates (the engine asked a provider to create something and never heard back)
     are cleared (\`pulumi refresh --clear-pending-creates\`): every remote step is idempotent
     and runs again; a container the interrupted up did create carries the program's
     description, so the next up's vm id guard lets it through and the up takes it back
     (should the provider refuse with "already exists", \`make adopt\` imports it).
Then run \`pulumi up\`. Nothing on the node is changed by this script: it edits the stack's
state only (refresh reads the containers through the API).

Options:
  --stack NAME   the stack (default: the selected one)
  --dry-run      say what would be done, change nothing
  --help         this text
Uses the pulumi on PATH (source tools/pulumi-env.sh for the project's own).
EOF
}

stack="" dry=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --stack) [[ -n ${2:-} ]] || die "--stack needs a name" 2; stack=$2; shift 2 ;;
    --stack=*) stack=${1#*=}; shift ;;
    --dry-run) dry=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
stack_cli_init
run() { if [[ $dry -eq 1 ]]; then echo "would run: $*"; else "$@"; fi; }

step "Stack lock ($stack)"
backend=$(pulumi whoami --verbose --non-interactive 2>/dev/null | sed -n 's/^Backend URL: *//p')
if [[ $backend == file://* ]]; then
  dir=${backend#file://}
  dir=${dir%%\?*}
  locks=()
  for d in "$dir/.pulumi/locks/organization/$project/$stack" "$dir/.pulumi/locks/$stack"; do
    [[ -d $d ]] && while IFS= read -r f; do locks+=("$f"); done < <(find "$d" -maxdepth 1 -name '*.json')
  done
  if [[ ${#locks[@]} -eq 0 ]]; then
    ok "Not locked"
  else
    for f in "${locks[@]}"; do
      read -r pid host < <("$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("pid",0), d.get("hostname",""))' "$f")
      if [[ $host == "$(hostname)" ]] && kill -0 "$pid" 2>/dev/null; then
        die "an update is still running (pid $pid, lock $f): wait for it, or stop it first"
      fi
    done
    run pulumi cancel --yes "${sargs[@]}" >/dev/null
    ok "Removed ${#locks[@]} stale lock(s) (their process is gone)"
  fi
else
  # a service backend (Pulumi Cloud): `pulumi cancel` cancels the update in progress, alive or not,
  # so this is for when no `up` runs any more (the usage says so)
  if out=$(run pulumi cancel --yes "${sargs[@]}" 2>&1); then ok "Cancelled: $out"; else warn "pulumi cancel: ${out##*$'\n'}"; fi
fi

step "Pending creates"
pending=$(pulumi stack export "${sargs[@]}" | "$py" -c '
import json, sys
d = json.load(sys.stdin).get("deployment") or {}
for op in d.get("pending_operations") or []:
    if op.get("type") == "creating":
        print((op.get("resource") or {}).get("urn", "?").rsplit("::", 1)[-1])
')
if [[ -z $pending ]]; then
  ok "None"
else
  while read -r name; do ok "Clear $name (the next up creates or runs it again)"; done <<<"$pending"
  # A container the interrupted up did create carries the program's description: the next up's
  # vm id guard lets it through and takes it back (or, should the provider refuse, make adopt).
  # Every remote step is idempotent and simply runs again.
  run pulumi refresh --yes --skip-preview "${sargs[@]}" --clear-pending-creates >/dev/null
  ok "Pending creates cleared"
fi
ok "Recovered: run \`pulumi up${stack:+ --stack $stack}\` to converge"
