#!/usr/bin/env bash
# Device nodes: DRI nodes, the optical drive. SYSFS_ROOT and DEV_ROOT let tests point these at fake trees.
# Sourced after lib.sh, never run.
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"


# dev_majmin PATH: print "major minor" (decimal) of a device node.
dev_majmin() {
  local hex
  hex=$(stat -L -c '%t %T' "$1") || return 1
  printf '%d %d\n' "0x${hex% *}" "0x${hex#* }"
}

# dev_json PATH LOGICAL: {"path":LOGICAL,"major":M,"minor":N} for a device node.
dev_json() {
  local mm
  mm=$(dev_majmin "$1") || return 1
  json_obj path "$(json_str "$2")" major "${mm% *}" minor "${mm#* }"
}

# find_optical: set OPT_SR / OPT_SG (names like sr0 / sg3, empty if none) and
# OPT_REASON. The sg node is the scsi_generic device whose type is 5 (CD/DVD),
# preferably the one whose block device is the chosen sr node.
find_optical() {
  local sysfs=${SYSFS_ROOT:-/sys} dev=${DEV_ROOT:-/dev} n d name first="" match=""
  OPT_SR="" OPT_SG="" OPT_REASON=""
  for n in "$dev"/sr*; do
    [[ -b $n ]] || continue
    OPT_SR=$(basename "$n")
    break
  done
  for d in $(find "$sysfs/class/scsi_generic" -mindepth 1 -maxdepth 1 -name 'sg*' -printf '%f\n' 2>/dev/null | sort -V || true); do
    [[ $(cat "$sysfs/class/scsi_generic/$d/device/type" 2>/dev/null) == 5 ]] || continue
    [[ -n $first ]] || first=$d
    if [[ -n $OPT_SR && -e $sysfs/class/scsi_generic/$d/device/block/$OPT_SR ]]; then
      match=$d
      break
    fi
  done
  name=${match:-$first}
  if [[ -n $name && -c $dev/$name ]]; then
    OPT_SG=$name
  elif [[ -n $name ]]; then
    OPT_REASON="sysfs lists $name as the optical drive's SCSI generic device, but $dev/$name is not a character device"
  fi
  if [[ -z $OPT_SR && -z $OPT_SG ]]; then
    OPT_REASON="no optical drive: no $dev/sr* block device and no scsi_generic device of type 5 in $sysfs/class/scsi_generic"
  elif [[ -z $OPT_SR ]]; then
    OPT_REASON="no $dev/sr* block device (the drive's sg node exists)"
  elif [[ -z $OPT_SG && -z $OPT_REASON ]]; then
    OPT_REASON="no scsi_generic device of type 5 for $OPT_SR in $sysfs/class/scsi_generic (MakeMKV needs the sg node)"
  fi
  return 0
}

# first_render_node: print the first $DEV_ROOT/dri/renderD* character device (empty if none).
first_render_node() {
  local n
  for n in $(find "${DEV_ROOT:-/dev}/dri" -mindepth 1 -maxdepth 1 -name 'renderD*' 2>/dev/null | sort -V || true); do
    [[ -c $n ]] && { printf '%s\n' "$n"; return 0; }
  done
  return 0
}

