#!/usr/bin/env bash
# Discover the node's GPU nodes (/dev/dri) and optical drive (sr + its sg node), with major/minor.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-devices.sh"

usage() {
  cat <<'USAGE'
Usage: host-discover.sh [--optical-drive auto|ID]

Reads the node's device nodes; changes nothing.
  GPU:     every /dev/dri/card* and /dev/dri/renderD* character device
           (with an iGPU plus an Arc card, the Arc is often card1/renderD129).
  Optical: the first /dev/sr* block device, and the SCSI generic node of the
           optical drive: /sys/class/scsi_generic/sgN/device/type is 5 (the one
           whose device/block/ holds the sr name, else the first of type 5).
           --optical-drive ID (homelab-media:devices.opticalDrive) picks one drive
           by its /dev/disk/by-id name, model or serial instead; an ID that
           matches no drive gives no drive (with the drives seen in the reason).
Missing hardware is reported as null/[] with a reason, not as a failure.
Environment: SYSFS_ROOT (default /sys), DEV_ROOT (default /dev) for fake trees;
paths are always reported as /dev/... (the node's path, as lxc.mount.entry wants).

stdout: JSON
  {"gpu": {"nodes": [{"path","type":"card"|"render","major","minor"}], "reason": str|null},
   "optical": {"sr": {"path","major","minor"}|null, "sg": {"path","major","minor"}|null,
               "reason": str|null}}
USAGE
}

optical_drive=auto
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --optical-drive) need_arg "$@"; optical_drive=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

dev=${DEV_ROOT:-/dev}

step "Looking for GPU nodes in $dev/dri"
gpu_nodes=()
find_dri_nodes
for e in "${DRI_NODES[@]}"; do
  read -r n type major minor <<<"$e"
  gpu_nodes+=("$(json_obj path "$(json_str "/dev/dri/$n")" type "$(json_str "$type")" major "$major" minor "$minor")")
  ok "/dev/dri/$n ($type, $major:$minor)"
done
gpu_reason=""
if [[ ${#gpu_nodes[@]} -eq 0 ]]; then
  gpu_reason="no GPU: no card* or renderD* character devices in $dev/dri (is the i915/xe driver loaded? lspci -k)"
  warn "$gpu_reason"
fi

step "Looking for the optical drive ($optical_drive)"
find_optical "$optical_drive"
sr_json=null sg_json=null
if [[ -n $OPT_SR ]]; then
  sr_json=$(dev_json "$dev/$OPT_SR" "/dev/$OPT_SR")
  ok "/dev/$OPT_SR (block, $(dev_majmin "$dev/$OPT_SR" | tr ' ' :))"
fi
if [[ -n $OPT_SG ]]; then
  sg_json=$(dev_json "$dev/$OPT_SG" "/dev/$OPT_SG")
  ok "/dev/$OPT_SG (char, $(dev_majmin "$dev/$OPT_SG" | tr ' ' :))"
fi
[[ -z $OPT_REASON ]] || warn "$OPT_REASON"

json_obj \
  gpu "$(json_obj nodes "$(json_raw_arr "${gpu_nodes[@]}")" reason "$(json_str_or_null "$gpu_reason")")" \
  optical "$(json_obj sr "$sr_json" sg "$sg_json" reason "$(json_str_or_null "$OPT_REASON")")"
echo
