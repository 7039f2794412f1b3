#!/bin/bash
# The lab node's part of PVE's lxc-pve-poststop-hook: a reboot from inside becomes a stop plus a trigger.
set -Eeuo pipefail
trap 'echo "lab-lxc-poststop: failed at line $LINENO" >&2' ERR

usage() {
  cat <<'USAGE'
Usage: lab-lxc-poststop VMID lxc post-stop   (as LXC runs an lxc.hook.post-stop)

Installed as /usr/local/sbin/lab-lxc-poststop in the lab node by lab/lab-up.sh; named by
the lab's generated container configs. As pve-container's src/lxc-pve-poststop-hook does
when LXC_TARGET is "reboot": it writes /var/lib/lxc/VMID/reboot and exits 1, so LXC stops
the container instead of rebooting it in place with the config it loaded at start. The
lab's API (lab/pve-lab.py) then does what pve-container@VMID's restart does: the config
generated again from the conf, lxc-start, and no hookscript.
USAGE
}

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
vmid=${LXC_NAME:-${1:-}}
[[ $vmid =~ ^[0-9]+$ ]] || exit 0
if [[ ${LXC_TARGET:-} == reboot ]]; then
  : >"/var/lib/lxc/$vmid/reboot"
  exit 1
fi
exit 0
