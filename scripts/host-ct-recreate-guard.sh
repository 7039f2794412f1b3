#!/usr/bin/env bash
# Before any change: refuse a config edit that would make the provider recreate a container (and wipe its disk).
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'USAGE'
Usage: host-ct-recreate-guard.sh --pool PATH --node NAME --marker TEXT
         --ct VMID:KEY:HOSTNAME:DATASTORE:DISK_GB:ALLOW[:MOUNTS] [--ct ...]
         [--mp VMID:mpN:SOURCE:TARGET:RO ...] [--pve-dir DIR]

Runs on the Proxmox node at the start of every `pulumi up` whose container settings changed,
before any container is touched. bpg's provider can change some container settings only by
deleting the container and creating it anew (delete_before_replace: the old one goes first),
which loses its disk: the job database, media-rip's database (the fingerprints that stop a
disc being ripped twice) and MakeMKV's settings. For each existing container this compares
its conf with what the stack now declares and refuses (exit 1), naming the key, when the
change is one of those (bpg's ContainerLegacy schema: ForceNew, or a ForceNewIf):
  - its mount points (mp0: the pool, storage.pool; or, for a container given --mp, exactly
    those mount points: source, target and ro, e.g. Jellyfin's read-only movies and tv)
  - its root disk's storage (KEY.datastore)
  - a smaller root disk (KEY.diskGb; growing it is done in place)
  - its node (proxmox.node): the conf is under another node
  - its vm id (KEY.vmId): this stack's container (description "HOSTNAME: TEXT") has another id
unless ALLOW is 1 (homelab-media:KEY.allowRecreate: true). A container that does not exist yet
passes. Nothing is changed either way.

  --pool PATH     the pool the stack binds into every container (mp0: PATH,mp=PATH)
  --node NAME     the node the stack puts the containers on (proxmox.node)
  --marker TEXT   the text of the program's container descriptions ("HOSTNAME: TEXT")
  --ct SPEC       VMID:KEY:HOSTNAME:DATASTORE:DISK_GB:ALLOW[:MOUNTS], e.g. 201:transcoder:transcoder:local-lvm:20:0;
                  MOUNTS is pool (the default: mp0 is the pool) or none (a container with no mount point)
  --mp SPEC       VMID:mpN:SOURCE:TARGET:RO (RO 0 or 1), one per mount point, e.g.
                  203:mp0:/mnt/storage/movies:/media/movies:1; a container with --mp is compared
                  with these instead of the pool
  --pve-dir DIR   pmxcfs mount (default /etc/pve)

stdout: JSON [{"vmid","key","exists":bool,"recreate":[reasons],"allowed":bool}, ...]
USAGE
}

pool="" pve=/etc/pve node="" marker=""
cts=() mps=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --pool) need_arg "$@"; pool=$2; shift 2 ;;
    --node) need_arg "$@"; node=$2; shift 2 ;;
    --marker) need_arg "$@"; marker=$2; shift 2 ;;
    --ct) need_arg "$@"; cts+=("$2"); shift 2 ;;
    --mp) need_arg "$@"; mps+=("$2"); shift 2 ;;
    --pve-dir) need_arg "$@"; pve=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $pool == /* ]] || die "--pool must be an absolute path (see --help)"
[[ ${#cts[@]} -gt 0 ]] || die "at least one --ct is required (see --help)"
[[ -n $node && -n $marker ]] || die "--node and --marker are required (see --help)"
for m in "${mps[@]}"; do
  [[ $m =~ ^[0-9]+:mp[0-9]+:/[^:]*:/[^:]*:[01]$ ]] || die "--mp '$m' must be VMID:mpN:SOURCE:TARGET:RO (see --help)"
done

# conf_main FILE: the container's own settings (before the first [snapshot] or [pve:pending]).
conf_main() { sed -n '/^\[/q; p' "$1"; }

# bytes SIZE: PVE's disk size (a number with an optional K/M/G/T suffix; bare = bytes) in bytes.
bytes() {
  awk -v s="$1" 'BEGIN {
    if (match(s, /^[0-9]+(\.[0-9]+)?[KMGT]?$/) == 0) { print -1; exit }
    u = substr(s, length(s)); n = s + 0
    if (u == "K") n *= 1024; else if (u == "M") n *= 1024^2; else if (u == "G") n *= 1024^3; else if (u == "T") n *= 1024^4
    printf "%.0f\n", n }'
}

# description FILE: the conf's description (its leading `#` lines, PVE's percent-encoding of ':' and '%' undone).
description() { sed -n '/^\[/q; s/^#//p' "$1" | sed 's/%3A/:/g; s/%25/%/g'; }

# option VALUE NAME: one `name=value` option of a conf value such as `local-lvm:vm-201-disk-0,size=8G`.
option() { tr ',' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1; }

step "Would this up recreate a container?"
results=() refused=()
for spec in "${cts[@]}"; do
  IFS=: read -r vmid key hostname datastore disk allow mounts extra <<<"$spec"
  [[ -z ${extra:-} && -n $key && -n $hostname && -n $datastore ]] ||
    die "--ct '$spec' must be VMID:KEY:HOSTNAME:DATASTORE:DISK_GB:ALLOW[:pool|none]"
  mounts=${mounts:-pool}
  [[ $mounts == pool || $mounts == none ]] || die "--ct '$spec': the mounts field must be pool or none"
  need_int "--ct $spec: VMID" "$vmid"
  need_int "--ct $spec: DISK_GB" "$disk"
  [[ $allow == 0 || $allow == 1 ]] || die "--ct '$spec': ALLOW must be 0 or 1"
  conf=""
  for f in "$pve"/nodes/*/lxc/"$vmid".conf; do
    [[ -f $f ]] && conf=$f && break
  done
  reasons=()
  # this stack's container under another vm id: a new KEY.vmId makes the provider delete it
  for f in "$pve"/nodes/*/lxc/*.conf; do
    [[ -f $f && $f != "$conf" ]] || continue
    if description "$f" | grep -qxF -- "$hostname: $marker"; then
      other=$(basename "$f" .conf)
      reasons+=("$key.vmId: this stack's $hostname is CT $other and the stack now says $vmid: the provider deletes CT $other and creates CT $vmid")
    fi
  done
  if [[ -n $conf ]]; then
    at=${conf#"$pve"/nodes/}
    at=${at%%/*}
    if [[ $at != "$node" ]]; then
      reasons+=("proxmox.node: CT $vmid is on node $at and the stack now says $node: the provider moves it only by recreating it")
    fi
    main=$(conf_main "$conf")
    mp0=$(sed -n 's/^mp0:[[:space:]]*//p' <<<"$main" | head -n 1)
    rootfs=$(sed -n 's/^rootfs:[[:space:]]*//p' <<<"$main" | head -n 1)
    want_mps=()
    for m in "${mps[@]}"; do
      [[ ${m%%:*} == "$vmid" ]] && want_mps+=("${m#*:}")
    done
    if [[ $mounts == none ]]; then
      have_keys=$(sed -n 's/^\(mp[0-9][0-9]*\):.*/\1/p' <<<"$main" | sort | paste -sd' ')
      [[ -z $have_keys ]] ||
        reasons+=("$key: CT $vmid binds $mp0 and the stack now binds nothing: the provider changes a mount point only by recreating the container")
    elif [[ ${#want_mps[@]} -eq 0 ]]; then
      have_src=${mp0%%,*} have_mp=$(option "$mp0" mp)
      if [[ $have_src != "$pool" || $have_mp != "$pool" ]]; then
        reasons+=("storage.pool: CT $vmid binds ${mp0:-nothing} and the stack now binds $pool,mp=$pool: the provider changes a mount point only by recreating the container")
      fi
    else
      # exactly the given mount points: each one's source, target and ro, and no other mpN
      have_keys=$(sed -n 's/^\(mp[0-9][0-9]*\):.*/\1/p' <<<"$main" | sort | paste -sd' ')
      want_keys=$(for w in "${want_mps[@]}"; do echo "${w%%:*}"; done | sort | paste -sd' ')
      [[ $have_keys == "$want_keys" ]] ||
        reasons+=("storage: CT $vmid has mount points '${have_keys}' and the stack now declares '${want_keys}': the provider changes mount points only by recreating the container")
      for w in "${want_mps[@]}"; do
        IFS=: read -r mpk src dst ro <<<"$w"
        have=$(sed -n "s/^$mpk:[[:space:]]*//p" <<<"$main" | head -n 1)
        [[ -n $have ]] || continue
        have_ro=$(option "$have" ro)
        want_ro=""
        [[ $ro == 1 ]] && want_ro=,ro=1
        if [[ ${have%%,*} != "$src" || $(option "$have" mp) != "$dst" || ${have_ro:-0} != "$ro" ]]; then
          reasons+=("storage: CT $vmid's $mpk is $have and the stack now says $src,mp=$dst$want_ro: the provider changes a mount point only by recreating the container")
        fi
      done
    fi
    vol=${rootfs%%,*}
    have_store=${vol%%:*}
    if [[ -n $rootfs && $have_store != "$datastore" ]]; then
      reasons+=("$key.datastore: CT $vmid's root disk is on '$have_store' and the stack now says '$datastore': the provider moves it only by recreating the container")
    fi
    size=$(option "$rootfs" size)
    if [[ -n $size ]]; then
      have=$(bytes "$size")
      want=$(awk -v g="$disk" 'BEGIN { printf "%.0f\n", g * 1024^3 }')
      if [[ $have -gt 0 ]] && awk -v w="$want" -v h="$have" 'BEGIN { exit !(w < h) }'; then
        reasons+=("$key.diskGb: CT $vmid's root disk is $size and the stack now says ${disk}G: a disk cannot shrink, the provider would recreate the container")
      fi
    fi
  fi
  exists=false
  [[ -n $conf ]] && exists=true
  results+=("$(printf '{"vmid":%s,"key":%s,"exists":%s,"recreate":%s,"allowed":%s}' "$vmid" "$(json_str "$key")" \
    "$exists" "$(json_arr "${reasons[@]}")" "$(json_bool "$allow")")")
  if [[ ${#reasons[@]} -eq 0 ]]; then
    ok "CT $vmid ($key): $([[ $exists == true ]] && echo "kept" || echo "not created yet")"
  elif [[ $allow == 1 ]]; then
    warn "CT $vmid ($key) will be recreated, its disk lost ($key.allowRecreate is true): ${reasons[*]}"
  else
    refused+=("${reasons[@]}" "$key: to recreate CT $vmid on purpose, losing its disk (job database, media-rip's database, MakeMKV settings; media on the pool is kept): $(config_set_hint "$key.allowRecreate" true), up, then set it back to false; to keep the container, set the key back")
  fi
done
printf '[%s]\n' "$(IFS=,; echo "${results[*]}")"
if [[ ${#refused[@]} -gt 0 ]]; then
  for line in "${refused[@]}"; do
    printf '✗ %s\n' "$line" >&2
  done
  die "refused: this up would delete and recreate a container (see the lines above). Nothing was changed."
fi
ok "no container would be recreated without allowRecreate"
