#!/usr/bin/env bash
# `pulumi preview` of a stack with no Proxmox reachable: local state, dummy secrets.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
  cat <<'USAGE'
Usage: tools/preview.sh [--stack NAME] [-- extra pulumi preview args]

Runs `pulumi preview` for Pulumi.<NAME>.yaml (default: homelab) with a local file
backend in .pulumi-state/ and, for secrets the stack file does not carry, dummy
values in a throw-away copy of the stack file (the committed file is never changed).
A preview of resources that do not exist yet makes no API or SSH calls, so this is
what a pull-request check runs. The stack config is validated first.
USAGE
}

stack=homelab
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --stack) stack=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
stack_file="Pulumi.$stack.yaml"
[[ -f $stack_file ]] || die "$stack_file not found (stacks here: $(echo Pulumi.*.yaml))"

step "Validating $stack_file"
.venv/bin/python -m components.config "$stack_file" >&2
ok "Config valid"

# shellcheck source=tools/pulumi-env.sh
source tools/pulumi-env.sh
if [[ -x .tools/bin/pulumi ]] && ! missing=$(bash tools/toolchain.sh --check 2>/dev/null); then
  die "the Pulumi toolchain in .tools/ is incomplete, so the engine cannot preview:
$(grep MISSING <<<"$missing")
(make toolchain says why; docs/adr/0002-toolchain-from-go-modules.md)"
fi
command -v pulumi >/dev/null || die "no pulumi CLI: run make toolchain (or install Pulumi)"
state="$root/.pulumi-state"
mkdir -p "$state/preview"
export PULUMI_BACKEND_URL="file://$state"
export PULUMI_CONFIG_PASSPHRASE=${PULUMI_CONFIG_PASSPHRASE:-preview-only}

cfg="$state/preview/Pulumi.$stack.yaml"
cp "$stack_file" "$cfg"
# `stack select --create` writes an encryption salt into the project's stack file: keep the
# committed file as it was.
cp -p "$stack_file" "$state/preview/$stack_file.orig"
trap 'cp -p "$state/preview/$stack_file.orig" "$root/$stack_file"' EXIT
step "Selecting stack $stack (local state in .pulumi-state/)"
pulumi stack select --create "$stack" --non-interactive >/dev/null 2>&1 || pulumi stack select "$stack" --non-interactive >/dev/null
ok "Stack $stack"
for key in proxmoxPassword sshPrivateKey; do
  if ! grep -q "homelab-media:$key:" "$cfg"; then
    pulumi config set --secret --config-file "$cfg" "homelab-media:$key" "dummy-$key-for-preview" >/dev/null
  fi
done
step "pulumi preview --stack $stack"
pulumi preview --stack "$stack" --config-file "$cfg" --non-interactive --diff=false "${extra[@]}"
ok "Preview done"
