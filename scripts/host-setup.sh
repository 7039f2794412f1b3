#!/usr/bin/env bash
# Create the media user and group on the node, and the pipeline's directories on the pool.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-users.sh"

usage() {
  cat <<'USAGE'
Usage: host-setup.sh --user media --uid 1000 --gid 1000 \
         --groups video:44,render:104,cdrom:24 --pool /mnt/storage --dirs staging,movies,tv

On the Proxmox node:
  - group USER with GID (groupadd first; stops if GID belongs to another group);
  - user USER with UID, primary group GID (stops if UID belongs to another user);
  - USER in the node's device groups BY NUMBER: for NAME:GID, the group that
    has GID (whatever its name); if none, a group NAME (or NAME-host when NAME
    already exists with another number) is created with GID;
  - POOL/DIR for each of --dirs: created if missing; owner USER:USER and mode
    2775 (setgid) set only when wrong. Only those directories themselves are
    touched: nothing inside them, nothing else in the pool, never recursively.

stdout: JSON {"user","uid","gid","groups":[{"name","gid","group"}],"dirs":[path],"changed":[str]}
        ("group" is the group actually holding that gid; "changed" is [] when nothing changed)
Exit 1 with a message on stderr on a uid/gid conflict or bad arguments.
USAGE
}

user="" uid="" gid="" groups="" pool="" dirs=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --user) need_arg "$@"; user=$2; shift 2 ;;
    --uid) need_arg "$@"; uid=$2; shift 2 ;;
    --gid) need_arg "$@"; gid=$2; shift 2 ;;
    --groups) need_arg "$@"; groups=$2; shift 2 ;;
    --pool) need_arg "$@"; pool=$2; shift 2 ;;
    --dirs) need_arg "$@"; dirs=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for v in user uid gid pool dirs; do [[ -n ${!v} ]] || die "--$v is required (see --help)"; done
need_name --user "$user"
need_int --uid "$uid"
need_int --gid "$gid"
[[ $pool == /* && $pool != / ]] || die "--pool must be an absolute path below /, got '$pool'"
pool=${pool%/}
group_lines=$(parse_group_spec "$groups")
IFS=, read -r -a dir_list <<<"$dirs"
for d in "${dir_list[@]}"; do
  [[ -n $d && $d != /* && /$d/ != */../* && /$d/ != */./* ]] || die "--dirs entry '$d' must be a relative directory under the pool (like staging or media/staging)"
done
need_root
check_media_ids "$user" "$uid" "$gid"

setup_media_user "$user" "$uid" "$gid" "$group_lines"

step "Pipeline directories under $pool"
[[ -d $pool ]] || die "$pool does not exist; mount the pool first (see host-check-pool.sh)"
paths=()
for d in "${dir_list[@]}"; do
  path="$pool/${d%/}"
  paths+=("$path")
  if [[ ! -e $path ]]; then
    mkdir -p "$path"
    changed "dir $path created"
  elif [[ ! -d $path ]]; then
    die "$path exists but is not a directory; move it away and re-run"
  fi
  # Only the directory itself (-maxdepth 0): never walk the pool or re-own media files.
  if [[ -n $(find "$path" -maxdepth 0 \( ! -user "$uid" -o ! -group "$gid" \) -print) ]]; then
    chown "$uid:$gid" "$path"
    changed "dir $path owner set to $user:$user ($uid:$gid)"
  fi
  if [[ $(stat -c '%a' "$path") != 2775 ]]; then
    chmod 2775 "$path"
    changed "dir $path mode set to 2775"
  fi
done
[[ ${#CHANGED[@]} -gt 0 ]] || ok "nothing to change"

json_obj user "$(json_str "$user")" uid "$uid" gid "$gid" \
  groups "$(json_raw_arr "${GROUP_JSON[@]}")" dirs "$(json_arr "${paths[@]}")" \
  changed "$(json_arr "${CHANGED[@]}")"
echo
