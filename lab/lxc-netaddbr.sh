#!/bin/bash
# The lab node's stand-in for PVE's /usr/share/lxc/lxcnetaddbr: LXC's lxc.net.N.script.up.
set -Eeuo pipefail
trap 'echo "lab-lxcnetaddbr: failed at line $LINENO" >&2' ERR

usage() {
  cat <<'USAGE'
Usage: lab-lxcnetaddbr VMID net up veth IFACE   (as LXC calls an lxc.net.N.script.up)

Installed as /usr/local/sbin/lab-lxcnetaddbr in the lab node by lab/lab-up.sh; the lab's
generated container configs name it where PVE's update_lxc_config names
/usr/share/lxc/lxcnetaddbr (pve-container src/lxcnetaddbr). As that script does, it finds
netN of /etc/pve/lxc/VMID.conf from IFACE (veth<VMID>i<N>), and plugs IFACE into that
netN's bridge with the bridge's MTU. Unlike PVE: no firewall bridge, no VLAN tag.
USAGE
}

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
[[ $# -eq 5 ]] || { echo "got unexpected argument count (see --help)" >&2; exit 1; }
vmid=$1 iface=$5
[[ $2 == net && $3 == up && $4 == veth ]] || { echo "got unexpected arguments '$2 $3 $4' (want: net up veth)" >&2; exit 1; }
[[ $iface =~ ^veth([0-9]+)i([0-9]+)$ && ${BASH_REMATCH[1]} == "$vmid" ]] ||
  { echo "got unexpected interface name '$iface'" >&2; exit 1; }
n=${BASH_REMATCH[2]}
netconf=$(sed -n "/^\[/q; s/^net$n: *//p" "/etc/pve/lxc/$vmid.conf")
[[ -n $netconf ]] || { echo "unable to find network definition for interface '$iface'" >&2; exit 1; }
bridge=$(tr ',' '\n' <<<"$netconf" | sed -n 's/^bridge=//p')
[[ -n $bridge ]] || { echo "missing bridge configuration" >&2; exit 1; }
mtu=$(ip -o link show dev "$bridge" 2>/dev/null | sed -n 's/.* mtu \([0-9]*\) .*/\1/p')
[[ -n $mtu ]] || { echo "bridge '$bridge' does not exist" >&2; exit 1; }
ip link set dev "$iface" master "$bridge" mtu "$mtu" up
