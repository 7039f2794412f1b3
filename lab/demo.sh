#!/usr/bin/env bash
# `make demo`: start the local lab and deploy the lab stack against it.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
  cat <<'USAGE'
Usage: lab/demo.sh [pulumi up options...]

Starts the local lab (lab/lab-up.sh), then runs `pulumi up --stack lab` against
it with the project's toolchain and the local backend (.pulumi-state/, passphrase "lab"),
and prints the stack outputs. Where the toolchain is incomplete (docs/adr/0002), it runs
the program without the engine instead (lab/run-program.py up; docs/adr/0006).
As root. Look around afterwards:
  ssh -i .lab/id_ed25519 -p 12222 root@127.0.0.1 pct list
Remove it all with lab/lab-down.sh (make lab-down).
USAGE
}

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }

look_around() {
  cat >&2 <<'HINT'
Look around:
  ssh -i .lab/id_ed25519 -p 12222 root@127.0.0.1 pct list                 # the node
  ssh -i .lab/id_ed25519 -p 12222 root@127.0.0.1 cat /etc/pve/lxc/201.conf # raw lxc lines
  ssh -i .lab/id_ed25519 -p 12222 root@127.0.0.1 pct exec 201 -- media-pipeline status
  ls .lab/node/mnt/storage                                                 # the pool
Stop and remove it all: make lab-down
HINT
}
need_root
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)

"$here/lab-up.sh"
if ! bash "$project/tools/toolchain.sh" --check >/dev/null 2>&1 && ! command -v pulumi >/dev/null; then
  warn "the Pulumi toolchain is incomplete here (bash tools/toolchain.sh --check): running the program without the engine"
  step "lab/run-program.py up --stack lab"
  "$project/.venv/bin/python" "$here/run-program.py" up --stack lab --outputs "$project/.lab/outputs.json"
  ok "deployed to the lab (outputs above and in .lab/outputs.json)"
  look_around
  exit 0
fi
# shellcheck source=tools/pulumi-env.sh
source "$project/tools/pulumi-env.sh"
export PULUMI_CONFIG_PASSPHRASE=lab PULUMI_BACKEND_URL="file://$project/.pulumi-state"
cd "$project"
step "pulumi up --stack lab"
pulumi up --stack lab --yes --skip-preview "$@"
step "Stack outputs"
pulumi stack output --stack lab
ok "deployed to the lab"
look_around
