#!/usr/bin/env bash
# Install the containers' PVE hookscript on the node: a snippet on a storage with snippets content.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"

usage() {
  cat <<'USAGE'
Usage: host-hookscript.sh --storage ID --ct VMID:ROLE [--ct VMID:ROLE ...] --pool DIR
         [--no-require-mount] [--optical-drive auto|ID] [--dir DIR] < extra lines

On the Proxmox node (root):
  1. the storage ID (homelab-media:node.snippetsStorage) must be in
     /etc/pve/storage.cfg with a path and `snippets` among its content types
     (the default `local` has none: pvesm set local --content iso,vztmpl,backup,snippets);
  2. pve-hookscript.sh, pve-lxc-raw.sh and the helpers they source go to DIR
     (default /var/lib/homelab-media/hook), with ct-VMID.conf for each --ct
     (ROLE: gpu, drive or none; the pool and the drive choice) and ct-VMID.extra
     (the lines on stdin given as "VMID lxc.key: value", one per line);
  3. <storage path>/snippets/homelab-media-hook.sh (0755) runs DIR's hook:
     the container's `hookscript: ID:snippets/homelab-media-hook.sh`;
  4. DIR/homelab-media-lxc-hook.sh (0755), the conf's `lxc.hook.pre-start`
     line: LXC runs it at every start, also those PVE makes without its
     hookscript (a reboot from inside the container).
Files are written only when they differ.

stdout: JSON {"volume":"ID:snippets/homelab-media-hook.sh","path","dir","changed":[...]}
Exit 1 (nothing written): an unknown storage, one without a path or without
snippets content, or a bad --ct / extra line.
Environment: PVE_STORAGE_CFG (default /etc/pve/storage.cfg), for tests.
USAGE
}

storage="" pool="" require_mount=1 optical_drive=auto dir=/var/lib/homelab-media/hook
cts=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --storage) need_arg "$@"; storage=$2; shift 2 ;;
    --ct) need_arg "$@"; cts+=("$2"); shift 2 ;;
    --pool) need_arg "$@"; pool=$2; shift 2 ;;
    --no-require-mount) require_mount=0; shift ;;
    --optical-drive) need_arg "$@"; optical_drive=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $storage ]] || die "--storage is required (see --help)"
[[ $storage =~ ^[a-z][a-z0-9_.-]*[a-z0-9]$ ]] || die "--storage '$storage' is not a storage id"
[[ $pool == /* ]] || die "--pool must be an absolute path, got '$pool'"
[[ $dir == /* ]] || die "--dir must be an absolute path, got '$dir'"
[[ ${#cts[@]} -gt 0 ]] || die "at least one --ct VMID:ROLE is required"
for c in "${cts[@]}"; do
  [[ $c =~ ^[0-9]+:(gpu|drive|none)$ ]] || die "--ct '$c' is not VMID:ROLE (ROLE gpu, drive or none)"
done
[[ $optical_drive != *$'\n'* && $optical_drive != *=* ]] || die "--optical-drive '$optical_drive' is not a drive id"
extra=$(cat)

cfg=${PVE_STORAGE_CFG:-/etc/pve/storage.cfg}
step "Finding storage '$storage' in $cfg"
[[ -r $cfg ]] || die "$cfg not found: is this a Proxmox VE node?"
# storage.cfg: "TYPE: ID" opens a block; its indented "key value" lines follow.
read -r stype spath scontent < <(awk -v id="$storage" '
  /^[a-z]+:[[:space:]]/ { inb = ($2 == id); if (inb) type = substr($1, 1, length($1) - 1); next }
  inb && $1 == "path" { path = $2 }
  inb && $1 == "content" { content = $2 }
  END { if (type != "") print type, (path == "" ? "-" : path), (content == "" ? "-" : content) }' "$cfg") || true
[[ -n ${stype:-} ]] || die "storage '$storage' (${STACK_NS}:node.snippetsStorage) is not in $cfg; pick one that \`pvesm status\` lists"
[[ $spath != - ]] || die "storage '$storage' ($stype) has no directory path, so it cannot hold snippets; set ${STACK_NS}:node.snippetsStorage to a directory storage such as local"
if [[ ,$scontent, != *,snippets,* ]]; then
  die "storage '$storage' does not allow snippets (content: $scontent), so PVE would refuse the hookscript. Run on the node: pvesm set $storage --content $scontent,snippets   (or set ${STACK_NS}:node.snippetsStorage to a storage that has snippets)"
fi
ok "$storage ($stype) at $spath allows snippets"

# Extra lines per container, validated before anything is written.
declare -A extra_of=()
n=0
while IFS= read -r line; do
  n=$((n + 1))
  [[ $line =~ ^[[:space:]]*$ ]] && continue
  [[ $line =~ ^([0-9]+)[[:space:]]+(lxc\..*)$ ]] || die "stdin line $n: want 'VMID lxc.key: value', got '$line'"
  extra_of[${BASH_REMATCH[1]}]+="${BASH_REMATCH[2]}"$'\n'
done <<<"$extra"

here=$(dirname "${BASH_SOURCE[0]}")
step "Installing the hookscript in $dir"
mkdir -p "$dir"
chmod 0755 "$dir"
for f in pve-hookscript.sh pve-lxc-raw.sh "$here"/lib*.sh; do
  f=$(basename "$f")
  if write_if_changed "$dir/$f" 0755 <"$here/$f"; then changed "$dir/$f"; fi
done
for c in "${cts[@]}"; do
  vmid=${c%%:*} role=${c#*:}
  if printf 'role=%s\npool=%s\nrequire_mount=%s\noptical_drive=%s\n' "$role" "$pool" "$require_mount" "$optical_drive" |
    write_if_changed "$dir/ct-$vmid.conf" 0644; then changed "$dir/ct-$vmid.conf ($role)"; fi
  if printf '%s' "${extra_of[$vmid]:-}" | write_if_changed "$dir/ct-$vmid.extra" 0644; then changed "$dir/ct-$vmid.extra"; fi
done

# LXC's own pre-start hook (the conf's `lxc.hook.pre-start` line): every start, a reboot from inside too
# shellcheck disable=SC2016 # ${LXC_NAME:-$1} is expanded by the hook at run time, not here
if printf '#!/bin/sh\n# homelab-media: run by LXC at every start (lxc.hook.pre-start; see %s/pve-hookscript.sh --help)\nexec /bin/bash %s/pve-hookscript.sh "${LXC_NAME:-$1}" lxc-pre-start\n' "$dir" "$dir" |
  write_if_changed "$dir/homelab-media-lxc-hook.sh" 0755; then changed "$dir/homelab-media-lxc-hook.sh"; fi

snippets="$spath/snippets"
mkdir -p "$snippets"
hook="$snippets/homelab-media-hook.sh"
if printf '#!/bin/sh\n# homelab-media: the containers'"'"' hookscript (written by host-hookscript.sh; see %s/pve-hookscript.sh --help)\nexec /bin/bash %s/pve-hookscript.sh "$@"\n' "$dir" "$dir" |
  write_if_changed "$hook" 0755; then changed "$hook"; fi
ok "hookscript $storage:snippets/homelab-media-hook.sh ready"

json_obj volume "$(json_str "$storage:snippets/homelab-media-hook.sh")" path "$(json_str "$hook")" \
  dir "$(json_str "$dir")" changed "$(json_arr "${CHANGED[@]}")"
echo
