#!/usr/bin/env bash
# PVE hookscript of the pipeline's containers: at every start, check the pool and give the container exactly today's devices.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-devices.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-pool.sh"

usage() {
  cat <<'USAGE'
Usage: pve-hookscript.sh VMID PHASE        (run by Proxmox VE: hookscript: in the conf)
       pve-hookscript.sh VMID lxc-pre-start  (run by LXC at every start: homelab-media-lxc-hook.sh)
       pve-hookscript.sh VMID lines          (print the raw lines a start would give VMID now)
       pve-hookscript.sh --help

Installed on the node by host-hookscript.sh, which also writes, next to it,
ct-VMID.conf (role=gpu|drive, pool=DIR, require_mount=0|1, optical_drive=auto|ID)
and ct-VMID.extra (the stack's extraRawLines for that container). PVE runs it
at pre-start, post-start, pre-stop and post-stop; only pre-start does work:

  1. the pool: with require_mount=1, the start is refused (exit 1, one line
     saying why) when the pool is not a mount point, or is a FUSE (mergerfs)
     mount without allow_other (the rules of host-check-pool.sh): a container
     started then would bind the empty directory and write to the root disk;
  2. the devices, resolved now from sysfs and /dev (lib-devices.sh, the rules
     of host-discover.sh and components/render.py): role gpu gets every DRI
     node, role drive the drive chosen by optical_drive (its sr and the sg
     whose SCSI type is 5); plus the extra lines. No drive: no drive lines;
  3. this start uses exactly those lines: PVE has already written
     /var/lib/lxc/VMID/config from the conf, so the raw lines there are
     replaced too (lines the conf had are swapped for today's; other lines of
     that file are left alone);
  4. the conf says the same for the next start: pve-lxc-raw.sh apply
     --caller-holds-lock (PVE holds the container's config lock while the hook
     runs; waiting for it would wait for our own caller).
  What changed is logged (the start's task log). Any failure refuses the start:
  a container never starts with a line for a device it was not meant to get.
  The conf also gets `lxc.hook.pre-start: DIR/homelab-media-lxc-hook.sh`.

lxc-pre-start: LXC runs that line at every start, after PVE's own pre-start
hook (pve-container's lxc-pve.conf is included first; raw lines come last in
the generated config). It covers the start PVE makes without vm_start, and so
without PVE's hookscript: a reboot from inside the container
(lxc-pve-poststop-hook regenerates the config and restarts
pve-container@VMID). It refuses the start (non-zero exit: lxc-start stops)
when the pool fails the rule of 1, or when today's devices differ from the
conf's raw lines (start it from the node, `pct start VMID`, whose pre-start
gives it today's devices). It never edits a file: PVE may hold the lock.

lines: devices + extra lines + the LXC hook line, as pre-start would write them
(pve-ct-raw.sh writes these at deploy, so a deploy never undoes the hook).
Environment: SYSFS_ROOT, DEV_ROOT (fake trees), PVE_CONF_DIR (default
/etc/pve/lxc), LXC_CONF_DIR (default /var/lib/lxc), HOOK_CONF_DIR (default:
this script's directory).
USAGE
}

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
[[ $# -eq 2 ]] || die "usage: pve-hookscript.sh VMID PHASE (see --help)"
vmid=$1 phase=$2
need_int VMID "$vmid"
here=$(dirname "${BASH_SOURCE[0]}")
hook_dir=${HOOK_CONF_DIR:-$here}
conf_dir=${PVE_CONF_DIR:-/etc/pve/lxc}
lxc_dir=${LXC_CONF_DIR:-/var/lib/lxc}

case $phase in
  pre-start | lxc-pre-start | lines) ;;
  post-start | pre-stop | post-stop) exit 0 ;;
  *) warn "CT $vmid: unknown hook phase '$phase', nothing done"; exit 0 ;;
esac

# say LINE: the hook's one line of output. PVE puts a hookscript's stdout and stderr in the start's
# task log; LXC keeps only an lxc.hook's stdout (in its log: "Script exec ... produced output: ...")
# and drops its stderr (seen with Debian's lxc 5.0.2 in the lab, docs/adr/0012), so for LXC it is stdout.
say() {
  if [[ $phase == lxc-pre-start ]]; then printf '%s\n' "$1"; else printf '%s\n' "$1" >&2; fi
}

# refuse REASON: the one line PVE shows for the failed start (LXC: its log and the journal), then exit 1.
refuse() {
  say "homelab-media: CT $vmid not started: $1"
  if [[ $phase == lxc-pre-start ]] && command -v logger >/dev/null; then
    logger -t homelab-media -- "CT $vmid not started: $1" || true
  fi
  exit 1
}
trap 'refuse "the hookscript failed at line $LINENO ($BASH_COMMAND); nothing was changed for this start"' ERR

settings="$hook_dir/ct-$vmid.conf"
[[ -r $settings ]] || refuse "$settings is missing: this container's hookscript settings were not installed (run pulumi up, or remove 'hookscript:' from $conf_dir/$vmid.conf)"
role="" pool="" require_mount=1 optical_drive=auto
while IFS='=' read -r key value; do
  case $key in
    role) role=$value ;;
    pool) pool=$value ;;
    require_mount) require_mount=$value ;;
    optical_drive) optical_drive=$value ;;
    '' | '#'*) ;;
    *) refuse "$settings: unknown setting '$key'" ;;
  esac
done <"$settings"
[[ $role == gpu || $role == drive || $role == none ]] || refuse "$settings: role must be gpu, drive or none, got '$role'"

