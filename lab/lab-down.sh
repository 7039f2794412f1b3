#!/usr/bin/env bash
# Stop the local lab and remove everything it made under .lab/ (the cached Debian trees stay).
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
  cat <<'USAGE'
Usage: lab/lab-down.sh [--keep]

Stops the lab's processes: everything in the lab's cgroup at once (cgroup.kill: the
node's init and sshd, sessions, pct, LXC's monitors and containers, slirp4netns), then
fakepve and anything else the pid files or the node's mount namespace name; removes the
lab's cgroups; makes sure nothing is mounted under
.lab/ (unmounting recursively if something is, and verifying), keeps apt's
downloaded packages in the shared cache, then removes .lab/. Safe to run twice.
The cached Debian trees (~/.cache/homelab-media) and the Pulumi state
(.pulumi-state/) are kept.
  --keep   stop everything but keep .lab/ (to look at logs and trees)
Environment: LAB_DIR (default .lab), LAB_APT_CACHE (default ~/.cache/homelab-media/apt-archives).
USAGE
}

keep=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --keep) keep=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
need_root

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)
lab=${LAB_DIR:-$project/.lab}
apt_cache=${LAB_APT_CACHE:-$HOME/.cache/homelab-media/apt-archives}

# restore_stack_file: lab-up.sh wrote the lab's secrets (encrypted with the lab's passphrase) into
# Pulumi.lab.yaml when the engine could use them, and marked the file skip-worktree: take them
# out again and clear the flag, so the committed file is as it was (also when .lab is gone).
restore_stack_file() {
  local stack_file=$project/Pulumi.lab.yaml
  if [[ -f $stack_file ]] && grep -qE '^encryptionsalt:|^ +secure:' "$stack_file"; then
    step "Removing the lab's secrets from Pulumi.lab.yaml"
    python3 - "$stack_file" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"^encryptionsalt: .*\n", "", text, flags=re.M)
text = re.sub(r"^  homelab-media:[A-Za-z]+:\n    secure: .*\n", "", text, flags=re.M)
open(path, "w").write(text)
PY
    ok "Pulumi.lab.yaml without secrets"
  fi
  if git -C "$project" ls-files -v Pulumi.lab.yaml 2>/dev/null | grep -q '^S '; then
    git -C "$project" update-index --no-skip-worktree Pulumi.lab.yaml
    ok "Pulumi.lab.yaml tracked by git again (lab-up.sh had set skip-worktree)"
  fi
}

if [[ ! -e $lab ]]; then
  restore_stack_file
  ok "no lab at $lab; nothing to do"
  exit 0
