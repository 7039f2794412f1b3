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
