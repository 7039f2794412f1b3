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

# optical_drives: print one line per optical drive: "SG SR" (sr may be "-"), from the
# scsi_generic devices whose device/type is 5 (CD/DVD/BD), in sg order.
optical_drives() {
  local sysfs=${SYSFS_ROOT:-/sys} d sr b
  for d in $(find "$sysfs/class/scsi_generic" -mindepth 1 -maxdepth 1 -name 'sg*' -printf '%f\n' 2>/dev/null | sort -V || true); do
    [[ $(cat "$sysfs/class/scsi_generic/$d/device/type" 2>/dev/null) == 5 ]] || continue
    sr=-
    for b in "$sysfs/class/scsi_generic/$d/device/block"/sr*; do
      [[ -e $b ]] && { sr=$(basename "$b"); break; }
    done
    printf '%s %s\n' "$d" "$sr"
  done
}

# squeeze TEXT: TEXT with runs of blanks made one and no blanks at either end.
squeeze() {
  local -a w
  read -r -a w <<<"$1" || true
  printf '%s' "${w[*]}"
}

# drive_model SG: the drive's model as sysfs reports it, blanks collapsed (empty if unknown).
drive_model() { squeeze "$(cat "${SYSFS_ROOT:-/sys}/class/scsi_generic/$1/device/model" 2>/dev/null || true)"; }

# drive_serial SG: the unit serial number (VPD page 0x80), printable part (empty if unknown).
drive_serial() {
  local f=${SYSFS_ROOT:-/sys}/class/scsi_generic/$1/device/vpd_pg80
  [[ -r $f ]] || return 0
  tail -c +5 "$f" 2>/dev/null | tr -cd '[:alnum:]._-' || true
}

