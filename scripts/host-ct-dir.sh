#!/usr/bin/env bash
# On the node: a folder on the pool that belongs to an unprivileged container's root (its idmap).
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'USAGE'
Usage: host-ct-dir.sh --pool DIR --dir SUBDIR [--owner UID:GID] [--mode MODE]

Makes POOL/SUBDIR (e.g. the queue's backups/queue) for an unprivileged container that bind-mounts
it: owner UID:GID (default 100000:100000, the container's root under PVE's default idmap
root:100000:65536) and MODE (default 0750), set only on that folder and only when wrong; its
parents are made as root when missing. Nothing inside it, nothing else in the pool, never
recursively: the folder holds only what the container writes (its dumps), never media. Stops
if SUBDIR is one of the pool's media folders given with --not (staging, movies, tv).
Stdout: {"path","owner","mode","changed":bool}.

  --pool DIR       the pool (storage.pool), which must exist
  --dir SUBDIR     the folder, relative to the pool (queue.backupDir)
  --owner UID:GID  numeric owner (default 100000:100000)
  --mode MODE      octal mode (default 0750)
  --not SUBDIR     refuse SUBDIR when it is this folder, inside it or holds it (repeatable)
USAGE
}

pool="" dir="" owner=100000:100000 mode=0750 nots=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --pool) need_arg "$@"; pool=${2%/}; shift 2 ;;
    --dir) need_arg "$@"; dir=${2%/}; shift 2 ;;
    --owner) need_arg "$@"; owner=$2; shift 2 ;;
    --mode) need_arg "$@"; mode=$2; shift 2 ;;
    --not) need_arg "$@"; nots+=("${2%/}"); shift 2 ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
[[ $pool == /* && $pool != / ]] || die "--pool must be an absolute path below / (got '$pool')" 2
[[ -n $dir && $dir != /* && /$dir/ != */../* && /$dir/ != */./* ]] || die "--dir must be a relative folder under the pool (got '$dir')" 2
[[ $owner =~ ^[0-9]+:[0-9]+$ ]] || die "--owner must be UID:GID in numbers (got '$owner')" 2
[[ $mode =~ ^0?[0-7]{3}$ ]] || die "--mode must be octal such as 0750 (got '$mode')" 2
for n in "${nots[@]}"; do
  if [[ $dir == "$n" || $dir == "$n"/* || $n == "$dir"/* ]]; then
    die "$dir overlaps the pool's media folder $n: give the container its own folder (e.g. backups/queue)" 2
  fi
done
need_root
[[ -d $pool ]] || die "$pool does not exist; mount the pool first (see host-check-pool.sh)"

path=$pool/$dir
step "$path for the container (owner $owner, mode $mode)"
changed=false
if [[ ! -d $path ]]; then
  mkdir -p "$path"
  changed=true
fi
if [[ $(stat -c %u:%g "$path") != "$owner" ]]; then
  chown "$owner" "$path" # this folder only: never -R
  changed=true
fi
if [[ $(stat -c %a "$path") != "${mode#0}" ]]; then
  chmod "$mode" "$path"
  changed=true
fi
if $changed; then ok "made or corrected"; else ok "unchanged"; fi
json_obj path "$(json_str "$path")" owner "$(json_str "$owner")" mode "$(json_str "$mode")" changed "$(json_bool "$changed")"
echo