# 1. The pool (lib-pool.sh: the verdict of host-check-pool.sh and pve-ct-raw.sh too).
if [[ $phase != lines && $require_mount == 1 && -n $pool ]] && ! problem=$(pool_problem "$pool"); then
  trap - ERR
  case $problem in
    not-mounted)
      refuse "the pool $pool is not mounted (the container would bind the empty directory and write to the node's root disk); mount it (mount $pool), then start the container again" ;;
    *)
      refuse "the pool $pool is a ${problem#* } mount without allow_other (the containers' media user could not use it); add allow_other to its options in /etc/fstab, remount, then start the container again" ;;
  esac
fi

# 2. Today's lines.
lines=""
case $role in
  gpu) lines=$(gpu_raw_lines) ;;
  drive)
    lines=$(drive_raw_lines "$optical_drive")
    find_optical "$optical_drive" # OPT_REASON for the log (drive_raw_lines ran in a subshell)
    ;;
esac
extra="$hook_dir/ct-$vmid.extra"
if [[ -s $extra ]]; then
  lines+=${lines:+$'\n'}$(grep -v '^[[:space:]]*$' "$extra" || true)
fi

# the LXC-level guard (installed by host-hookscript.sh beside this script); pve-lxc-raw.sh manages it
hook_line="lxc.hook.pre-start: $(cd "$here" && pwd)/homelab-media-lxc-hook.sh"
if [[ $phase == lines ]]; then
  trap - ERR
  printf '%s\n' "${lines:+$lines}" "$hook_line" | sed '/^$/d'
  exit 0
fi

conf="$conf_dir/$vmid.conf"
[[ -f $conf ]] || refuse "$conf does not exist"
before=$(conf_device_lines "$conf")

if [[ $phase == lxc-pre-start ]]; then
  trap - ERR
  # This start uses the conf's lines (PVE generated the config from it): they must be today's.
  if [[ $(sort <<<"$before" | sed '/^$/d') != "$(sort <<<"$lines" | sed '/^$/d')" ]]; then
    refuse "its devices changed since it was last started by PVE (conf: $(sed '/^$/d' <<<"$before" | paste -sd, -); today: $(sed '/^$/d' <<<"$lines" | paste -sd, -)); start it from the node (pct start $vmid), which gives it today's devices"
  fi
  say "homelab-media: CT $vmid lxc pre-start: pool ok, devices as in the conf"
  exit 0
fi

# 3. This start: swap the conf's old raw lines for today's in the config PVE generated.
gen="$lxc_dir/$vmid/config"
if [[ -f $gen ]]; then
  tmp="$gen.homelab.$$"
  LINES_OLD=$before LINES_NEW=$lines awk '
    function norm(s) { gsub(/[[:space:]]+/, " ", s); sub(/^ /, "", s); sub(/ $/, "", s); return s }
    BEGIN {
      n = split(ENVIRON["LINES_OLD"], o, "\n")
      for (i = 1; i <= n; i++) if (o[i] != "") old[o[i]] = 1
    }
    /^lxc\.(cgroup2\.devices\.allow|mount\.entry)[[:space:]]*[=:]/ {
      k = $0; sub(/[[:space:]]*[=:].*/, "", k); v = $0; sub(/^[^=:]*[=:][[:space:]]*/, "", v)
      if ((k ": " norm(v)) in old) next
    }
    { print }
    END {
      m = split(ENVIRON["LINES_NEW"], w, "\n")
      for (i = 1; i <= m; i++) if (w[i] != "") { k = w[i]; sub(/:.*/, "", k); v = w[i]; sub(/^[^:]*: /, "", v); print k " = " v }
    }' "$gen" >"$tmp"
  chmod --reference="$gen" "$tmp" 2>/dev/null || true
  mv -f "$tmp" "$gen"
else
  warn "CT $vmid: $gen does not exist (not started by PVE?); only the conf is updated"
fi

# 4. The next start: the conf (we run inside PVE's config lock).
err=$(mktemp)
if ! result=$(printf '%s\n' "$lines" "$hook_line" | bash "$here/pve-lxc-raw.sh" apply "$conf" --caller-holds-lock 2>"$err" | tail -n1) ||
  [[ $result != changed && $result != unchanged ]]; then
  why=$(sed -n 's/^ *✗ //p' "$err" | tail -n1)
  rm -f "$err"
  refuse "pve-lxc-raw.sh could not update $conf: ${why:-no reason given}"
fi
rm -f "$err"
trap - ERR

# The log: what changed, in one or two lines.
removed=$(comm -23 <(sort <<<"$before") <(sort <<<"$lines") | sed '/^$/d' | sed 's/^lxc\.cgroup2\.devices\.allow: /allow /; s/^lxc\.mount\.entry: /mount /' | paste -sd, -)
added=$(comm -13 <(sort <<<"$before") <(sort <<<"$lines") | sed '/^$/d' | sed 's/^lxc\.cgroup2\.devices\.allow: /allow /; s/^lxc\.mount\.entry: /mount /' | paste -sd, -)
what="$role devices"
[[ $role != drive ]] || what="drive ($optical_drive): ${OPT_SR:-no sr}/${OPT_SG:-no sg}${OPT_REASON:+ ($OPT_REASON)}"
if [[ -z $removed && -z $added ]]; then
  printf 'homelab-media: CT %s pre-start: pool ok, %s unchanged (%s raw lines)\n' "$vmid" "$what" "$(sed '/^$/d' <<<"$lines" | wc -l)" >&2
else
  printf 'homelab-media: CT %s pre-start: pool ok, %s; raw lines changed: removed [%s] added [%s]\n' "$vmid" "$what" "$removed" "$added" >&2
fi
exit 0
