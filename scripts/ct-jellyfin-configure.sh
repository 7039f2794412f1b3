#!/usr/bin/env bash
# Inside the Jellyfin container: finish Jellyfin's first run, its two libraries, hardware acceleration and an API key.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'USAGE'
Usage: ct-jellyfin-configure.sh --tarball FILE --password-stdin [--port 8096] [--admin-user admin]
         [--render-node /dev/dri/renderD128] [--hwaccel vaapi|qsv|none]
         [--key-file /etc/homelab-media/jellyfin-api-key]

Inside the Jellyfin container, as root, after ct-install-jellyfin.sh. Unpacks the
media_pipeline tarball into a temp directory and runs
  python3 -m media_pipeline.jellyfin configure --url http://127.0.0.1:PORT
      --admin-user USER --password-file F --render-node NODE --hwaccel HW --key-file KEY
      --movies /media/movies --tv /media/tv --wait 120
(idempotent: the first-run wizard, the libraries at /media/movies and /media/tv, hardware acceleration,
an API key written to KEY, mode 0600). The admin password comes on stdin (one line),
never on the command line; it is handed to the CLI as a 0600 file that is removed on exit.

stdout: the CLI's JSON, with "apiKey" (the key file's content) added: the program keeps
this step's stdout as a secret and never logs it.
USAGE
}

tarball="" password_stdin=0 port=8096 admin=admin node="" hwaccel=none key_file=/etc/homelab-media/jellyfin-api-key
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --tarball) need_arg "$@"; tarball=$2; shift 2 ;;
    --password-stdin) password_stdin=1; shift ;;
    --port) need_arg "$@"; need_int --port "$2"; port=$2; shift 2 ;;
    --admin-user) need_arg "$@"; admin=$2; shift 2 ;;
    --render-node) need_arg "$@"; node=$2; shift 2 ;;
    --hwaccel) need_arg "$@"; hwaccel=$2; shift 2 ;;
    --key-file) need_arg "$@"; key_file=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $tarball && -r $tarball ]] || die "--tarball FILE is required and must be readable (see --help)"
((password_stdin)) || die "--password-stdin is required: the admin password never travels on the command line"
[[ $hwaccel == none || -n $node ]] || die "--hwaccel $hwaccel needs --render-node"
[[ $key_file == /* ]] || die "--key-file must be an absolute path, got '$key_file'"
need_root

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0700 "$work"

step "The admin password (stdin)"
IFS= read -r password || true
[[ -n $password ]] || die "no password on stdin: set it with \`pulumi config set --secret homelab-media:jellyfinAdminPassword ...\`"
(umask 077 && printf '%s\n' "$password" >"$work/password")
unset password
ok "read"

step "Unpacking $(basename "$tarball")"
tar -xzf "$tarball" -C "$work" --no-same-owner
[[ -f $work/media_pipeline/jellyfin.py ]] || die "$tarball has no media_pipeline/jellyfin.py (the configure CLI)"
ok "media_pipeline"

step "Waiting for Jellyfin on 127.0.0.1:$port"
for ((i = 0; i < 120; i++)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 1
done
((i < 120)) || die "nothing listens on 127.0.0.1:$port after 120 s: systemctl status jellyfin; journalctl -u jellyfin"
ok "listening"

step "Configuring Jellyfin (wizard, libraries, hardware acceleration, API key)"
mkdir -p "$(dirname "$key_file")"
args=(configure --url "http://127.0.0.1:$port" --admin-user "$admin" --password-file "$work/password"
  --hwaccel "$hwaccel" --movies /media/movies --tv /media/tv --key-file "$key_file" --wait 120)
[[ -z $node ]] || args+=(--render-node "$node")
# from $work: `python3 -m` puts the working directory first on sys.path
out=$(cd "$work" && PYTHONPATH=$work python3 -m media_pipeline.jellyfin "${args[@]}")
[[ -s $key_file ]] || die "the configure CLI wrote no API key to $key_file"
chmod 0600 "$key_file"
ok "configured"

# the CLI's last JSON line, with the key added (python3: the CLI needs it anyway)
KEY_FILE=$key_file OUT=$out python3 -c '
import json, os
lines = [l for l in os.environ["OUT"].splitlines() if l.strip().startswith("{")]
doc = json.loads(lines[-1]) if lines else {}
doc["apiKey"] = open(os.environ["KEY_FILE"]).read().strip()
print(json.dumps(doc))'
