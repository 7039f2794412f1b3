#!/usr/bin/env bash
# After an interrupted `pulumi up` (killed, lost connection, power cut): unlock the stack and
# settle its pending creates, so the next `pulumi up` converges.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
  cat <<EOF
Usage: tools/recover.sh [--stack NAME] [--dry-run] [--help]

What an \`up\` that did not finish leaves, and what this does about it:
  1. the stack lock ("the stack is currently locked"): removed with \`pulumi cancel\`, but only
     when no update is running (with a file backend, the lock's pid on this host is checked);
  2. pending creates (the engine asked a provider to create something and never heard back):
     - a container (ContainerLegacy) may exist on the node: it is imported by its vm id
       (\`pulumi refresh --import-pending-creates URN ID\`); if PVE has no such container the
       refresh drops it;
     - a remote Command is cleared (\`--clear-pending-creates\`): every step is idempotent, so
       the next up simply runs it again.
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
command -v pulumi >/dev/null || die "no pulumi on PATH: source tools/pulumi-env.sh (or make toolchain)"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=$root/.venv/bin/python
[[ -x $py ]] || py=python3
sargs=(--non-interactive)
[[ -z $stack ]] || sargs+=(--stack "$stack")
stack=${stack:-$(pulumi stack --show-name --non-interactive)}
run() { if [[ $dry -eq 1 ]]; then echo "would run: $*"; else "$@"; fi; }

step "Stack lock ($stack)"
backend=$(pulumi whoami --verbose --non-interactive 2>/dev/null | sed -n 's/^Backend URL: *//p')
if [[ $backend == file://* ]]; then
  project=$(sed -n 's/^name: *//p' Pulumi.yaml)
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
  # a service backend knows whether its update is still alive; cancel says so if there is none
  if out=$(run pulumi cancel --yes "${sargs[@]}" 2>&1); then ok "Cancelled: $out"; else ok "Nothing to cancel (${out##*$'\n'})"; fi
fi

step "Pending creates"
plan=$(pulumi stack export "${sargs[@]}" | "$py" -c '
import json, sys
d = json.load(sys.stdin).get("deployment") or {}
for op in d.get("pending_operations") or []:
    r = op.get("resource") or {}
    if op.get("type") != "creating":
        continue
    vmid = (r.get("inputs") or {}).get("vmId")
    node = (r.get("inputs") or {}).get("nodeName")
    if r.get("type") == "proxmoxve:index/containerLegacy:ContainerLegacy" and vmid is not None:
        print("import", r["urn"], "%s/%s" % (node, int(vmid)) if node else str(int(vmid)))
    else:
        print("clear", r["urn"], "-")
')
if [[ -z $plan ]]; then
  ok "None"
else
  imports=() n_clear=0
  while read -r what urn id; do
    if [[ $what == import ]]; then
      imports+=(--import-pending-creates "$urn" --import-pending-creates "$id")
      ok "Container $id: import if it exists (${urn##*::})"
    else
      n_clear=$((n_clear + 1))
      ok "Clear ${urn##*::} (runs again at the next up)"
    fi
  done <<<"$plan"
  step "pulumi refresh: importing $((${#imports[@]} / 4)) container(s), clearing $n_clear step(s)"
  run pulumi refresh --yes --skip-preview "${sargs[@]}" "${imports[@]}" --clear-pending-creates >/dev/null
  ok "Pending creates settled"
fi
ok "Recovered: run \`pulumi up${stack:+ --stack $stack}\` to converge"
