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
  if [[ $rc -ne 0 && -z ${VERBOSE:-} ]]; then
    tail -n 30 "$log" >&2
  elif [[ -n ${VERBOSE:-} ]]; then
    cat "$log" >&2
  fi
  rm -f "$log"
  return "$rc"
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
