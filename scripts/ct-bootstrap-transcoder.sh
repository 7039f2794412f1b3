#!/usr/bin/env bash
# Inside the transcoder container: media user, non-free apt components, Intel VA/QSV stack and tools.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-devices.sh"

usage() {
  cat <<'USAGE'
Usage: ct-bootstrap-transcoder.sh --user media --video-gid 44 --render-gid 104
         [--uid 1000] [--gid 1000] [--render-node PATH]
         [--sources-only | --dri-only | --gpu-only]

Inside the transcoder container (Debian 12):
  1. the media user (ct-media-user.sh, next to this script) with the node's
     video/render numbers;
  2. contrib, non-free and non-free-firmware added to the container's EXISTING
     Debian apt sources (one-line sources.list/*.list and deb822 *.sources);
     the mirror is never replaced and third-party repositories are left alone;
  3. apt-get update + install of the missing packages among
     intel-media-va-driver-non-free libvpl2 libmfx-gen1.2 vainfo intel-gpu-tools
     ffmpeg handbrake-cli mediainfo mkvtoolnix jq python3
     (nothing is downloaded when all are installed);
  4. if /dev/dri exists: CHECK (never change) that card* have the node's video
     gid and renderD* its render gid. /dev/dri is a bind mount of the node's
     devtmpfs, so changing them here would re-group the node's own nodes; a
     mismatch means the stack's homelab-media:hostGroups.video/render is not the
     node's number: a warning names the key and the value to set. Not fatal;
  5. the GPU's kernel driver (/sys/class/drm/renderD*/device/driver: i915 or xe)
     for the render node the pipeline will use (--render-node, else its auto
     choice). xe needs intel-media-driver >= 24.2.1 and libva >= 2.21.0; Debian 12
     has 23.1.1 and 2.17.0 and bookworm-backports has neither, so with an older
     stack an xe GPU is refused: a warning says why and how to bind it to i915
     (or to use a Debian 13 template). Not fatal (libx265 still works);
     verify-gpu.sh's proof fails with the same reason.

  --render-node PATH  the render node encoding.qsvDevice names: /dev/dri/renderD<N> or
                   /dev/dri/by-path/pci-<domain:bus:device.function>-render (default: auto)
  --sources-only   do only step 2 (for tests; APT_ETC overrides /etc/apt)
  --dri-only       do only step 4, print {"dri":[...],"dri_ok":bool,"changed":false}
                   (for tests; DEV_ROOT overrides /dev; needs no root)
  --gpu-only       do only step 5, print {"gpu":{...}} (for tests; DEV_ROOT, SYSFS_ROOT;
                   needs no root)

stdout: JSON {"packages":[installed list],"installed":[newly installed],
              "sources_changed":[files],
              "dri":[{"path","gid","expected_gid","ok":bool}],"dri_ok":bool,
              "gpu":{"render_node","kernel_driver","pci_address","choice",
                     "usable":true (i915, or xe on a stack that drives it)|false (xe
                     refused)|null (no GPU, or not an Intel driver),"reason"},
              "user":{ct-media-user JSON},"changed":bool}
Exit 1 with a message on stderr on failure (apt errors show their log tail).
USAGE
}

PACKAGES=(intel-media-va-driver-non-free libvpl2 libmfx-gen1.2 vainfo intel-gpu-tools
  ffmpeg handbrake-cli mediainfo mkvtoolnix jq python3)
WANT_COMPONENTS=(contrib non-free non-free-firmware)

user="" uid=1000 gid=1000 video_gid="" render_gid="" sources_only=0 dri_only=0 gpu_only=0 render_node=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --user) need_arg "$@"; user=$2; shift 2 ;;
    --uid) need_arg "$@"; uid=$2; shift 2 ;;
    --gid) need_arg "$@"; gid=$2; shift 2 ;;
    --video-gid) need_arg "$@"; video_gid=$2; shift 2 ;;
    --render-gid) need_arg "$@"; render_gid=$2; shift 2 ;;
    --sources-only) sources_only=1; shift ;;
    --dri-only) dri_only=1; shift ;;
    --gpu-only) gpu_only=1; shift ;;
    --render-node) need_arg "$@"; render_node=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

