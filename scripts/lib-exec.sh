#!/usr/bin/env bash
# Running commands: retries, quiet output, as another user.
# Sourced after lib.sh, never run.

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
  _show_log "$log" "$rc"
  rm -f "$log"
  return "$rc"
}

# _show_log LOG RC: quiet's output rule (the tail on failure, all of it with VERBOSE).
_show_log() {
  if [[ $2 -ne 0 && -z ${VERBOSE:-} ]]; then
    tail -n 30 "$1" >&2
  elif [[ -n ${VERBOSE:-} ]]; then
    cat "$1" >&2
  fi
}

# apt_missing PKG...: print the packages among these that dpkg does not have installed.
apt_missing() {
  local p
  for p; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true) == "ii "* ]] || echo "$p"
  done
}

# apt_quiet args...: `quiet apt-get args...` that waits for another apt or dpkg run to let go
# of its lock instead of failing at once. A new container's apt-daily.service starts soon after
# its first boot (its timer is Persistent), just when the bootstrap runs apt. Waits up to
# APT_LOCK_WAIT seconds (default 600) in all and says once who holds the lock. apt's own
# DPkg::Lock::Timeout covers dpkg's locks (each call gets only the time left); apt 2.6 (bookworm)
# does not wait for the lists lock of `apt-get update` ("Could not get lock
# /var/lib/apt/lists/lock"), so that is retried here. The deadline is kept in microseconds
# (EPOCHREALTIME): bash's SECONDS ticks with the clock and can end a wait up to a second early.
apt_quiet() {
  local wait=${APT_LOCK_WAIT:-600} deadline left log rc holder said=0
  deadline=$(($(_now_us) + wait * 1000000))
  log=$(mktemp)
  while :; do
    left=$(((deadline - $(_now_us) + 999999) / 1000000))
    ((left > 0)) || left=0
    rc=0
    if [[ $1 == update ]]; then
      # a mirror connection that stalls can hang apt's http method past its own timeouts: an index
      # update is safe to cut short (the caller retries); an install is never cut (dpkg mid-way)
      timeout --kill-after=10 "${APT_UPDATE_TIMEOUT:-300}" apt-get -o DPkg::Lock::Timeout="$left" "$@" >"$log" 2>&1 || rc=$?
    else
      apt-get -o DPkg::Lock::Timeout="$left" "$@" >"$log" 2>&1 || rc=$?
    fi
    if ((rc == 0)) || ! grep -q 'Could not get lock' "$log" || (($(_now_us) >= deadline)); then
      break
    fi
    if ((!said)); then
      holder=$(sed -n 's/.*held by process \([0-9][0-9]*\).*/\1/p' "$log" | head -n 1)
      warn "apt is busy${holder:+ (process $holder $(cat "/proc/$holder/comm" 2>/dev/null || true))}: waiting up to ${wait}s for its lock"
      said=1
    fi
    sleep "${APT_LOCK_POLL:-5}"
  done
  _show_log "$log" "$rc"
  rm -f "$log"
  return "$rc"
}

# _now_us: the wall clock in microseconds (bash 5's EPOCHREALTIME, whatever the locale's decimal mark).
_now_us() {
  local t=${EPOCHREALTIME/[.,]/}
  echo "$((10#$t))"
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
