#!/usr/bin/env bash
# Before the program creates a container: refuse if its vm id already belongs to a guest it does not manage.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'USAGE'
Usage: host-ct-guard.sh --vmid N --key KEY --marker TEXT [--adopt] [--pve-dir DIR]

Runs on the Proxmox node once, before the program first creates container N. bpg's
provider treats PVE's "CT N already exists" as a create that succeeded, so without this
check `pulumi up` would silently take over a guest made by hand, and a later up or
destroy would recreate or delete it. Refused (exit 1) when /etc/pve/nodes/*/lxc/N.conf
or qemu-server/N.conf exists and its description does not carry TEXT (the description
the program gives its containers), naming KEY and the way out (make adopt). --adopt
(set by tools/adopt-containers.sh for a container it imports) accepts an existing one.

  --vmid N        the vm id the stack wants
  --key KEY       the stack key it comes from, for the message (e.g. transcoder.vmId)
  --marker TEXT   text the program puts in its containers' descriptions
  --adopt         an existing container is being adopted: accept it
  --pve-dir DIR   pmxcfs mount (default /etc/pve)

stdout: JSON {"vmid","exists":bool,"node":str|null,"kind":"lxc"|"qemu"|null,"managed":bool,"adopted":bool}
USAGE
}

vmid="" key="" marker="" adopt=0 pve=/etc/pve
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --vmid) need_arg "$@"; vmid=$2; shift 2 ;;
    --key) need_arg "$@"; key=$2; shift 2 ;;
    --marker) need_arg "$@"; marker=$2; shift 2 ;;
    --adopt) adopt=1; shift ;;
    --pve-dir) need_arg "$@"; pve=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
need_int --vmid "$vmid"
[[ -n $key && -n $marker ]] || die "--key and --marker are required (see --help)"

step "Is vm id $vmid free or ours?"
conf="" kind="" node=""
for f in "$pve"/nodes/*/lxc/"$vmid".conf "$pve"/nodes/*/qemu-server/"$vmid".conf; do
  if [[ -f $f ]]; then
    conf=$f
    break
  fi
done
managed=false exists=false
if [[ -n $conf ]]; then
  exists=true
  node=${conf#"$pve"/nodes/}
  node=${node%%/*}
  [[ $conf == */lxc/* ]] && kind=lxc || kind=qemu
  # the description is the conf's leading `#` lines (percent-encoding leaves plain text as is)
  if [[ $kind == lxc ]] && sed -n '/^\[/q; /^#/p' "$conf" | grep -qF -- "$marker"; then
    managed=true
  fi
fi
printf '{"vmid":%s,"exists":%s,"node":%s,"kind":%s,"managed":%s,"adopted":%s}\n' "$vmid" "$exists" \
  "$(json_str_or_null "$node")" "$(json_str_or_null "$kind")" "$managed" "$(json_bool "$adopt")"
if [[ $exists == false ]]; then
  ok "vm id $vmid is free"
elif [[ $managed == true ]]; then
  ok "CT $vmid exists and is this program's (an earlier, interrupted up made it)"
elif [[ $adopt -eq 1 && $kind == lxc ]]; then
  ok "CT $vmid exists and is being adopted"
elif [[ $kind == qemu ]]; then
  die "vm id $vmid ($key) is a VM on node $node: pick a free id with $(config_set_hint "$key" '<id>')"
else
  die "CT $vmid ($key) already exists on node $node and this stack does not manage it: adopt it with \`make adopt\` (tools/adopt-containers.sh), or pick a free id with $(config_set_hint "$key" '<id>'). Nothing was changed."
fi
