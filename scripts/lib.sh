#!/usr/bin/env bash
# Shared helpers for every script in scripts/: progress lines, errors, retries.
# Sourced, never run. Progress goes to stderr so stdout stays machine-readable.

# shellcheck disable=SC2034  # SCRIPT_NAME is read by the scripts that source this
SCRIPT_NAME=$(basename "${0:-script}")

_on_err() {
  local rc=$? line=$1 cmd=$2
  printf '✗ %s: line %s: command failed (exit %s): %s\n' "$SCRIPT_NAME" "$line" "$rc" "$cmd" >&2
  exit "$rc"
}
trap '_on_err "$LINENO" "$BASH_COMMAND"' ERR

# step "Installing X": one progress line per step.
step() { printf '==> %s\n' "$*" >&2; }
# ok "Installed X": the step finished.
ok() { printf ' ✓ %s\n' "$*" >&2; }
# warn "text": something worth a look that does not stop the run.
warn() { printf ' ! %s\n' "$*" >&2; }
# die "message": stop with a clear message and exit 1 (or $2).
die() { printf '✗ %s: %s\n' "$SCRIPT_NAME" "$1" >&2; exit "${2:-1}"; }

# retry N DELAY cmd...: run cmd up to N times, sleeping DELAY seconds between tries.
retry() {
  local n=$1 delay=$2 i
  shift 2
  for ((i = 1; i <= n; i++)); do
    if "$@"; then return 0; fi
    [[ $i -lt $n ]] && sleep "$delay"
  done
  return 1
}

# quiet cmd...: run a noisy command; show its output tail only when it fails.
quiet() {
  local log rc=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || rc=$?
  if [[ $rc -ne 0 && -z ${VERBOSE:-} ]]; then
    tail -n 30 "$log" >&2
  elif [[ -n ${VERBOSE:-} ]]; then
    cat "$log" >&2
  fi
  rm -f "$log"
  return "$rc"
}

# need_root: stop unless running as root.
need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $SCRIPT_NAME)"; }

# ---------------------------------------------------------------------------
# JSON output (pure bash: containers may have neither python3 nor jq yet).

# json_str "text": print text as a JSON string literal.
json_str() {
  local s=$1 out="" c i
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  if [[ $s == *[$'\001'-$'\037']* ]]; then
    for ((i = 0; i < ${#s}; i++)); do
      c=${s:i:1}
      if [[ $c == [$'\001'-$'\037'] ]]; then
        printf -v c '\\u%04x' "'$c"
      fi
      out+=$c
    done
    s=$out
  fi
  printf '"%s"' "$s"
}

# json_str_or_null "text": a JSON string, or null when text is empty.
json_str_or_null() { if [[ -n $1 ]]; then json_str "$1"; else printf 'null'; fi; }

# json_int_or_null "n": the number, or null when n is not a decimal integer.
json_int_or_null() { if [[ $1 =~ ^[0-9]+$ ]]; then printf '%s' "$((10#$1))"; else printf 'null'; fi; }

# json_bool "true|false|1|0|yes|no": a JSON boolean.
json_bool() { case ${1,,} in true | 1 | yes) printf 'true' ;; *) printf 'false' ;; esac; }

# json_arr "a" "b" ...: a JSON array of strings.
json_arr() {
  local first=1 x
  printf '['
  for x in "$@"; do
    ((first)) || printf ','
    first=0
    json_str "$x"
  done
  printf ']'
}

# json_raw_arr '{"a":1}' '2' ...: a JSON array of values that are already JSON.
json_raw_arr() {
  local IFS=,
  printf '[%s]' "$*"
}

# json_obj key value key value ...: a JSON object; values must already be JSON.
json_obj() {
  local first=1
  printf '{'
  while [[ $# -ge 2 ]]; do
    ((first)) || printf ','
    first=0
    json_str "$1"
    printf ':%s' "$2"
    shift 2
  done
  printf '}'
}

# ---------------------------------------------------------------------------
# Stack configuration: messages name the key a user sets to fix a mismatch.

# shellcheck disable=SC2034  # STACK_NS is read by the scripts that source this
STACK_NS=homelab-media
# config_set_hint KEY VALUE: print the command that sets homelab-media:KEY, in backquotes.
config_set_hint() { printf "\`pulumi config set --path %s:%s %s\`" "$STACK_NS" "$1" "$2"; }

# ---------------------------------------------------------------------------
# Arguments.

# need_arg FLAG VALUE: stop unless a flag that takes a value got one.
need_arg() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"; }

# need_int NAME VALUE: stop unless VALUE is a decimal number (uid, gid, vmid...).
need_int() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a number, got '$2'"; }

# need_name NAME VALUE: stop unless VALUE is a valid user/group name.
need_name() { [[ $2 =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "$1 must be a user/group name (lowercase, digits, '_' or '-'), got '$2'"; }

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

# ---------------------------------------------------------------------------
# Changes made by a script, for its "changed" output.

CHANGED=()
# changed "what": record one change (and log it).
changed() {
  CHANGED+=("$1")
  ok "$1"
}

# ---------------------------------------------------------------------------
# Users and groups (host and containers). Existing ids are never renumbered:
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

# ---------------------------------------------------------------------------
# Devices. SYSFS_ROOT and DEV_ROOT let tests point these at fake trees.

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

# ---------------------------------------------------------------------------
# Files.

# write_if_changed FILE MODE: replace FILE with stdin atomically (temp file in the
# same directory, then rename) only if the content differs. Returns 0 if written,
# 1 if unchanged.
write_if_changed() {
  local file=$1 mode=$2 tmp
  tmp=$(mktemp "$(dirname "$file")/.$(basename "$file").XXXXXX")
  cat >"$tmp"
  if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 1
  fi
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$file"
  return 0
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

# run_as USER CMD...: run CMD as USER with a fresh group list (as is, if we are USER).
run_as() {
  local user=$1
  shift
  if [[ $(id -un) == "$user" ]]; then
    "$@"
  else
    runuser -u "$user" -- "$@"
  fi
}
