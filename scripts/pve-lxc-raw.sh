#!/usr/bin/env bash
# Put raw device lines into the main section of a Proxmox container config.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: pve-lxc-raw.sh apply CONF [--caller-holds-lock] < lines
       pve-lxc-raw.sh help | --help

Makes the main section of CONF (e.g. /etc/pve/lxc/201.conf: everything before
the first [section] line) hold exactly the lxc.cgroup2.devices.allow and
lxc.mount.entry lines given on stdin, in that order, plus this project's own
LXC hook line if given. Every other line of the file is left as it is: other
keys, other lxc.* keys (lxc.idmap, your own lxc.hook.* lines, ...), '#'
description lines, snapshot sections and [pve:pending].

stdin: one line per entry; blank lines are ignored; empty stdin removes all
such lines. Accepted forms:
  lxc.cgroup2.devices.allow: a
  lxc.cgroup2.devices.allow: c|b MAJOR|*:MINOR|* [rwm]+     e.g. c 226:128 rwm
  lxc.mount.entry: SRC DST TYPE OPTIONS [0 0]              e.g. /dev/dri dev/dri none bind,optional,create=dir 0 0
  lxc.hook.pre-start: /ABS/PATH/homelab-media-lxc-hook.sh  the guard LXC runs at every start
                                                           (a reboot from inside too)

New lines go after the main section's keys (replacing the old ones where they
were), before the first section. The file is written atomically (temp file
in the same directory, then rename) and only when something differs.

While it reads and writes CONF it holds PVE's own per-container config lock
(flock on /run/lock/lxc/pve-config-<vmid>.lock, as pct and the API do), where
<vmid> is CONF's name without .conf; it waits up to 60s for it. A CONF whose
name is not <number>.conf is edited without the lock (with a note).
--caller-holds-lock: the caller already holds that lock (a PVE hookscript: pct
start and the API run pre-start inside it), so it is not taken (waiting for it
would wait for our own caller).
Environment: PVE_LOCK_DIR (default /run/lock/lxc, created if missing) and
PVE_LOCK_TIMEOUT (seconds, default 60), for tests and the lab.

stdout: last line is `changed` or `unchanged`.
Exit 1 (file untouched, message on stderr): missing file, a key other than the
three above (an lxc.hook.pre-start of another program included), a malformed line, a '#' line on stdin, or PVE's config lock still
held after the wait.
USAGE
}

# this project's LXC hook: the only lxc.hook.pre-start line managed here (others are the user's)
LXC_HOOK_FILE=homelab-media-lxc-hook.sh
KEY_RE="^((lxc\\.cgroup2\\.devices\\.allow|lxc\\.mount\\.entry)[[:space:]]*:|lxc\\.hook\\.pre-start[[:space:]]*:[[:space:]]*/[^[:space:]]*/${LXC_HOOK_FILE}[[:space:]]*$)"
HOOK_RE="^/[^[:space:]]*/$LXC_HOOK_FILE\$"
ALLOW_RE='^(a|[cb] ([0-9]+|\*):([0-9]+|\*) [rwm]+)$'
MOUNT_RE='^[^[:space:]]+ [^[:space:]]+ [^[:space:]]+ [^[:space:]]+( [0-9]+ [0-9]+)?$'

# normalize_line LINE: print "key: value" with single spaces, or fail with a reason on stderr.
normalize_line() {
  local line=$1 key value
  if [[ ! $line =~ ^([^:[:space:]]+)[[:space:]]*:[[:space:]]*(.*)$ ]]; then
    printf 'not a "key: value" line: %s\n' "$line" >&2
    return 1
  fi
  key=${BASH_REMATCH[1]}
  # collapse runs of blanks in the value
  read -r -a parts <<<"${BASH_REMATCH[2]}"
  value="${parts[*]}"
  case $key in
    lxc.cgroup2.devices.allow)
      [[ $value =~ $ALLOW_RE ]] || {
        printf 'malformed %s value "%s" (want a, or c|b MAJOR:MINOR rwm, e.g. "c 226:128 rwm", "b 11:0 rwm")\n' "$key" "$value" >&2
        return 1
      }
      ;;
    lxc.mount.entry)
      [[ $value =~ $MOUNT_RE ]] || {
        printf 'malformed %s value "%s" (want SRC DST TYPE OPTIONS [0 0], e.g. "/dev/dri dev/dri none bind,optional,create=dir")\n' "$key" "$value" >&2
        return 1
      }
      ;;
    lxc.hook.pre-start)
      [[ $value =~ $HOOK_RE ]] || {
        printf 'key "%s" is not managed here unless it runs this project'"'"'s %s (an absolute path), got "%s"\n' "$key" "$LXC_HOOK_FILE" "$value" >&2
        return 1
      }
      ;;
    *)
      printf 'key "%s" is not managed here: only lxc.cgroup2.devices.allow and lxc.mount.entry lines (and the LXC hook line) are accepted\n' "$key" >&2
      return 1
      ;;
  esac
  printf '%s: %s\n' "$key" "$value"
}

