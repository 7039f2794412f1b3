#!/usr/bin/env bash
# Bring containers made by hand (the plan's CT 201/202) under the stack, instead of `up`
# failing on "already exists": import them where the program declares them, then show what
# the next `up` would change, and stop if it would replace (recreate) one.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/stack-cli.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib-exec.sh"

usage() {
  cat <<EOF
Usage: tools/adopt-containers.sh [--stack NAME] [--only transcoder|ripper] [--help]

For each of the stack's containers (homelab-media:transcoder.vmId, homelab-media:ripper.vmId)
that exists on the node but not in the stack's state:
  1. \`pulumi up --target\` the provider, the container's component and its vm id guard
     (host-ct-guard.sh, told by HOMELAB_MEDIA_ADOPT to accept the existing container; it
     only reads the node);
  2. \`pulumi import --file\` the container under its component, as <node>/<vmid>
     (not protected, so \`pulumi destroy\` can still remove it on purpose);
  3. \`pulumi preview\`: the changes the next \`up\` makes to it are listed. If a container
     would be REPLACED (a mount point, the disk's datastore, privileged/unprivileged differ
     from the stack config), the script stops and names the properties: align
     Pulumi.<stack>.yaml with the container (or accept a rebuild) before \`pulumi up\`;
  4. otherwise the timeouts the program declares for the imported containers are written
     into the state (bpg's import leaves them at 0 s: a destroy before the first up failed).
Then \`pulumi up\` converges: raw lines, users, packages and proofs are applied to the
adopted containers by the same idempotent steps as for new ones. Files on the pool are
never touched by any of this.

Options:
  --stack NAME     the stack (default: the selected one)
  --only NAME      just one container (transcoder or ripper)
  --help           this text
Uses the pulumi on PATH (source tools/pulumi-env.sh for the project's own).
EOF
}

stack="" only=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --stack) [[ -n ${2:-} ]] || die "--stack needs a name" 2; stack=$2; shift 2 ;;
    --only) [[ ${2:-} == transcoder || ${2:-} == ripper ]] || die "--only takes transcoder or ripper" 2; only=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
stack_cli_init
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "Reading the stack's containers ($stack)"
pulumi stack export "${sargs[@]}" >"$work/state.json"
# name vmid node component-urn container-urn provider-urn, for containers not in the state yet
"$py" - "$stack" "$project" "$work/state.json" "$only" >"$work/plan" <<'PY'
import json, subprocess, sys
from components.config import ConfigError, from_cli_json
stack, project, state_file, only = sys.argv[1:5]
cli = subprocess.run(["pulumi", "config", "--json", "--stack", stack, "--non-interactive"], capture_output=True, text=True)
if cli.returncode:
    sys.exit(f"pulumi config --stack {stack} failed: {cli.stderr.strip()}")
try:
    cfg = from_cli_json(json.loads(cli.stdout))  # validated as the program validates it
except ConfigError as exc:
    sys.exit(f"the config of stack {stack} (Pulumi.{stack}.yaml) has {len(exc.messages)} problem(s); fix them, then run this again:\n"
             + "\n".join(f"  - {m}" for m in exc.messages))
node = cfg.proxmox.node
state = json.load(open(state_file)).get("deployment") or {}
have = {r["urn"] for r in state.get("resources") or []}
pre = f"urn:pulumi:{stack}::{project}::"
for name, comp in (("transcoder", "TranscoderCT"), ("ripper", "RipperCT")):
    if only and name != only:
        continue
    vmid = getattr(cfg, name).vm_id
    comp_urn = f"{pre}homelab:index:{comp}::{name}"
    ct_urn = f"{pre}homelab:index:{comp}$proxmoxve:index/containerLegacy:ContainerLegacy::{name}"
    print(name, int(vmid), node, comp_urn, ct_urn, f"{pre}pulumi:providers:proxmoxve::pve",
          "managed" if ct_urn in have else "adopt")
PY
todo=()
while read -r name vmid node comp ct prov what; do
  if [[ $what == managed ]]; then ok "$name (CT $vmid) is already in the stack"; else todo+=("$name $vmid $node $comp $ct $prov"); fi
done <"$work/plan"
[[ ${#todo[@]} -gt 0 ]] || { ok "Nothing to adopt"; exit 0; }

targets=() ids=()
for t in "${todo[@]}"; do
  read -r name vmid node comp ct prov <<<"$t"
  # the component and its vm id guard, which (told by HOMELAB_MEDIA_ADOPT) accepts the existing CT
  guard="${comp%::*}\$command:remote:Command::$name-vmid-guard"
  targets+=(--target "$comp" --target "$guard")
  ids+=("$vmid")
done

step "Declaring the provider, the components and their vm id guards (pulumi up --target: reads only)"
HOMELAB_MEDIA_ADOPT=$(IFS=,; echo "${ids[*]}") quiet pulumi up --yes --skip-preview "${sargs[@]}" --target "$prov" "${targets[@]}"
ok "Declared"

adopted=0 imported=()
for t in "${todo[@]}"; do
  read -r name vmid node comp ct prov <<<"$t"
  step "Importing $name (CT $vmid on $node)"
  printf '{"nameTable": {"pve": "%s", "component": "%s"}, "resources": [{"type": "%s", "name": "%s", "id": "%s/%s", "parent": "component", "provider": "pve"}]}\n' \
    "$prov" "$comp" "proxmoxve:index/containerLegacy:ContainerLegacy" "$name" "$node" "$vmid" >"$work/import-$name.json"
  if out=$(pulumi import --file "$work/import-$name.json" --yes --skip-preview --protect=false --generate-code=false "${sargs[@]}" 2>&1); then
    adopted=$((adopted + 1))
    imported+=("$ct")
    ok "Imported $name"
  elif grep -qiE "does not exist|not found|404|no resource" <<<"$out"; then
    ok "CT $vmid is not on $node: the next up creates $name"
  else
    printf '%s\n' "$out" | tail -n 20 >&2
    die "importing CT $vmid failed (see above)"
  fi
done
[[ $adopted -gt 0 ]] || { ok "Nothing to adopt"; exit 0; }

step "What the next up changes (pulumi preview)"
pulumi preview --json "${sargs[@]}" >"$work/preview.json" || true
# On a refusal the imported containers leave the stack again (state only): nothing refers to
# them, so neither up nor destroy can touch them until the config matches.
undo() {
  local urn
  for urn in "${imported[@]}"; do
    quiet pulumi state delete --yes --force "${sargs[@]}" "$urn" || warn "could not take $urn out of the stack"
  done
  warn "took ${#imported[@]} imported container(s) out of the stack again; the containers themselves are untouched"
}
if ! "$py" - "$work/preview.json" "$stack" <<'PY'
import json, sys
try:
    steps = json.load(open(sys.argv[1])).get("steps") or []
except ValueError:
    sys.exit("pulumi preview failed: run it yourself to see why")
bad = []
for s in steps:
    urn = s.get("urn", "")
    if "containerLegacy" not in urn or s.get("op") in ("same", None):
        continue
    name = urn.rsplit("::", 1)[-1]
    if s["op"] in ("replace", "create-replacement", "delete-replaced"):
        bad.append(f"{name}: would be REPLACED because of {', '.join(s.get('replaceReasons') or s.get('diffReasons') or ['?'])}")
    else:
        print(f" ✓ {name}: {s['op']} {', '.join(s.get('diffReasons') or [])}".rstrip(), file=sys.stderr)
if bad:
    print("\n".join(" ✗ " + b for b in sorted(set(bad))), file=sys.stderr)
    sys.exit(f"a container would be recreated (its disk lost): set those keys in Pulumi.{sys.argv[2]}.yaml to what "
             "the container has, then run this again")
PY
then
  undo
  exit 1
fi

# bpg's importer sets only the id and the node: the container's timeouts stay unset in the state
# (0 s to bpg), so a `pulumi destroy` before the first up failed at once ("context deadline
# exceeded"), and an up of just the containers cannot run (they depend on the template and the
# node's steps). So the state gets the timeouts the program declares (the preview's new inputs);
# nothing else in it changes, and nothing on the node.
step "Recording the stack's timeouts for the adopted containers (pulumi stack export/import)"
hint="the containers are in the stack, but their timeouts were not recorded: run pulumi up${stack:+ --stack $stack} before any pulumi destroy"
pulumi stack export "${sargs[@]}" >"$work/adopted.json" || die "pulumi stack export failed (see above); $hint"
"$py" - "$work/preview.json" "$work/adopted.json" "${imported[@]}" <<'PY' ||
import json, sys
preview, state_file, urns = sys.argv[1], sys.argv[2], set(sys.argv[3:])
want = {s["urn"]: {k: v for k, v in ((s.get("newState") or {}).get("inputs") or {}).items() if k.startswith("timeout")}
        for s in json.load(open(preview)).get("steps") or [] if s.get("urn") in urns}
state = json.load(open(state_file))
patched = 0
for r in state["deployment"]["resources"]:
    for key, value in (want.get(r["urn"]) or {}).items():
        r.setdefault("inputs", {})[key] = value
        r.setdefault("outputs", {})[key] = value
        patched += 1
if urns and not patched:
    sys.exit("the preview declared no timeouts for the imported containers: nothing recorded")
json.dump(state, open(state_file, "w"))
PY
  die "patching the exported state failed (see above); $hint"
quiet pulumi stack import "${sargs[@]}" --file "$work/adopted.json" || die "pulumi stack import failed (see above); $hint"
ok "Adopted: run \`pulumi up${stack:+ --stack $stack}\` to converge (device lines, the media user, packages, the proofs)"
