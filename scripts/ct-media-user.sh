#!/usr/bin/env bash
# Inside a container: the media user with the node's uid/gid, in the node's device groups by number.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-users.sh"

usage() {
  cat <<'USAGE'
Usage: ct-media-user.sh --user media --uid 1000 --gid 1000 [--groups video:44,render:104]

Inside a (privileged) container, whose bind-mounted device nodes keep the
node's numeric group ids:
  - group USER with GID (stops if GID belongs to another group);
  - user USER with UID and primary group GID (stops if UID belongs to another user);
  - for each NAME:GID of --groups (the NODE's numbers), USER joins the group
    that has GID here. If no group has GID: a group NAME is created with it, or
    NAME-host when NAME already exists with another number (Debian 13: render
    is 992), so existing groups are never renumbered. If GID belongs to a group
    of another name (Ubuntu 22.04: 104 is _ssh), USER joins that group and the
    JSON says so.
New memberships apply to new logins (su - USER, runuser -u USER).

stdout: JSON {"user","uid","gid","groups":[{"name","gid","group"}],"changed":[str]}
Exit 1 with a message on stderr on a uid/gid conflict or bad arguments.
USAGE
}

user="" uid="" gid="" groups=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --user) need_arg "$@"; user=$2; shift 2 ;;
    --uid) need_arg "$@"; uid=$2; shift 2 ;;
    --gid) need_arg "$@"; gid=$2; shift 2 ;;
    --groups) need_arg "$@"; groups=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for v in user uid gid; do [[ -n ${!v} ]] || die "--$v is required (see --help)"; done
need_name --user "$user"
need_int --uid "$uid"
need_int --gid "$gid"
group_lines=$(parse_group_spec "$groups")
need_root
check_media_ids "$user" "$uid" "$gid"

setup_media_user "$user" "$uid" "$gid" "$group_lines"
[[ ${#CHANGED[@]} -gt 0 ]] || ok "nothing to change"

json_obj user "$(json_str "$user")" uid "$uid" gid "$gid" \
  groups "$(json_raw_arr "${GROUP_JSON[@]}")" changed "$(json_arr "${CHANGED[@]}")"
echo
