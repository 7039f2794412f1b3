#!/bin/bash
# The lab node's stand-in for `systemctl start pve-container@VMID`: lxc-start -F, until RUNNING.
set -Eeuo pipefail
trap 'echo "lab-lxc-start: failed at line $LINENO" >&2' ERR

usage() {
  cat <<'USAGE'
Usage: lab-lxc-start VMID [--timeout SECONDS]

Installed as /usr/local/sbin/lab-lxc-start in the lab node by lab/lab-up.sh; the lab's API
(lab/pve-lab.py) runs it in the node once /var/lib/lxc/VMID/config is written and the
hookscript's pre-start passed. As PVE's pve-container@.service does, it runs
`lxc-start -F -n VMID` (Debian's LXC, reading that config: hooks, mounts, device rules,
ID maps), in the background, with its output in /var/log/lxc/VMID.out (the journal of a
real node) and LXC's log in /var/log/lxc/VMID.log (level DEBUG: the level at which LXC
logs what a hook printed). It waits until LXC says RUNNING, prints what the hooks said and
that output so far and, last, the container init's pid (in the
node's PID namespace).
If lxc-start ends first (a hook failed, a mount entry or config line was refused), it
prints LXC's ERROR lines and the output (a hook's messages), and exits 1: the container
stays stopped. Empty cgroups of an earlier failed start are removed first (LXC refuses to
start when lxc.monitor/VMID is left over).
USAGE
}

timeout=60
vmid=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --timeout) timeout=$2; shift 2 ;;
    *) vmid=$1; shift ;;
  esac
done
[[ $vmid =~ ^[0-9]+$ ]] || { echo "needs a VMID (see --help)" >&2; exit 2; }
[[ -f /var/lib/lxc/$vmid/config ]] || { echo "no /var/lib/lxc/$vmid/config" >&2; exit 1; }
state=$(lxc-info -n "$vmid" -s -H 2>/dev/null || true)
if [[ $state == RUNNING ]]; then
  lxc-info -n "$vmid" -p -H
  exit 0
fi
for d in "/sys/fs/cgroup/lxc/$vmid" "/sys/fs/cgroup/lxc.monitor/$vmid"; do
  [[ -d $d ]] || continue
  # a monitor that is still running the post-stop hooks of the last stop: give it time
  for _ in $(seq 200); do
    grep -q '^populated 1' "$d/cgroup.events" || break
    sleep 0.05
  done
  if grep -q '^populated 1' "$d/cgroup.events"; then
    echo "processes of container $vmid are still running in $d" >&2
    exit 1
  fi
  find "$d" -depth -type d -exec rmdir {} +
done
log=/var/log/lxc/$vmid.log
out=/var/log/lxc/$vmid.out
mkdir -p /var/log/lxc
: >"$log"
: >"$out"
rm -f "/var/lib/lxc/$vmid/reboot"
# hook_output: what the hooks printed; LXC logs a hook's stdout at DEBUG (and drops its stderr)
hook_output() { sed -n 's/^.* produced output: //p' "$log"; }
setsid lxc-start -F -n "$vmid" -o "$log" -l DEBUG >"$out" 2>&1 </dev/null &
lxc=$!
deadline=$((SECONDS + timeout))
while ((SECONDS < deadline)); do
  if ! kill -0 "$lxc" 2>/dev/null; then
    rc=0
    wait "$lxc" || rc=$?
    echo "lxc-start -F -n $vmid ended (exit code $rc):" >&2
    hook_output >&2
    grep -E ' (ERROR|CRIT|FATAL) ' "$log" | sed -E 's/^.* (ERROR|CRIT|FATAL) +//' >&2 || true
    grep -v '^$' "$out" >&2 || true
    exit 1
  fi
  if [[ $(lxc-info -n "$vmid" -s -H 2>/dev/null || true) == RUNNING ]]; then
    hook_output
    grep -v '^$' "$out" || true
    lxc-info -n "$vmid" -p -H
    exit 0
  fi
  sleep 0.05
done
echo "container $vmid did not reach RUNNING in ${timeout}s; see $log" >&2
exit 1
