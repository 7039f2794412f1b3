#!/usr/bin/env bash
# Read a group's gid from a container template's /etc/group (the container's OS), before the container exists.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'USAGE'
Usage: host-template-group.sh (--volume STORAGE:vztmpl/FILE | --file PATH) [--group render] [--key KEY]
         [--pve-dir /etc/pve]

Runs on the Proxmox node. PVE's devN passthrough (dev0: /dev/dri/renderD128,gid=N) takes a
gid as the container sees it, and the container's /etc/group is the template's when the
container is created. So the gid is read from the template's ./etc/group (tar, zstd/gzip/xz
as the name says), not assumed: Debian 12's template may have no render group at all, and
a package that adds one later takes whatever gid is free (docs/adr/0014).

  --volume VOLID   the template as PVE names it: `pvesm path VOLID` gives the file, or, without
                   pvesm, a dir storage's `path` in PVE_DIR/storage.cfg + /template/cache/FILE
  --file PATH      the template file itself (tests)
  --group NAME     the group (default render)
  --key KEY        the stack key named in errors (default jellyfin.gpu)
  --pve-dir DIR    pmxcfs mount (default /etc/pve)

If the template has the group, its gid is printed ("source":"template"). If not, the gid
`groupadd --system` would give it in that tree is printed ("source":"new": the highest free
gid from 999 down to 100); ct-install-jellyfin.sh --render-gid creates the group with it
before anything else is installed, so the container's group and the device node agree.

stdout: JSON {"group":str,"gid":int,"source":"template"|"new","template":str}
USAGE
}

volume="" file="" group=render key=jellyfin.gpu pve=/etc/pve
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --volume) need_arg "$@"; volume=$2; shift 2 ;;
    --file) need_arg "$@"; file=$2; shift 2 ;;
    --group) need_arg "$@"; need_name --group "$2"; group=$2; shift 2 ;;
    --key) need_arg "$@"; key=$2; shift 2 ;;
    --pve-dir) need_arg "$@"; pve=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $volume || -n $file ]] || die "--volume or --file is required (see --help)"

step "Finding the template"
if [[ -z $file ]]; then
  [[ $volume =~ ^([a-z][a-z0-9_.-]*):vztmpl/([^/]+)$ ]] || die "--volume '$volume' is not STORAGE:vztmpl/FILE"
  storage=${BASH_REMATCH[1]} name=${BASH_REMATCH[2]}
  if command -v pvesm >/dev/null; then
    file=$(pvesm path "$volume") || die "pvesm path $volume failed: is the template downloaded? (MediaHost's template step)"
  else
    # a dir storage's templates are <path>/template/cache/<file> (PVE::Storage::DirPlugin)
    dir=$(awk -v s="$storage" '/^[a-z]+: / { cur = ($2 == s) } cur && $1 == "path" { print $2; exit }' \
      "$pve/storage.cfg" 2>/dev/null || true)
    [[ -n $dir ]] || die "no pvesm here and storage '$storage' has no path in $pve/storage.cfg (homelab-media:template.datastore)"
    file=$dir/template/cache/$name
  fi
fi
[[ -f $file ]] || die "template $file does not exist (homelab-media:template.fileName, on homelab-media:template.datastore)"
ok "$file"

step "Reading /etc/group of the template"
case $file in
  *.tar.zst) decomp=(zstd -dc) ;;
  *.tar.gz) decomp=(gzip -dc) ;;
  *.tar.xz) decomp=(xz -dc) ;;
  *) die "template $file is not .tar.zst, .tar.gz or .tar.xz" ;;
esac
command -v "${decomp[0]}" >/dev/null || die "${decomp[0]} is missing on the node: it is needed to read $file (apt-get install ${decomp[0]})"
# the template's members are ./etc/group (dab) or etc/group
groups_text=$("${decomp[@]}" <"$file" | tar -xOf - './etc/group' 'etc/group' 2>/dev/null || true)
[[ -n $groups_text ]] || die "no /etc/group in template $file: is it a container template? ($key needs the container's $group gid)"

gid=$(awk -F: -v g="$group" '$1 == g { print $3; exit }' <<<"$groups_text")
source=template
if [[ -z $gid ]]; then
  source=new
  # groupadd --system (shadow's SYS_GID_MAX 999 .. SYS_GID_MIN 100): the highest gid no group has
  gid=$(awk -F: '{ used[$3] = 1 } END { for (g = 999; g >= 100; g--) if (!(g in used)) { print g; exit } }' <<<"$groups_text")
  [[ -n $gid ]] || die "no free system gid (100-999) in template $file for a $group group"
  ok "no $group group in the template: the container gets $group with gid $gid"
else
  need_int "$group gid in $file" "$gid"
  ok "$group is gid $gid in the template"
fi

json_obj group "$(json_str "$group")" gid "$gid" source "$(json_str "$source")" template "$(json_str "$file")"
echo
