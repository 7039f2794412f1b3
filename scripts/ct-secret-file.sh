#!/usr/bin/env bash
# Inside a container: write a secret from stdin to a file (mode 0600, one owner), only when it changed.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'USAGE'
Usage: ct-secret-file.sh --path FILE --owner USER [--make-dir] < secret

Writes the first line of stdin to FILE (mode 0600, owned by USER and USER's group), atomically
and only when it differs; the directory must exist. For a secret a service reads at each use,
e.g. media-pipeline's Jellyfin API key (/etc/media-pipeline/jellyfin.key) or the queue's password
(/etc/media-pipeline/db-password). --make-dir makes the directory (0755 root) when missing, for a
secret that must be there before its service is installed. The secret is never an argument and
never printed. Stdout: {"path", "changed": bool}.
USAGE
}

path="" owner="" make_dir=false
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --path) need_arg "$@"; path=$2; shift 2 ;;
    --owner) need_arg "$@"; need_name --owner "$2"; owner=$2; shift 2 ;;
    --make-dir) make_dir=true; shift ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
[[ $path == /* ]] || die "--path must be an absolute path (see --help)" 2
[[ -n $owner ]] || die "--owner is required (see --help)" 2
need_root
if $make_dir && [[ ! -d $(dirname "$path") ]]; then (umask 022 && mkdir -p "$(dirname "$path")"); fi
[[ -d $(dirname "$path") ]] || die "$(dirname "$path") does not exist (is the service installed?)"
id "$owner" >/dev/null 2>&1 || die "--owner $owner: no such user in this container"
secret=""
IFS= read -r secret || [[ -n $secret ]] || die "stdin is empty: the secret is its first line"

step "Writing $path (0600, $owner)"
changed=false
if printf '%s\n' "$secret" | write_if_changed "$path" 0600; then
  changed=true
  ok "written"
else
  ok "unchanged"
fi
chown "$owner:$(id -gn "$owner")" "$path"
json_obj path "$(json_str "$path")" changed "$(json_bool "$changed")"
echo