# drive_by_id SG SR: the /dev/disk/by-id names that point at the drive's sr or sg node.
drive_by_id() {
  local dev=${DEV_ROOT:-/dev} l t
  for l in "$dev/disk/by-id"/*; do
    [[ -L $l ]] || continue
    t=$(basename "$(readlink "$l")")
    [[ $t == "$1" || $t == "$2" ]] && basename "$l"
  done
  return 0
}

# drive_matches WANT SG SR: true if WANT names this drive: one of its /dev/disk/by-id names
# (with or without the /dev/disk/by-id/ prefix), its model or its serial (case and blanks
# ignored for the model).
drive_matches() {
  local want=$1 sg=$2 sr=$3 id model serial
  want=${want#/dev/disk/by-id/}
  while read -r id; do
    [[ -n $id && $id == "$want" ]] && return 0
  done < <(drive_by_id "$sg" "$sr")
  model=$(drive_model "$sg")
  [[ -n $model && ${model,,} == "$(squeeze "${want,,}")" ]] && return 0
  serial=$(drive_serial "$sg")
  [[ -n $serial && $serial == "$want" ]] && return 0
  # a by-id name ends in _SERIAL even where sysfs has no vpd_pg80
  while read -r id; do
    [[ -n $id && $id == *_"$want" ]] && return 0
  done < <(drive_by_id "$sg" "$sr")
  return 1
}

# find_optical [WANT]: set OPT_SR / OPT_SG (names like sr0 / sg3, empty if none) and
# OPT_REASON. WANT (devices.opticalDrive) is auto (default: the first drive, the one of the
# first /dev/sr* node) or a /dev/disk/by-id name, model or serial of one drive. The sg
# node is the scsi_generic device whose type is 5 (CD/DVD) and whose block device is
# the chosen sr node. A WANT that matches no drive gives no drive (and says why), never
# another drive.
find_optical() {
  local want=${1:-auto} sysfs=${SYSFS_ROOT:-/sys} dev=${DEV_ROOT:-/dev} n sg sr name="" first="" match="" list=""
  OPT_SR="" OPT_SG="" OPT_REASON=""
  local -a drives=()
  mapfile -t drives < <(optical_drives)
  if [[ $want == auto ]]; then
    for n in "$dev"/sr*; do
      [[ -b $n ]] || continue
      OPT_SR=$(basename "$n")
      break
    done
    for n in "${drives[@]}"; do
      read -r sg sr <<<"$n"
      [[ -n $first ]] || first=$sg
      if [[ -n $OPT_SR && $sr == "$OPT_SR" ]]; then
        match=$sg
        break
      fi
    done
    name=${match:-$first}
  else
    for n in "${drives[@]}"; do
      read -r sg sr <<<"$n"
      list+="${list:+; }$sg/$sr '$(drive_model "$sg")' by-id: $(drive_by_id "$sg" "$sr" | paste -sd, -)"
      if drive_matches "$want" "$sg" "$sr"; then
        name=$sg
        [[ $sr != - && -b $dev/$sr ]] && OPT_SR=$sr
        break
      fi
    done
    if [[ -z $name ]]; then
      OPT_REASON="no optical drive matches ${STACK_NS}:devices.opticalDrive '$want' (drives here: ${list:-none}); set it to auto, or to one drive's /dev/disk/by-id name, model or serial"
      return 0
    fi
  fi
  if [[ -n $name && -c $dev/$name ]]; then
    OPT_SG=$name
  elif [[ -n $name ]]; then
    OPT_REASON="sysfs lists $name as the optical drive's SCSI generic device, but $dev/$name is not a character device"
  fi
  if [[ -z $OPT_SR && -z $OPT_SG ]]; then
    OPT_REASON=${OPT_REASON:-"no optical drive: no $dev/sr* block device and no scsi_generic device of type 5 in $sysfs/class/scsi_generic"}
  elif [[ -z $OPT_SR ]]; then
    OPT_REASON="no $dev/sr* block device (the drive's sg node exists)"
  elif [[ -z $OPT_SG && -z $OPT_REASON ]]; then
    OPT_REASON="no scsi_generic device of type 5 for $OPT_SR in $sysfs/class/scsi_generic (MakeMKV needs the sg node)"
  fi
  return 0
}

# find_dri_nodes: set DRI_NODES to "NAME TYPE MAJOR MINOR" entries, one per
# $DEV_ROOT/dri/card* and renderD* character device, in name order.
find_dri_nodes() {
  local dev=${DEV_ROOT:-/dev} n type mm
  DRI_NODES=()
  for n in $(find "$dev/dri" -mindepth 1 -maxdepth 1 \( -name 'card*' -o -name 'renderD*' \) -printf '%f\n' 2>/dev/null | sort -V || true); do
    [[ -c $dev/dri/$n ]] || continue
    type=card
    [[ $n == renderD* ]] && type=render
    mm=$(dev_majmin "$dev/dri/$n") || continue
    DRI_NODES+=("$n $type $mm")
  done
}

# Raw lxc lines, by the rules of components/render.py (gpu_lines, drive_lines; a test
# keeps them in step). Printed one per line.
DRI_MAJOR=226 SR_MAJOR=11 SG_MAJOR=21

# gpu_raw_lines: every DRI node's allow rule (by minor), then the /dev/dri bind; nothing
# without a GPU. Fails on a node whose major is not DRI's.
gpu_raw_lines() {
  local e n t ma mi
  local -a minors=()
  find_dri_nodes
  [[ ${#DRI_NODES[@]} -gt 0 ]] || return 0
  for e in "${DRI_NODES[@]}"; do
    read -r n t ma mi <<<"$e"
    [[ $ma == "$DRI_MAJOR" ]] || { printf '/dev/dri/%s: major %s is not a DRI device (%s)\n' "$n" "$ma" "$DRI_MAJOR" >&2; return 1; }
    minors+=("$mi")
  done
  for mi in $(printf '%s\n' "${minors[@]}" | sort -n); do
    printf 'lxc.cgroup2.devices.allow: c %s:%s rwm\n' "$DRI_MAJOR" "$mi"
  done
  printf 'lxc.mount.entry: /dev/dri dev/dri none bind,optional,create=dir\n'
}

# drive_raw_lines [WANT]: the chosen drive's block rule for sr (b 11:N) and char rule for
# its sg (c 21:N), then a bind of each; nothing without a drive. Sets OPT_* (find_optical).
drive_raw_lines() {
  local dev=${DEV_ROOT:-/dev} mm
  local -a allow=() mounts=()
  find_optical "${1:-auto}"
  if [[ -n $OPT_SR ]]; then
    mm=$(dev_majmin "$dev/$OPT_SR")
    [[ ${mm% *} == "$SR_MAJOR" ]] || { printf '/dev/%s: major %s is not an optical block device (%s)\n' "$OPT_SR" "${mm% *}" "$SR_MAJOR" >&2; return 1; }
    allow+=("lxc.cgroup2.devices.allow: b $SR_MAJOR:${mm#* } rwm")
    mounts+=("lxc.mount.entry: /dev/$OPT_SR dev/$OPT_SR none bind,optional,create=file")
  fi
  if [[ -n $OPT_SG ]]; then
    mm=$(dev_majmin "$dev/$OPT_SG")
    [[ ${mm% *} == "$SG_MAJOR" ]] || { printf '/dev/%s: major %s is not a SCSI generic device (%s)\n' "$OPT_SG" "${mm% *}" "$SG_MAJOR" >&2; return 1; }
    allow+=("lxc.cgroup2.devices.allow: c $SG_MAJOR:${mm#* } rwm")
    mounts+=("lxc.mount.entry: /dev/$OPT_SG dev/$OPT_SG none bind,optional,create=file")
  fi
  [[ ${#allow[@]} -eq 0 ]] || printf '%s\n' "${allow[@]}" "${mounts[@]}"
}

# first_render_node: print the first $DEV_ROOT/dri/renderD* character device (empty if none).
first_render_node() {
  local n
  for n in $(find "${DEV_ROOT:-/dev}/dri" -mindepth 1 -maxdepth 1 -name 'renderD*' 2>/dev/null | sort -V || true); do
    [[ -c $n ]] && { printf '%s\n' "$n"; return 0; }
  done
  return 0
}


# --- render nodes: kernel driver, PCI address, stable names (media_pipeline/gpu.py has the same rules)

# render_sysfs NODE: the sysfs directory of a render node (NODE: a path or a renderDN name).
render_sysfs() { printf '%s/class/drm/%s\n' "${SYSFS_ROOT:-/sys}" "$(basename "$1")"; }

# render_kernel_driver NODE: the kernel driver bound to its GPU (i915, xe, amdgpu, ...), "unknown" if sysfs has none.
render_kernel_driver() {
  local l
  l=$(readlink "$(render_sysfs "$1")/device/driver" 2>/dev/null) || { echo unknown; return 0; }
  basename "$l"
}

# PCI_ADDR_RE: a PCI address as udev's by-path names and sysfs spell it (domain:bus:device.function).
PCI_ADDR_RE='[0-9a-f]{4,}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]'

# render_pci_address NODE: its GPU's PCI address (0000:03:00.0); empty if sysfs does not say.
render_pci_address() {
  local l
  l=$(readlink "$(render_sysfs "$1")/device" 2>/dev/null) || return 0
  l=$(basename "$l")  # sysfs: class/drm/renderD128/device -> ../../../0000:03:00.0
  if [[ $l =~ ^${PCI_ADDR_RE}$ ]]; then printf '%s\n' "$l"; fi
  return 0
}

# render_pci_device_id NODE: its GPU's PCI device id without 0x (56a0); empty if unknown.
render_pci_device_id() {
  local id
  id=$(cat "$(render_sysfs "$1")/device/device" 2>/dev/null) || return 0
  id=${id#0x}
  printf '%s\n' "${id//[[:space:]]/}"
}

# render_nodes: the $DEV_ROOT/dri/renderD* character devices, in numeric order, one per line.
render_nodes() {
  local n
  for n in $(find "${DEV_ROOT:-/dev}/dri" -mindepth 1 -maxdepth 1 -name 'renderD*' 2>/dev/null | sort -V || true); do
    [[ -c $n ]] && printf '%s\n' "$n"
  done
  return 0
}

# render_nodes_summary: "renderD128 = /dev/dri/by-path/pci-0000:00:02.0-render (i915); ..." for messages.
render_nodes_summary() {
  local n a name out=""
  while read -r n; do
    a=$(render_pci_address "$n")
    name="no PCI address in sysfs"
    [[ -z $a ]] || name=/dev/dri/by-path/pci-$a-render
    out+="${out:+; }$(basename "$n") = $name ($(render_kernel_driver "$n"))"
  done < <(render_nodes)
  printf '%s\n' "${out:-none}"
}

# resolve_render_node SPEC: set RES_NODE to today's render node for SPEC, or RES_REASON when there is
# none (RES_ADDR: the PCI address a by-path SPEC names). SPEC /dev/dri/renderDN is used as it is (under DEV_ROOT); /dev/dri/by-path/pci-ADDR-render
# (stable across reboots) resolves through udev's by-path link when /dev/dri has it (the container's
# /dev/dri is a bind mount of the node's), else through the render node whose sysfs device is ADDR.
# shellcheck disable=SC2034  # RES_* are read by the scripts that source this
resolve_render_node() {
  local spec=$1 dri=${DEV_ROOT:-/dev}/dri addr link t n
  RES_NODE="" RES_REASON="" RES_ADDR=""
  if [[ $spec =~ ^/dev/dri/(renderD[0-9]+)$ ]]; then
    RES_NODE=$dri/${BASH_REMATCH[1]}
    return 0
  fi
  if [[ ! $spec =~ ^/dev/dri/by-path/pci-(${PCI_ADDR_RE})-render$ ]]; then
    # anything else (a test's own path) is used as it is
    RES_NODE=$spec
    return 0
  fi
  addr=${BASH_REMATCH[1]} RES_ADDR=${BASH_REMATCH[1]}
  link=$dri/by-path/pci-$addr-render
  if [[ -L $link ]]; then
    t=$(basename "$(readlink "$link")")
    if [[ $t =~ ^renderD[0-9]+$ && -c $dri/$t ]]; then
      RES_NODE=$dri/$t
      return 0
    fi
  fi
  while read -r n; do
    if [[ $(render_pci_address "$n") == "$addr" ]]; then
      RES_NODE=$n
      return 0
    fi
  done < <(render_nodes)
  RES_REASON="$spec: no render node is PCI device $addr (render nodes here: $(render_nodes_summary)); set ${STACK_NS}:encoding.qsvDevice to one of those by-path names, or unset it for auto"
  return 0
}

# The first releases that drive the xe kernel driver: intel-media-driver builds its Xe KMD support
# by default from 24.2.1 (intel/media-driver 0f46bd6); libva maps xe to iHD from 2.21.0 (intel/libva
# 0931342). Debian 12 has 23.1.1 and 2.17.0; bookworm-backports has neither package.
XE_MIN_MEDIA_DRIVER=24.2.1
XE_MIN_LIBVA=2.21.0

# pkg_installed_version PKG: the version dpkg has installed, empty if none.
pkg_installed_version() {
  local s
  s=$(dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | head -n1) || true
  [[ $s == "installed "* ]] && printf '%s\n' "${s#installed }"
  return 0
}

# xe_stack_problem: why this system's VA stack cannot drive an xe render node (nothing when it can).
xe_stack_problem() {
  local media libva
  media=$(pkg_installed_version intel-media-va-driver-non-free)
  [[ -n $media ]] || media=$(pkg_installed_version intel-media-va-driver)
  libva=$(pkg_installed_version libva2)
  if [[ -n $media && -n $libva ]] && dpkg --compare-versions "$media" ge "$XE_MIN_MEDIA_DRIVER" &&
    dpkg --compare-versions "$libva" ge "$XE_MIN_LIBVA"; then
    return 0
  fi
  printf 'the xe kernel driver needs intel-media-driver >= %s and libva >= %s; this container has intel-media-va-driver-non-free %s and libva2 %s\n' \
    "$XE_MIN_MEDIA_DRIVER" "$XE_MIN_LIBVA" "${media:-not installed}" "${libva:-not installed}"
}

# xe_refusal NODE PROBLEM: the whole reason an xe GPU is refused, with the fixes.
xe_refusal() {
  local id
  id=$(render_pci_device_id "$1")
  id=${id:-<device id>}
  printf '%s (PCI %s) cannot be used: %s (Debian 12 and bookworm-backports have nothing newer). Fix on the node: bind the GPU to i915 with the kernel parameters i915.force_probe=%s xe.force_probe=!%s (drop any xe.force_probe=%s), then reboot the node; or use a Debian 13 container template (%s:template.url; its intel-media-driver 25.2 and libva 2.22 drive xe; Arc B-series has no i915 support, so this is its only route)\n' \
    "$1" "$(render_pci_address "$1")" "$2" "$id" "$id" "$id" "$STACK_NS"
}

# auto_render_node: set AUTO_NODE and AUTO_WHY by media-transcode's auto rule (media_pipeline/gpu.py):
# the first i915/xe render node in numeric order, but with a VA stack that cannot drive xe the first
# i915 node; an xe node then only when there is no i915 one. No Intel node: the first render node.
# shellcheck disable=SC2034  # AUTO_* are read by the scripts that source this
auto_render_node() {
  local n d xe_problem="" first_xe="" skipped=""
  local -a nodes=()
  AUTO_NODE="" AUTO_WHY=""
  mapfile -t nodes < <(render_nodes)
  for n in "${nodes[@]}"; do
    [[ $(render_kernel_driver "$n") == xe ]] && { xe_problem=$(xe_stack_problem); break; }
  done
  for n in "${nodes[@]}"; do
    d=$(render_kernel_driver "$n")
    if [[ $d == xe && -n $xe_problem ]]; then
      first_xe=${first_xe:-$n}
      skipped+="${skipped:+, }$(basename "$n")"
    elif [[ $d == i915 || $d == xe ]]; then
      AUTO_NODE=$n
      AUTO_WHY="auto: the first Intel render node, driver $d${skipped:+; $skipped is on xe, skipped: $xe_problem}"
      return 0
    fi
  done
  if [[ -n $first_xe ]]; then
    AUTO_NODE=$first_xe AUTO_WHY="auto: driver xe (no i915 node), which cannot work here"
  elif [[ ${#nodes[@]} -gt 0 ]]; then
    AUTO_NODE=${nodes[0]} AUTO_WHY="auto: no i915/xe render node; the first render node"
  fi
  return 0
}
