#!/usr/bin/env bash
# Apply raw device lines to a container's config once PVE has released it; reboot it if needed.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-pool.sh"

usage() {
  cat <<'USAGE'
Usage: pve-ct-raw.sh --vmid N [--timeout SECONDS] [--require-mount PATH] [--hook-dir DIR] < lines

Waits until /etc/pve/lxc/N.conf exists and its main section has no `lock:` line
(PVE rewrites the file while a create/clone/restore lock is held), then runs
`pve-lxc-raw.sh apply` on it with the lines from stdin (see pve-lxc-raw.sh help).
If the config changed and the container is running, `pct reboot N` makes the
new lines take effect (raw lxc lines are read only at container start), but
only when its device lines changed: the LXC hook line alone waits for the
next start.

  --vmid N           container id
  --timeout SECONDS  how long to wait for the config and its lock (default 120)
  --require-mount PATH
                     before rebooting the container (and only then), refuse if
                     PATH (the storage pool) is not a mount point: a container
                     started over an unmounted pool bind-mounts the empty
                     directory and writes to the node's root disk. The refusal
                     happens before the config is written, so a later run (pool
                     mounted) still sees the change and reboots.
  --hook-dir DIR     the containers' hookscript (host-hookscript.sh --dir). When
                     DIR has this container's settings, the lines written are
                     the ones its pre-start would write now (pve-hookscript.sh
                     VMID lines: today's devices), not stdin's, which come from
                     the deploy's last discovery: so a re-run never reboots a
                     container for lines its next start would undo.
Environment: PVE_CONF_DIR (default /etc/pve/lxc), for tests and the lab.

stdout: last line is `changed` or `unchanged`.
Exit 1: bad arguments or lines (config untouched), the wait timed out, or a
reboot was needed while the --require-mount path was not mounted (config
untouched, nothing rebooted).
USAGE
}

vmid=""
timeout=120
require_mount=""
hook_dir=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --vmid) need_arg "$@"; vmid=$2; shift 2 ;;
    --timeout) need_arg "$@"; timeout=$2; shift 2 ;;
    --require-mount) need_arg "$@"; require_mount=$2; shift 2 ;;
    --hook-dir) need_arg "$@"; hook_dir=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $vmid ]] || die "--vmid is required (see --help)"
need_int --vmid "$vmid"
need_int --timeout "$timeout"
if [[ -n $require_mount ]]; then
  [[ $require_mount == /* ]] || die "--require-mount must be an absolute path, got '$require_mount'"
  command -v findmnt >/dev/null || die "findmnt not found (apt-get install util-linux)"
fi

conf_dir=${PVE_CONF_DIR:-/etc/pve/lxc}
conf="$conf_dir/$vmid.conf"
lines=$(cat)

if [[ -n $hook_dir && -f $hook_dir/ct-$vmid.conf && -f $hook_dir/pve-hookscript.sh ]]; then
  step "Asking the hookscript which lines a start of $vmid would give it now"
  today=$(bash "$hook_dir/pve-hookscript.sh" "$vmid" lines) ||
    die "$hook_dir/pve-hookscript.sh $vmid lines failed (see above); nothing was changed"
  if [[ $(sed '/^$/d' <<<"$today") != "$(sed '/^$/d' <<<"$lines")" ]]; then
    warn "today's devices differ from the stack's last discovery: writing today's (what every start gives it); bump devices.rediscover to see them in the outputs"
  fi
  lines=$today
  ok "$(sed '/^$/d' <<<"$lines" | wc -l) line(s) from the hookscript"
fi

# main_lock CONF: print the lock of the main section (empty if none).
main_lock() {
  awk '/^\[/ { exit } /^lock:/ { sub(/^lock:[[:space:]]*/, ""); print; exit }' "$1"
}

step "Waiting for $conf to exist without a lock (up to ${timeout}s)"
deadline=$((SECONDS + timeout))
lock=""
while :; do
  if [[ -f $conf ]]; then
    lock=$(main_lock "$conf")
    [[ -z $lock ]] && break
  fi
  if ((SECONDS > deadline)); then  # SECONDS ticks with the clock: > waits the full timeout
    if [[ -f $conf ]]; then
      die "$conf is still locked ('lock: $lock') after ${timeout}s; PVE is still working on container $vmid (see its task log). If no task is running, clear a stale lock with: pct unlock $vmid"
    fi
    die "$conf did not appear within ${timeout}s: container $vmid does not exist on this node (check the vmid, and that this is the node it was created on)"
  fi
  sleep 1
done
ok "$conf is ready"

lxc_raw="$(dirname "${BASH_SOURCE[0]}")/pve-lxc-raw.sh"

# device_lines CONF: the main section's device lines (what a reboot is for), sorted.
device_lines() { conf_device_lines "$1" | sort; }

# would_change: true if applying the lines would change the config's device lines (tried on
# a copy under a non-numeric name, so PVE's config lock is not taken for it).
would_change() {
  local d rc=0 changed=1
  d=$(mktemp -d)
  cp "$conf" "$d/dry-run.conf"
  bash "$lxc_raw" apply "$d/dry-run.conf" <<<"$lines" >/dev/null 2>&1 || rc=$?
  [[ $(device_lines "$d/dry-run.conf") != "$(device_lines "$conf")" ]] || changed=0
  rm -rf "$d"
  # bad lines: let the real apply below report them
  [[ $rc -eq 0 && $changed -eq 1 ]]
}

# A reboot would follow a change of a running container: refuse it before
# writing anything if the pool is not mounted (so the next run still reboots).
if [[ -n $require_mount ]] && ! problem=$(pool_problem "$require_mount"); then
  status=$(pct status "$vmid" 2>/dev/null || true)
  if [[ $status == *running* ]] && would_change; then
    case $problem in
      not-mounted)
        why="$require_mount is not a mount point (the storage pool is not mounted), so after a reboot the container's bind mount would show the empty directory and files would land on the node's root disk. Mount the pool (mount $require_mount" ;;
      *)
        why="$require_mount is a ${problem#* } mount without allow_other, so after a reboot its hookscript would refuse the start (the containers' media user could not use the pool). Add allow_other to its options in /etc/fstab and remount it (umount $require_mount && mount $require_mount" ;;
    esac
    die "refusing to reboot container $vmid: $why; check it with: host-check-pool.sh --pool $require_mount), then run this again. $conf was not changed and container $vmid was not rebooted."
  fi
fi

step "Applying ${vmid}'s raw lxc lines"
devices_before=$(device_lines "$conf")
out=$(bash "$lxc_raw" apply "$conf" <<<"$lines")
result=$(tail -n1 <<<"$out")
[[ $result == changed || $result == unchanged ]] || die "pve-lxc-raw.sh printed '$result', expected changed/unchanged"
ok "raw lines $result"

if [[ $result == changed && $(device_lines "$conf") == "$devices_before" ]]; then
  ok "container $vmid's device lines are as they were: no reboot (the rest applies at its next start)"
elif [[ $result == changed ]]; then
  status=$(pct status "$vmid" 2>/dev/null || true)
  if [[ $status == *running* ]]; then
    step "Rebooting container $vmid so the new device lines take effect"
    pct reboot "$vmid" >&2
    ok "container $vmid rebooted"
  else
    ok "container $vmid is not running (${status:-status unknown}); the lines apply at its next start"
  fi
fi
echo "$result"
