#!/usr/bin/env bash
# The lab node's stand-in for systemctl (the node runs no systemd: its init is lab/node-boot.sh).
set -Eeuo pipefail
trap 'echo "lab systemctl: line $LINENO: command failed: $BASH_COMMAND" >&2' ERR

usage() {
  cat <<'USAGE'
Usage: systemctl [--quiet] enable|is-enabled|is-active|restart|start|stop UNIT

The lab node's stand-in, installed as /usr/local/sbin/systemctl by lab/lab-up.sh. A PVE node
runs systemd; the lab's node does not, so a unit that a project script enables on the node
(Debian's prometheus-node-exporter: scripts/host-node-exporter.sh) runs through the sysv script
the same Debian package ships (/etc/init.d/UNIT), as Debian without systemd does. "enabled" is
a marker under /var/lib/lab-systemctl. Any other command or option is refused (exit 2): a script
that needs more from systemd on the node shows up here rather than half-working.
USAGE
}

quiet=false
args=()
for a in "$@"; do
  case $a in
    -q | --quiet) quiet=true ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "lab systemctl: option $a is not emulated (lab/node-systemctl.sh)" >&2; exit 2 ;;
    *) args+=("$a") ;;
  esac
done
[[ ${#args[@]} -eq 2 ]] || { echo "lab systemctl: expected COMMAND UNIT, got: $*" >&2; exit 2; }
cmd=${args[0]} unit=${args[1]%.service}
[[ $unit =~ ^[A-Za-z0-9@._-]+$ ]] || { echo "lab systemctl: bad unit name $unit" >&2; exit 2; }
init=/etc/init.d/$unit
state=/var/lib/lab-systemctl
say() { $quiet || echo "$@"; }

case $cmd in
  enable) [[ -x $init ]] || { echo "lab systemctl: $unit has no $init to run" >&2; exit 1; }
    mkdir -p "$state"; touch "$state/$unit.enabled" ;;
  is-enabled) if [[ -e $state/$unit.enabled ]]; then say enabled; else say disabled; exit 1; fi ;;
  is-active) if [[ -x $init ]] && "$init" status >/dev/null 2>&1; then say active; else say inactive; exit 3; fi ;;
  start | stop) [[ -x $init ]] || { echo "lab systemctl: $unit has no $init to run" >&2; exit 5; }
    "$init" "$cmd" >/dev/null ;;
  # a stop then a start: Debian's init-d-script runs do_start_prepare (mkdir of the pid file's
  # directory under /run) only on start, not on restart
  restart) [[ -x $init ]] || { echo "lab systemctl: $unit has no $init to run" >&2; exit 5; }
    "$init" stop >/dev/null
    "$init" start >/dev/null ;;
  *) echo "lab systemctl: command $cmd is not emulated (lab/node-systemctl.sh)" >&2; exit 2 ;;
esac