apt_etc=${APT_ETC:-/etc/apt}

# codename: the Debian release these sources are for (bookworm on Debian 12).
codename() {
  local c=""
  if [[ -r ${OS_RELEASE:-/etc/os-release} ]]; then
    c=$(sed -n 's/^VERSION_CODENAME=//p' "${OS_RELEASE:-/etc/os-release}" | tr -d '"')
  fi
  printf '%s\n' "${c:-bookworm}"
}

# is_debian_suite SUITE: SUITE is this release or one of its -updates/-security/-backports.
is_debian_suite() {
  local base=${1%%-*}
  [[ $base == "$CODENAME" ]]
}

# missing_components "comp comp ...": print the wanted components not in the list.
missing_components() {
  local have=" $1 " c out=()
  for c in "${WANT_COMPONENTS[@]}"; do
    [[ $have == *" $c "* ]] || out+=("$c")
  done
  printf '%s' "${out[*]}"
}

# debian_signed SIGNEDBY: no Signed-By, or Debian's own keyring (third-party repos carry their own).
debian_signed() { [[ -z $1 || $1 == *debian-archive-keyring* ]]; }

# edit_one_line FILE: print FILE with components added to Debian `deb`/`deb-src` lines.
edit_one_line() {
  local line body opts suite comps comment add signed
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^[[:space:]]*(deb|deb-src)[[:space:]]+(.*)$ ]]; then
      body=${BASH_REMATCH[2]} opts="" comment=""
      if [[ $body == *'#'* ]]; then
        comment=" #${body#*#}"
        body=${body%%#*}
      fi
      if [[ $body =~ ^(\[[^]]*\])[[:space:]]*(.*)$ ]]; then
        opts=${BASH_REMATCH[1]}
        body=${BASH_REMATCH[2]}
      fi
      read -r _ suite comps <<<"$body"
      signed=""
      [[ $opts =~ signed-by=([^][:space:]]+) ]] && signed=${BASH_REMATCH[1]}
      if [[ -n $comps ]] && is_debian_suite "$suite" && [[ " $comps " == *" main "* ]] && debian_signed "$signed"; then
        add=$(missing_components "$comps")
        if [[ -n $add ]]; then
          line="${line%%#*}"
          line="${line%"${line##*[![:space:]]}"} $add${comment}"
        fi
      fi
    fi
    printf '%s\n' "$line"
  done <"$1"
}

