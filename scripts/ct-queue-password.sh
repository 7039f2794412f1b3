#!/usr/bin/env bash
# Inside the queue container: the queue's password, kept in one 0600 file; printed for the stack.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"

usage() {
  cat <<'USAGE'
Usage: ct-queue-password.sh [--from-stdin] [--file FILE]

The password of the queue's PostgreSQL role (homelab-media:queuePassword), kept in FILE (default
/etc/media-queue/password, mode 0600 root). With --from-stdin the first line of stdin is the
password (the stack's secret); without it, the password already in FILE is kept, or a new one
of 32 random characters is made the first time. Prints the password on stdout and nothing
else: the stack keeps that stdout as a secret and hands it to ct-install-queue.sh and to each
worker's db_password_file. Never an argument, never logged.
USAGE
}

file=/etc/media-queue/password from_stdin=false
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --from-stdin) from_stdin=true; shift ;;
    --file) need_arg "$@"; file=$2; shift 2 ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
[[ $file == /* ]] || die "--file must be an absolute path" 2
need_root

step "The queue's password ($file)"
umask 077
mkdir -p "$(dirname "$file")"
password=""
if $from_stdin; then
  IFS= read -r password || [[ -n $password ]] || die "stdin is empty: the password is its first line"
  [[ ${#password} -ge 12 ]] || die "homelab-media:queuePassword is shorter than 12 characters: set a longer one"
  [[ $password != *[[:space:]]* ]] || die "homelab-media:queuePassword contains white space: set one without"
  if printf '%s\n' "$password" | write_if_changed "$file" 0600; then ok "set from homelab-media:queuePassword"; else ok "unchanged"; fi
elif [[ -s $file ]]; then
  IFS= read -r password <"$file" || true
  [[ -n $password ]] || die "$file is empty: remove it to make a new password"
  ok "kept (made at the first deploy)"
else
  password=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 || true)
  [[ ${#password} -eq 32 ]] || die "could not read 32 random characters from /dev/urandom"
  printf '%s\n' "$password" | write_if_changed "$file" 0600 || true
  ok "made (32 random characters)"
fi
chmod 0600 "$file"
printf '%s\n' "$password"
