#!/usr/bin/env bash
# Users and groups (node and containers). Existing ids are never renumbered.
# Sourced after lib.sh, never run.
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

# parse_group_spec "video:44,render:104": print "name gid" lines; stop on a malformed entry.
parse_group_spec() {
  local spec=$1 item
  [[ -z $spec ]] && return 0
  local -a items
  IFS=, read -r -a items <<<"$spec"
  for item in "${items[@]}"; do
    [[ $item =~ ^([a-z_][a-z0-9_-]{0,31}):([0-9]+)$ ]] ||
      die "--groups entry '$item' is not NAME:GID (example: video:44,render:104,cdrom:24)"
    printf '%s %s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
  done
}


# renumbering re-owns files, so a conflict stops with a message instead.

# group_name_of_gid GID: print the name of the group with that number (empty if none).
group_name_of_gid() { getent group "$1" | cut -d: -f1 || true; }
# gid_of_group NAME: print the number of the named group (empty if none).
gid_of_group() { getent group "$1" | cut -d: -f3 || true; }
# user_name_of_uid UID: print the name of the user with that number (empty if none).
user_name_of_uid() { getent passwd "$1" | cut -d: -f1 || true; }

# free_gid FROM / free_uid FROM: print the first number above FROM that no group / user
# holds here (a suggestion for the stack's media.gid / media.uid).
free_gid() { local n=$(($1 + 1)); while getent group "$n" >/dev/null; do n=$((n + 1)); done; printf '%s' "$n"; }
free_uid() { local n=$(($1 + 1)); while getent passwd "$n" >/dev/null; do n=$((n + 1)); done; printf '%s' "$n"; }

# Conflicts between the stack's media.user/uid/gid and what exists: each message names
# the stack key and the `pulumi config set` command that fixes it.
_die_group_gid() { # NAME HAVE WANT
  die "group '$1' already exists with gid $2, not $3 (${STACK_NS}:media.gid). Renumbering it would leave files owned by the old number; either use its number: $(config_set_hint media.gid "$2"), or renumber it by hand (groupmod -g $3 $1, then fix file ownership)."
}
_die_gid_held() { # NAME GID HOLDER
  die "gid $2 is already used by group '$3', so group '$1' cannot get it (${STACK_NS}:media.gid). Choose a free gid for the media user, e.g. $(config_set_hint media.gid "$(free_gid "$2")") (free here; it must be free on the node and in the containers), or rename that group by hand (groupmod -n $1 $3) if it is meant to be the same group."
}
_die_user_uid() { # NAME HAVE WANT
  die "user '$1' already exists with uid $2, not $3 (${STACK_NS}:media.uid). Files written by the pipeline would get the wrong owner; either use its number: $(config_set_hint media.uid "$2"), or renumber it by hand (usermod -u $3 $1 re-owns its home only)."
}
_die_uid_held() { # NAME UID HOLDER
  die "uid $2 is already used by user '$3', so user '$1' cannot get it (${STACK_NS}:media.uid). Choose a free uid for the media user, e.g. $(config_set_hint media.uid "$(free_uid "$2")") (free here; it must be free on the node and in the containers), or, if '$3' is meant to be the media user, $(config_set_hint media.user "$3"), or remove/renumber '$3' by hand."
}

# check_media_ids NAME UID GID: stop before any change if the uid or gid is held by
# another user/group, or NAME exists with other numbers.
check_media_ids() {
  local name=$1 uid=$2 gid=$3 holder have
  have=$(gid_of_group "$name")
  [[ -z $have || $have == "$gid" ]] || _die_group_gid "$name" "$have" "$gid"
  holder=$(group_name_of_gid "$gid")
  [[ -z $holder || $holder == "$name" ]] || _die_gid_held "$name" "$gid" "$holder"
  have=$(getent passwd "$name" | cut -d: -f3 || true)
  [[ -z $have || $have == "$uid" ]] || _die_user_uid "$name" "$have" "$uid"
  holder=$(user_name_of_uid "$uid")
  [[ -z $holder || $holder == "$name" ]] || _die_uid_held "$name" "$uid" "$holder"
  return 0
}