fi
lab=$(realpath "$lab")
if [[ $lab == / || ( -z ${LAB_DIR:-} && ${lab##*/} != .lab ) ]]; then
  die "refusing to remove $lab: not a .lab directory"
fi
node=$lab/node

# lab_pids: processes that belong to the lab: the recorded ones, every process in the node's
# mount namespace (sessions, pct), and all their descendants (pct exec runs in nested namespaces).
lab_pids() {
  local f pid ppid ns ns2 path target
  local -A parent=() mine=()
  ns=$(cat "$lab/run/node.ns" 2>/dev/null || true)
  ns2=$(cat "$lab/run/node2.ns" 2>/dev/null || true)
  for f in "$lab/run/pve.pid" "$lab/run/node.pid" "$lab/run/node2.pid"; do
    pid=$(cat "$f" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ && -d /proc/$pid ]] && mine[$pid]=1
  done
  while read -r pid ppid; do
    parent[$pid]=$ppid
  done < <(ps -e -o pid=,ppid= || true)
  if [[ -n $ns || -n $ns2 ]]; then
    while read -r path target; do
      pid=${path#/proc/}
      pid=${pid%%/*}
      [[ $target == "$ns" || $target == "$ns2" ]] && mine[$pid]=1
    done < <(find /proc -mindepth 3 -maxdepth 3 -path '/proc/[0-9]*/ns/mnt' -printf '%p %l\n' 2>/dev/null || true)
  fi
  local grew=1
  while ((grew)); do
    grew=0
    for pid in "${!parent[@]}"; do
      if [[ -z ${mine[$pid]:-} && -n ${mine[${parent[$pid]}]:-} ]]; then
        mine[$pid]=1
        grew=1
      fi
    done
  done
  for pid in "${!mine[@]}"; do
    [[ $pid != "$$" && -d /proc/$pid ]] && echo "$pid"
  done
  return 0
}

# starttime PID: the process's start time (field 22 of /proc/PID/stat), to tell a pid reused.
starttime() {
  local stat rest
  local -a f
  read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  rest=${stat##*) }
  read -r -a f <<<"$rest"
  echo "${f[19]}"
}

# Every process seen stays on the list (by pid and start time) until it is gone: once its
# parent dies, a process in a container's namespaces is no longer found by lab_pids.
declare -A seen=()
# remember: add what lab_pids finds now; alive: print the remembered processes still running.
remember() {
  local pid t
  while read -r pid; do
    [[ -n ${seen[$pid]:-} ]] && continue
    t=$(starttime "$pid") && seen[$pid]=$t
  done < <(lab_pids | sort -un)
}
alive() {
  local pid
  for pid in "${!seen[@]}"; do
    [[ $(starttime "$pid" 2>/dev/null) == "${seen[$pid]}" ]] && echo "$pid"
  done
  return 0
}

step "Ending everything in the lab's cgroup"
cgroup=$(cat "$lab/run/node.cgroup" 2>/dev/null || true)
if [[ -n $cgroup && $cgroup == */homelab-lab-* && -d $cgroup ]]; then
  if grep -q '^populated 1' "$cgroup/cgroup.events"; then
    echo 1 >"$cgroup/cgroup.kill"
    for _ in $(seq 100); do
      grep -q '^populated 1' "$cgroup/cgroup.events" || break
      sleep 0.1
    done
    ! grep -q '^populated 1' "$cgroup/cgroup.events" || die "processes in $cgroup survived cgroup.kill: $(tr '\n' ' ' <"$cgroup/cgroup.procs")"
  fi
  find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
  [[ ! -d $cgroup ]] || die "could not remove the cgroup $cgroup (find $cgroup -name cgroup.procs -size +0)"
  ok "ended; cgroup $cgroup removed"
else
  ok "no lab cgroup"
fi
rm -f "$lab/run/node.cgroup"

step "Stopping the lab's other processes"
remember
mapfile -t pids < <(alive)
if [[ ${#pids[@]} -gt 0 ]]; then
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 30); do
    remember
    mapfile -t pids < <(alive)
    [[ ${#pids[@]} -eq 0 ]] && break
    sleep 0.1
  done
  if [[ ${#pids[@]} -gt 0 ]]; then
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 30); do
      remember
      mapfile -t pids < <(alive)
      [[ ${#pids[@]} -eq 0 ]] && break
      kill -KILL "${pids[@]}" 2>/dev/null || true
      sleep 0.1
    done
  fi
  [[ ${#pids[@]} -eq 0 ]] || die "processes still running in the lab: ${pids[*]}; not removing $lab"
  ok "stopped"
else
  ok "nothing running"
fi
rm -f "$lab/run/pve.pid" "$lab/run/node.pid" "$lab/run/node.ns" "$lab/run/slirp.pid" "$lab/run/slirp.sock" \
  "$lab/run/node2.pid" "$lab/run/node2.ns" "$lab/run/node2.cgroup" "$lab/run/slirp2.pid" "$lab/run/slirp2.sock"

# The node's mounts live in its own namespace and went with its processes; check that
# nothing under .lab/ is mounted here (a lab started by hand could have leaked one).
step "Checking that nothing is mounted under $lab"
mounted() { findmnt -rn -o TARGET | awk -v p="$lab" 'index($0, p "/") == 1 || $0 == p'; }
if [[ -n $(mounted) ]]; then
  mounted | sort -r | while read -r m; do
    umount -R "$m" 2>/dev/null || umount -R -l "$m" || true
  done
  [[ -z $(mounted) ]] || die "still mounted under $lab: $(mounted | tr '\n' ' '); not removing it"
  ok "unmounted what was left"
else
  ok "nothing mounted"
fi

step "Keeping apt's downloads in $apt_cache"
mkdir -p "$apt_cache"
n=0
while IFS= read -r -d '' f; do
  [[ -e $apt_cache/${f##*/} ]] && continue
  ln "$f" "$apt_cache/" 2>/dev/null || cp -p "$f" "$apt_cache/"
  n=$((n + 1))
done < <(
  find "$node/var/cache/lab-apt" -maxdepth 1 -name '*.deb' -print0 2>/dev/null
  find "$node/var/lib/lxc" "$lab/node2/var/lib/lxc" -maxdepth 7 -path '*/rootfs/var/cache/apt/archives/*.deb' -print0 2>/dev/null
)
ok "$n new package(s) kept"

if ((keep)); then
  ok "lab stopped; $lab kept (--keep)"
  exit 0
fi
restore_stack_file

step "Removing $lab"
rm -rf --one-file-system "$lab"
[[ ! -e $lab ]] || die "could not remove all of $lab"
ok "lab removed (cached trees in ${LAB_CACHE:-$HOME/.cache/homelab-media/rootfs} kept)"