# lock_conf CONF: take PVE's config lock of the container CONF belongs to (held
# until this process exits: it never outlives the edit, and pct reboot, which
# takes the same lock, runs after this script). Stops after a bounded wait.
lock_conf() {
  local conf=$1 base vmid dir wait=${PVE_LOCK_TIMEOUT:-60} lockfile fd
  base=$(basename "$conf")
  vmid=${base%.conf}
  if [[ $base != *.conf || ! $vmid =~ ^[0-9]+$ ]]; then
    warn "note: $base is not <vmid>.conf, so PVE's config lock is not taken for it"
    return 0
  fi
  need_int PVE_LOCK_TIMEOUT "$wait"
  dir=${PVE_LOCK_DIR:-/run/lock/lxc}
  mkdir -p "$dir" || die "cannot create the lock directory $dir"
  lockfile="$dir/pve-config-$vmid.lock"
  exec {fd}>>"$lockfile" || die "cannot open PVE's config lock $lockfile"
  if ! flock -w "$wait" "$fd"; then
    die "PVE's config lock of container $vmid ($lockfile) is still held after ${wait}s: a pct/API operation on it is running (see the node's task log); $conf was not changed. Run this again when it has finished."
  fi
  ok "holding PVE's config lock of container $vmid"
}

apply() {
  local conf=$1 line n i norm first_section first_managed last_key insert_at
  local -a parts
  [[ -f $conf ]] || die "$conf: no such container config (is the vmid right, and is this the node that owns it?)"
  [[ -r $conf ]] || die "$conf: cannot read it"

  # Wanted lines from stdin, validated before anything is touched.
  local -a wanted=()
  n=0
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*$ ]] && continue
    [[ $line =~ ^[[:space:]]*# ]] && die "stdin line $n: '#' lines are not allowed (in a PVE config they become the container description)"
    norm=$(normalize_line "$line" 2>&1) || die "stdin line $n: $norm"
    wanted+=("$norm")
  done

  # Read and write the file under PVE's config lock (stdin is validated first).
  if [[ ${2:-} == --caller-holds-lock ]]; then
    ok "PVE's config lock is held by our caller (hookscript); not taking it"
  else
    lock_conf "$conf"
  fi
  [[ -f $conf ]] || die "$conf: no such container config (it was removed while waiting for the lock)"

  # The file, line by line, each element keeping its own newline (byte-exact rebuild).
  local -a lines=()
  mapfile lines <"$conf"
  first_section=${#lines[@]}
  for i in "${!lines[@]}"; do
    if [[ ${lines[i]} =~ ^\[ ]]; then
      first_section=$i
      break
    fi
  done

  # Current managed lines of the main section, and where things are.
  local -a current=() kept=()
  first_managed=-1
  last_key=-1
  for ((i = 0; i < first_section; i++)); do
    line=${lines[i]%$'\n'}
    if [[ $line =~ $KEY_RE ]]; then
      [[ $first_managed -ge 0 ]] || first_managed=${#kept[@]}
      norm=$(normalize_line "$line" 2>/dev/null) || norm=$line
      current+=("$norm")
      continue
    fi
    kept+=("${lines[i]}")
    if [[ -n ${line//[[:space:]]/} && ! $line =~ ^[[:space:]]*# ]]; then
      last_key=$((${#kept[@]} - 1))
    fi
  done

  if [[ ${#current[@]} -eq ${#wanted[@]} ]] && { [[ ${#wanted[@]} -eq 0 ]] || [[ $(printf '%s\n' "${current[@]}") == "$(printf '%s\n' "${wanted[@]}")" ]]; }; then
    ok "$conf already has the ${#wanted[@]} wanted raw line(s)"
    echo unchanged
    return 0
  fi

  # Where the wanted block goes: where the old managed lines were, else after
  # the last key line of the main section (before trailing blanks and the first section).
  if [[ $first_managed -ge 0 ]]; then
    insert_at=$first_managed
  else
    insert_at=$((last_key + 1))
  fi

  local -a main=()
  for ((i = 0; i < insert_at; i++)); do main+=("${kept[i]}"); done
  if [[ ${#wanted[@]} -gt 0 && ${#main[@]} -gt 0 && ${main[-1]} != *$'\n' ]]; then
    main[-1]+=$'\n'
  fi
  for line in "${wanted[@]}"; do main+=("$line"$'\n'); done
  for ((i = insert_at; i < ${#kept[@]}; i++)); do main+=("${kept[i]}"); done

  local dir tmp
  dir=$(dirname "$conf")
  tmp="$conf.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  {
    printf '%s' "${main[@]}"
    for ((i = first_section; i < ${#lines[@]}; i++)); do printf '%s' "${lines[i]}"; done
  } >"$tmp"
  # pmxcfs (/etc/pve) fixes owner and mode itself and refuses chmod; elsewhere keep them.
  chmod --reference="$conf" "$tmp" 2>/dev/null || true
  chown --reference="$conf" "$tmp" 2>/dev/null || true
  mv -f "$tmp" "$conf"
  trap - EXIT
  ok "$conf: raw lines set (${#current[@]} before, ${#wanted[@]} now) in $dir"
  echo changed
}

case ${1:-} in
  help | -h | --help) usage ;;
  apply)
    [[ $# -eq 2 || ($# -eq 3 && $3 == --caller-holds-lock) ]] ||
      die "usage: pve-lxc-raw.sh apply CONF [--caller-holds-lock] < lines (see help)"
    apply "$2" "${3:-}"
    ;;
  "") die "missing command (see help)" ;;
  *) die "unknown command '$1' (see help)" ;;
esac