# edit_deb822 FILE: print FILE with components added to the Components: field
# of enabled Debian stanzas.
edit_deb822() {
  local -a stanza=() _c=()
  local line
  flush() {
    local l suites="" comps="" signed="" enabled=yes ci=-1 i add
    for i in "${!stanza[@]}"; do
      l=${stanza[i]}
      case ${l,,} in
        suites:*) suites=${l#*:} ;;
        components:*) comps=${l#*:} ci=$i ;;
        signed-by:*) signed=${l#*:} ;;
        enabled:*) enabled=${l#*:} ;;
      esac
    done
    enabled=${enabled// /}
    if [[ $ci -ge 0 && ${enabled,,} != no ]] && [[ " $comps " == *" main "* ]] && debian_signed "${signed// /}"; then
      local s debian=0
      for s in $suites; do is_debian_suite "$s" && debian=1; done
      if ((debian)); then
        read -r -a _c <<<"$comps"
        add=$(missing_components "${_c[*]}")
        if [[ -n $add ]]; then
          l=${stanza[ci]}
          stanza[ci]="${l%"${l##*[![:space:]]}"} $add"
        fi
      fi
    fi
    [[ ${#stanza[@]} -eq 0 ]] || printf '%s\n' "${stanza[@]}"
    stanza=()
  }
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ -z ${line//[[:space:]]/} ]]; then
      flush
      printf '%s\n' "$line"
    else
      stanza+=("$line")
    fi
  done <"$1"
  flush
}

# add_components: edit every apt source file in place (atomically) where needed.
SOURCES_CHANGED=()
add_components() {
  local f
  CODENAME=$(codename)
  local -a files=()
  [[ -f $apt_etc/sources.list ]] && files+=("$apt_etc/sources.list")
  for f in "$apt_etc"/sources.list.d/*.list "$apt_etc"/sources.list.d/*.sources; do
    [[ -f $f ]] && files+=("$f")
  done
  [[ ${#files[@]} -gt 0 ]] || die "no apt sources found in $apt_etc (sources.list or sources.list.d/*.list|*.sources)"
  for f in "${files[@]}"; do
    local mode
    mode=$(stat -c '%a' "$f")
    if [[ $f == *.sources ]]; then
      if edit_deb822 "$f" | write_if_changed "$f" "$mode"; then
        SOURCES_CHANGED+=("$f")
        changed "added ${WANT_COMPONENTS[*]} to $f"
      fi
    elif edit_one_line "$f" | write_if_changed "$f" "$mode"; then
      SOURCES_CHANGED+=("$f")
      changed "added ${WANT_COMPONENTS[*]} to $f"
    fi
  done
}

# check_dri: compare the group of each $DEV_ROOT/dri node with the node's numbers
# (card*: --video-gid, renderD*: --render-gid). Reports only: in a privileged
# container /dev/dri is a bind mount of the NODE's devtmpfs, so a chgrp/chmod
# here would re-group the node's own device nodes. A mismatch means the stack's
# hostGroups value is not the node's number; the warning names the key to set.
# Fills DRI_JSON (one {"path","gid","expected_gid","ok"} object per node) and DRI_OK.
DRI_JSON=()
DRI_OK=true
check_dri() {
  local dri=${DEV_ROOT:-/dev}/dri n name have want key
  DRI_JSON=()
  DRI_OK=true
  if [[ ! -d $dri ]]; then
    warn "$dri does not exist (no GPU passed through yet); skipped the check of its groups"
    return 0
  fi
  step "Groups of $dri (card*: the node's video gid $video_gid, renderD*: its render gid $render_gid; checked, never changed)"
  for n in "$dri"/card* "$dri"/renderD*; do
    [[ -c $n ]] || continue
    name=$(basename "$n")
    want=$video_gid key=video
    [[ $name == renderD* ]] && want=$render_gid key=render
    have=$(stat -L -c '%g' "$n")
    if [[ $have == "$want" ]]; then
      DRI_JSON+=("$(json_obj path "$(json_str "$n")" gid "$have" expected_gid "$want" ok true)")
      continue
    fi
    DRI_OK=false
    DRI_JSON+=("$(json_obj path "$(json_str "$n")" gid "$have" expected_gid "$want" ok false)")
    if [[ $have == 65534 ]]; then
      warn "$n has gid 65534 (nogroup): the node's group is not mapped into this container (an unprivileged container?), so the media user cannot use it through group $want; check the node's number with \`stat -c %g /dev/dri/$name\` on the node and set ${STACK_NS}:hostGroups.$key to it"
    else
      warn "${STACK_NS}:hostGroups.$key is $want but the node's $n has gid $have: set it with $(config_set_hint "hostGroups.$key" "$have") (left as it is: it is the node's own device node)"
    fi
  done
  if [[ ${#DRI_JSON[@]} -eq 0 ]]; then
    warn "$dri has no card*/renderD* device nodes"
  elif [[ $DRI_OK == true ]]; then
    ok "$dri groups match the node's video/render numbers"
  fi
}

# check_gpu: the kernel driver of the render node the pipeline will use, and whether this
# container's VA stack can drive it. Fills GPU_JSON. Reports only: a refused GPU is a warning.
GPU_JSON=""
check_gpu() {
  local node="" choice="" driver="" pci="" usable=null reason="" problem
  step "GPU kernel driver (i915 or xe) of ${render_node:-the auto-chosen render node}"
  if [[ -n $render_node ]]; then
    resolve_render_node "$render_node"
    node=$RES_NODE choice="requested $render_node" reason=$RES_REASON
  else
    auto_render_node
    node=$AUTO_NODE choice=$AUTO_WHY
    [[ -n $node ]] || reason="no render node in ${DEV_ROOT:-/dev}/dri"
  fi
  if [[ -n $reason ]]; then
    node="" choice=""
    warn "$reason"
  else
    driver=$(render_kernel_driver "$node")
    pci=$(render_pci_address "$node")
    if [[ $driver == xe ]] && problem=$(xe_stack_problem) && [[ -n $problem ]]; then
      usable=false reason=$(xe_refusal "$node" "$problem")
      warn "GPU refused: $reason"
    else
      [[ $driver != i915 && $driver != xe ]] || usable=true  # other drivers: only verify-gpu.sh's encode tells
      ok "$node: kernel driver $driver${pci:+, PCI $pci} ($choice)"
    fi
  fi
  GPU_JSON=$(json_obj render_node "$(json_str_or_null "$node")" kernel_driver "$(json_str_or_null "$driver")" \
    pci_address "$(json_str_or_null "$pci")" choice "$(json_str_or_null "$choice")" usable "$usable" \
    reason "$(json_str_or_null "$reason")")
}

if ((gpu_only)); then
  check_gpu
  json_obj gpu "$GPU_JSON"
  echo
  exit 0
fi

if ((sources_only)); then
  step "Adding ${WANT_COMPONENTS[*]} to the Debian apt sources in $apt_etc"
  add_components
  [[ ${#SOURCES_CHANGED[@]} -gt 0 ]] || ok "apt sources already have ${WANT_COMPONENTS[*]}"
  any=false
  [[ ${#SOURCES_CHANGED[@]} -eq 0 ]] || any=true
  json_obj sources_changed "$(json_arr "${SOURCES_CHANGED[@]}")" changed "$any"
  echo
  exit 0
fi

((dri_only)) || [[ -n $user ]] || die "--user is required (see --help)"
[[ -n $video_gid ]] || die "--video-gid is required (the node's video gid, 44 on PVE 8)"
[[ -n $render_gid ]] || die "--render-gid is required (the node's render gid, 104 on PVE 8)"
need_int --video-gid "$video_gid"
need_int --render-gid "$render_gid"

if ((dri_only)); then
  check_dri
  json_obj dri "$(json_raw_arr "${DRI_JSON[@]}")" dri_ok "$DRI_OK" changed false
  echo
  exit 0
fi
need_root

step "Media user"
user_json=$(bash "$(dirname "${BASH_SOURCE[0]}")/ct-media-user.sh" --user "$user" --uid "$uid" --gid "$gid" \
  --groups "video:$video_gid,render:$render_gid")
user_changed=0
[[ $user_json == *'"changed":[]'* ]] || user_changed=1

step "Adding ${WANT_COMPONENTS[*]} to the Debian apt sources"
add_components
[[ ${#SOURCES_CHANGED[@]} -gt 0 ]] || ok "apt sources already have ${WANT_COMPONENTS[*]}"

step "Packages: ${PACKAGES[*]}"
mapfile -t missing < <(apt_missing "${PACKAGES[@]}")
installed=()
if [[ ${#missing[@]} -gt 0 || ${#SOURCES_CHANGED[@]} -gt 0 ]]; then
  step "apt-get update"
  retry 3 10 apt_quiet update || die "apt-get update failed (network, or a broken apt source?)"
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  step "Installing ${missing[*]} (a few minutes)"
  export DEBIAN_FRONTEND=noninteractive
  retry 2 10 apt_quiet install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" ||
    die "apt-get install failed for: ${missing[*]}"
  installed=("${missing[@]}")
  changed "installed ${missing[*]}"
else
  ok "all packages already installed"
fi

check_dri
check_gpu

present=()
for p in "${PACKAGES[@]}"; do
  v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
  present+=("$p${v:+=$v}")
done
any=false
[[ ${#CHANGED[@]} -eq 0 && $user_changed -eq 0 ]] || any=true
json_obj packages "$(json_arr "${present[@]}")" installed "$(json_arr "${installed[@]}")" \
  sources_changed "$(json_arr "${SOURCES_CHANGED[@]}")" dri "$(json_raw_arr "${DRI_JSON[@]}")" dri_ok "$DRI_OK" \
  gpu "$GPU_JSON" user "$user_json" changed "$any"
echo