# ensure_primary_group NAME GID: group NAME with exactly GID, created if missing.
ensure_primary_group() {
  local name=$1 gid=$2 holder have
  have=$(gid_of_group "$name")
  if [[ -n $have ]]; then
    [[ $have == "$gid" ]] || _die_group_gid "$name" "$have" "$gid"
    return 0
  fi
  holder=$(group_name_of_gid "$gid")
  [[ -z $holder ]] || _die_gid_held "$name" "$gid" "$holder"
  groupadd -g "$gid" "$name"
  changed "group $name ($gid) created"
}

# ensure_user NAME UID GID: user NAME with exactly UID, primary group GID, home, bash.
ensure_user() {
  local name=$1 uid=$2 gid=$3 holder have_uid have_gid
  if getent passwd "$name" >/dev/null; then
    have_uid=$(getent passwd "$name" | cut -d: -f3)
    [[ $have_uid == "$uid" ]] || _die_user_uid "$name" "$have_uid" "$uid"
    have_gid=$(getent passwd "$name" | cut -d: -f4)
    if [[ $have_gid != "$gid" ]]; then
      usermod -g "$gid" "$name"
      changed "user $name primary group set to $gid (was $have_gid)"
    fi
    return 0
  fi
  holder=$(user_name_of_uid "$uid")
  [[ -z $holder ]] || _die_uid_held "$name" "$uid" "$holder"
  useradd -u "$uid" -g "$gid" -s /bin/bash -m "$name"
  changed "user $name ($uid) created"
}

# user_in_group USER GROUPNAME: true if USER is listed as a member of GROUPNAME.
user_in_group() {
  local members
  members=$(getent group "$2" | cut -d: -f4)
  [[ ",$members," == *",$1,"* ]]
}

# ensure_device_group USER NAME GID: make USER a member of the group numbered GID
# (the node's number for NAME). Sets DEVICE_GROUP to the name of the group used.
#   - a group with GID exists (any name): use it;
#   - else if NAME is free: create NAME with GID;
#   - else (NAME exists with another number, e.g. render=992 in a container):
#     create NAME-host with GID and leave NAME alone.
ensure_device_group() {
  local user=$1 name=$2 gid=$3 grp primary
  DEVICE_GROUP=""
  grp=$(group_name_of_gid "$gid")
  if [[ -z $grp ]]; then
    if [[ -z $(gid_of_group "$name") ]]; then
      grp=$name
    else
      grp="$name-host"
      [[ -z $(gid_of_group "$grp") ]] || die "group '$name' has gid $(gid_of_group "$name") and '$grp' has gid $(gid_of_group "$grp"), neither is $gid, the node's $name number (${STACK_NS}:hostGroups.$name). If $gid is the node's number (getent group $name, on the node), renumber one by hand: groupmod -g $gid $grp; if the node's number is another, set it: $(config_set_hint "hostGroups.$name" GID) (GID: the node's number)."
    fi
    groupadd -g "$gid" "$grp"
    changed "group $grp ($gid) created for the node's $name group"
  elif [[ $grp != "$name" ]]; then
    ok "gid $gid is group '$grp' here (the node's $name); using it"
  fi
  primary=$(getent passwd "$user" | cut -d: -f4)
  if [[ $primary != "$gid" ]] && ! user_in_group "$user" "$grp"; then
    usermod -a -G "$grp" "$user"
    changed "$user added to $grp ($gid)"
  fi
  DEVICE_GROUP=$grp
}

# setup_media_user USER UID GID GROUP_LINES: the media group, then the user, then membership
# of each device group by the node's number ("name gid" lines); fills GROUP_JSON (one JSON
# object per device group). Shared by the node (host-setup.sh) and containers (ct-media-user.sh).
GROUP_JSON=()
setup_media_user() {
  local user=$1 uid=$2 gid=$3 group_lines=$4 gname ggid
  step "Media group $user ($gid)"
  ensure_primary_group "$user" "$gid"
  step "Media user $user ($uid)"
  ensure_user "$user" "$uid" "$gid"
  GROUP_JSON=()
  [[ -n $group_lines ]] || return 0
  step "Device groups by the node's numbers ($(tr '\n' ' ' <<<"$group_lines" | sed 's/ $//'))"
  while read -r gname ggid; do
    ensure_device_group "$user" "$gname" "$ggid"
    GROUP_JSON+=("$(json_obj name "$(json_str "$gname")" gid "$ggid" group "$(json_str "$DEVICE_GROUP")")")
  done <<<"$group_lines"
}

