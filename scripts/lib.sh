#!/usr/bin/env bash
# The core every script in scripts/ sources: progress lines, errors, arguments, changes.
# Sourced, never run. Progress goes to stderr so stdout stays machine-readable.
#
# Other helpers live in small lib-*.sh files beside it, each sourced only by the scripts
# that use it (after this one), so a helper change re-runs only the steps that use it:
#   lib-json.sh     JSON output          lib-exec.sh     retry, quiet, run_as
#   lib-files.sh    write_if_changed     lib-users.sh    media user, groups (needs lib-json.sh)
#   lib-devices.sh  device nodes, the optical drive, raw lxc lines (needs lib-json.sh)
# components/render.py bundles and hashes exactly the files a script sources.

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

# need_root: stop unless running as root.
need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $SCRIPT_NAME)"; }

# ---------------------------------------------------------------------------
# Stack configuration: messages name the key a user sets to fix a mismatch.

# shellcheck disable=SC2034  # STACK_NS is read by the scripts that source this
STACK_NS=homelab-media
# config_set_hint KEY VALUE: print the command that sets homelab-media:KEY, in backquotes.
config_set_hint() { printf "\`pulumi config set --path %s:%s %s\`" "$STACK_NS" "$1" "$2"; }

# ---------------------------------------------------------------------------
# Arguments.

# need_arg FLAG VALUE: stop unless a flag that takes a value got one.
need_arg() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"; }

# need_int NAME VALUE: stop unless VALUE is a decimal number (uid, gid, vmid...).
need_int() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a number, got '$2'"; }

# need_name NAME VALUE: stop unless VALUE is a valid user/group name.
need_name() { [[ $2 =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "$1 must be a user/group name (lowercase, digits, '_' or '-'), got '$2'"; }

# ---------------------------------------------------------------------------
# PVE container confs.

# conf_device_lines CONF: the raw device lines (lxc.cgroup2.devices.allow, lxc.mount.entry) of a PVE
# conf's main section, as "key: value" with single blanks, in file order.
conf_device_lines() {
  awk '/^\[/ { exit } /^lxc\.(cgroup2\.devices\.allow|mount\.entry)[[:space:]]*:/ {
         k = $0; sub(/[[:space:]]*:.*/, "", k); v = $0; sub(/^[^:]*:[[:space:]]*/, "", v)
         gsub(/[[:space:]]+/, " ", v); sub(/ $/, "", v); print k ": " v }' "$1"
}

# ---------------------------------------------------------------------------
# Changes made by a script, for its "changed" output.

CHANGED=()
# changed "what": record one change (and log it).
changed() {
  CHANGED+=("$1")
  ok "$1"
}

