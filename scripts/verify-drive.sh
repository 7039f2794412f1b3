#!/usr/bin/env bash
# Prove the optical drive is usable by the media user: sr/sg nodes, MakeMKV's drive list and key state.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-devices.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"

usage() {
  cat <<'USAGE'
Usage: verify-drive.sh --user media [--strict]

Inside the ripper container:
  - the drive's sr (block) and sg (char) nodes (same discovery as host-discover.sh;
    SYSFS_ROOT and DEV_ROOT override /sys and /dev);
  - whether USER can use them (runuser: sr readable, sg readable and writable);
  - `makemkvcon -r --cache=1 info disc:9999` as USER: its DRV lines (the
    drives MakeMKV sees, no disc needed), its version, and the key state:
    expired (beta expired / version too old / evaluation over), valid (an
    app_Key in ~USER/.MakeMKV/settings.conf and no complaint), missing (no key:
    trial), unknown (no makemkvcon, or it did not say).
ok is true when both nodes are usable, MakeMKV lists at least one drive and
the key state is not expired.

  --strict   exit 1 after printing the JSON if ok is false

stdout: JSON {"ok":bool,"sr":str|null,"sg":str|null,"sr_usable":bool,"sg_usable":bool,
              "drives":[{"index","state","flags","name","disc","device"}],
              "makemkv_version":str|null,"key_state":"valid"|"expired"|"missing"|"unknown",
              "reasons":[str]}
USAGE
}

user="" strict=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --user) need_arg "$@"; user=$2; shift 2 ;;
    --strict) strict=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $user ]] || die "--user is required (see --help)"


dev=${DEV_ROOT:-/dev}
reasons=()
user_ok=1
if ! getent passwd "$user" >/dev/null; then
  user_ok=0
  reasons+=("user $user does not exist (run ct-bootstrap-ripper.sh)")
fi

step "Optical drive nodes"
find_optical
sr="" sg="" sr_usable=false sg_usable=false
[[ -z $OPT_SR ]] || sr="$dev/$OPT_SR"
[[ -z $OPT_SG ]] || sg="$dev/$OPT_SG"
[[ -z $OPT_REASON ]] || reasons+=("$OPT_REASON")
if ((user_ok)); then
  if [[ -n $sr ]]; then
    if run_as "$user" test -r "$sr"; then sr_usable=true; else reasons+=("$user cannot read $sr (group $(stat -c '%g' "$sr"), mode $(stat -c '%a' "$sr")): is $user in the node's cdrom group (by number)?"); fi
  fi
  if [[ -n $sg ]]; then
    if run_as "$user" test -r "$sg" && run_as "$user" test -w "$sg"; then sg_usable=true; else reasons+=("$user cannot read and write $sg (group $(stat -c '%g' "$sg"), mode $(stat -c '%a' "$sg")): is $user in the node's cdrom group (by number)?"); fi
  fi
fi
ok "sr=${sr:-none} ($sr_usable) sg=${sg:-none} ($sg_usable)"

step "MakeMKV's view of the drives (makemkvcon info disc:9999 as $user)"
drives=() version="" key_state=unknown
if ! command -v makemkvcon >/dev/null; then
  reasons+=("makemkvcon is not installed (ct-bootstrap-ripper.sh builds it)")
elif ((user_ok)); then
  out=$(run_as "$user" timeout 120 makemkvcon -r --cache=1 info disc:9999 2>&1) || true
  [[ $out =~ MakeMKV\ v([0-9]+\.[0-9]+\.[0-9]+) ]] && version=${BASH_REMATCH[1]}
  while IFS= read -r l; do
    # DRV:index,state,enabled,flags,"drive name","disc name","device"
    if [[ $l =~ ^DRV:([0-9]+),([0-9]+),([0-9]+),([0-9]+),\"(.*)\",\"(.*)\",\"(.*)\"$ ]]; then
      [[ -n ${BASH_REMATCH[5]} || -n ${BASH_REMATCH[7]} ]] || continue
      drives+=("$(json_obj index "${BASH_REMATCH[1]}" state "${BASH_REMATCH[2]}" flags "${BASH_REMATCH[4]}" \
        name "$(json_str "${BASH_REMATCH[5]}")" disc "$(json_str "${BASH_REMATCH[6]}")" device "$(json_str "${BASH_REMATCH[7]}")")")
    fi
  done <<<"$out"
  [[ ${#drives[@]} -gt 0 ]] || reasons+=("makemkvcon lists no drive (are the sr and sg nodes passed through and usable?)")

  home=$(getent passwd "$user" | cut -d: -f6)
  has_key=0
  grep -qE '^[[:space:]]*app_Key[[:space:]]*=[[:space:]]*"[^"]+"' "$home/.MakeMKV/settings.conf" 2>/dev/null && has_key=1
  if [[ $out =~ (MSG:5021|MSG:5052|MSG:5055|MSG:5073|[Vv]ersion\ is\ too\ old|[Ee]valuation\ period\ has\ expired|key\ has\ expired) ]]; then
    key_state=expired
    reasons+=("MakeMKV ${version:-?} refuses to work: beta expired or evaluation over (build a newer pinned version, or set a current key: homelab-media:makemkvKey)")
  elif [[ $out =~ ([Kk]ey\ (is\ )?(incorrect|invalid)) ]]; then
    key_state=unknown
    reasons+=("MakeMKV says the registration key is ${BASH_REMATCH[3]}")
  elif ((has_key)); then
    key_state=valid
  else
    key_state=missing
  fi
  ok "MakeMKV ${version:-?}, ${#drives[@]} drive(s), key $key_state"
fi

ok_json=false
if [[ $sr_usable == true && $sg_usable == true && ${#drives[@]} -gt 0 && $key_state != expired ]]; then
  ok_json=true
else
  warn "drive not proven: ${reasons[*]:-see JSON}"
fi
json_obj ok "$ok_json" sr "$(json_str_or_null "$sr")" sg "$(json_str_or_null "$sg")" \
  sr_usable "$sr_usable" sg_usable "$sg_usable" drives "$(json_raw_arr "${drives[@]}")" \
  makemkv_version "$(json_str_or_null "$version")" key_state "$(json_str "$key_state")" \
  reasons "$(json_arr "${reasons[@]}")"
echo
if ((strict)) && [[ $ok_json != true ]]; then exit 1; fi
exit 0
