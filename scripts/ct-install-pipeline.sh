#!/usr/bin/env bash
# ct-install-pipeline.sh: install the stdlib-only media_pipeline package inside a container and
# run its service: media-pipeline in the transcoder (--role transcoder), media-rip in the ripper.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"

usage() {
  cat <<'EOF'
Usage: ct-install-pipeline.sh --tarball FILE --staging DIR --movies DIR --tv DIR [options]
       ct-install-pipeline.sh --role ripper --tarball FILE --staging DIR [ripper options]

Installs the media_pipeline package (a .tar.gz holding the media_pipeline/ directory) to
/opt/media-pipeline and, by role:
  transcoder (default)  /usr/local/bin/media-transcode and media-pipeline,
                        /etc/media-pipeline/config.json, media-pipeline.service
  ripper                /usr/local/bin/media-rip, /etc/media-rip/config.json,
                        media-rip.service (as the service user, with the drive's group)
enables the unit and (re)starts it when systemd runs the container. Run as root inside the
container. A second run with the same inputs changes nothing.

  --role NAME           transcoder (default) or ripper
  --tarball FILE        the package tarball (required)
  --user NAME           the service user (default media; must exist)
  --pool DIR            the storage pool; --staging/--movies/--tv default to DIR/staging...
  --staging DIR         where finished rips appear
  --movies DIR          library folder for films
  --tv DIR              library folder for episodes
  --languages LIST      audio/subtitle languages to keep (default eng), e.g. eng,bul
  --encoder NAME        libx265 (default) or hevc_qsv
  --preset NAME         encoder preset (default slow)
  --crf N               quality (default 18)
  --qsv-device PATH     render node for hevc_qsv, e.g. /dev/dri/renderD129 (default: auto, i.e.
                        at run time the first render node driven by i915/xe, else renderD128)
  --keep-source BOOL    keep the rip after a verified transcode (default true)
  --metrics-port N      Prometheus /metrics port, 0 = off (default 9464)
  --metrics-bind ADDR   address /metrics listens on (default 127.0.0.1: this container only;
                        0.0.0.0 to let another host scrape it)
  --metrics-allow LIST  comma-separated addresses/networks that may scrape /metrics beyond loopback
                        (the monitoring container; default: anyone who reaches --metrics-bind)
  --web-port N          the status page's port, 0 = off (default 8480)
  --web-bind ADDR       address the status page listens on (default 127.0.0.1); anything
                        beyond loopback needs a password (--web-password-stdin)
  --web-password-stdin  read the status page's password from stdin (first line; HTTP basic
                        auth, any user name); never pass it as an argument
  --public-url URL      the status page's address behind a TLS reverse proxy, scheme://host[:port]
                        (Retry checks the browser's Origin against it; default: the Host header)
  --trusted-proxies LIST
                        comma-separated addresses/networks of reverse proxies whose
                        X-Forwarded-Host/-Proto are believed (default: none)
  --gpu-proof FILE      where verify-gpu.sh --save keeps the last GPU proof for the page
                        (default /var/lib/media-pipeline/gpu-proof.json)
  --rip-status FILE     media-rip's status file on the pool, the same path in both roles: the
                        ripper writes it, the transcoder's status page reads it (default
                        STAGING/.media-rip/status.json: hidden, media-pipeline skips it)
  --jellyfin-url URL    tell Jellyfin at URL (http://host:8096) about each published file
                        (POST /Library/Media/Updated); default none: Jellyfin finds new files
                        at its next scan
  --jellyfin-api-key-file FILE
                        the Jellyfin API key, mode 0600, readable by the service user, read at
                        each refresh (default /etc/media-pipeline/jellyfin.key; python3 -m
                        media_pipeline.jellyfin configure --key-file writes one); never an argument
  --jellyfin-path-map LIST
                        HOST=CONTAINER,... : the library folders here and where Jellyfin's
                        container mounts them, e.g. /mnt/storage/movies=/media/movies,
                        /mnt/storage/tv=/media/tv (default none: the same paths in both)
  --db DB               the job store: a SQLite path (default /var/lib/media-pipeline/jobs.sqlite3,
                        one worker) or postgresql://ROLE@HOST:PORT/DATABASE, the queue many
                        workers share (docs/adr/0016); with a URL, python3-psycopg is installed and
                        an existing SQLite store is moved into it once (media-pipeline migrate)
  --db-password-file FILE
                        the queue's password, mode 0600, readable by the service user (default
                        /etc/media-pipeline/db-password with a URL); never an argument
  --worker-name NAME    this worker's name in the queue (default: the host name)
  --lease-seconds N     a dead worker's job goes back to the queue after this (default 60)
  --root DIR            install under DIR instead of / (tests, image building); never starts
ripper options:
  --drive SELECTOR      which drive media-rip watches, looked up at every poll as the node's
                        hookscript does: auto (the first optical drive; default), or a
                        /dev/disk/by-id name, model or serial (devices.opticalDrive)
  --device PATH         a fixed drive node instead (e.g. /dev/sr0); default none: --drive decides
  --min-length SECONDS  shortest title to rip (default 600)
  --auto-rip BOOL       rip every new disc (default true; false: only record it)
  --eject BOOL          eject the disc when done (default true)
  --drive-gid N         the drive's group id (the node's cdrom gid), added to the unit
  --metrics-port/--metrics-bind/--metrics-allow as above (media-rip's own /metrics; default port 0 = off)
  -h, --help            this help

Keys of an existing config.json that are not set by these flags (apprise_urls, web_password
without --web-password-stdin, ...) are kept.
The Python libraries the service imports (Debian's python3-jinja2, python3-prometheus-client)
are installed with apt-get when missing (checked only, not installed, with --root).
config.json may hold notification tokens (apprise_urls): it is written mode 0640, owner
root, group the service user's primary group (ownership only when run as root).
Stdout: {"installed", "version", "unit", "config", "changed", "service"} as one JSON object.
EOF
}

tarball="" user=media pool="" staging="" movies="" tv="" languages=eng encoder=libx265
preset=slow crf=18 qsv_device="" keep_source=true metrics_port="" metrics_bind=127.0.0.1 root=""
role=transcoder device="" drive=auto min_length=600 auto_rip=true eject=true drive_gid=""
web_port=8480 web_bind=127.0.0.1 web_password_stdin=false gpu_proof=/var/lib/media-pipeline/gpu-proof.json
rip_status="" public_url="" trusted_proxies="" metrics_allow=""
jellyfin_url="" jellyfin_api_key_file=/etc/media-pipeline/jellyfin.key jellyfin_path_map=""
db="" db_password_file="" worker_name="" lease_seconds=""
PY_PACKAGES=(python3-jinja2 python3-prometheus-client)
PY_IMPORTS="import jinja2, prometheus_client"

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --web-password-stdin) web_password_stdin=true; shift ;;
    --tarball | --user | --pool | --staging | --movies | --tv | --languages | --encoder | \
      --preset | --crf | --qsv-device | --keep-source | --metrics-port | --metrics-bind | --root | \
      --role | --device | --min-length | --auto-rip | --eject | --drive-gid | --web-port | --web-bind | --gpu-proof | \
      --rip-status | --public-url | --trusted-proxies | --drive | --metrics-allow | --jellyfin-url | \
      --jellyfin-api-key-file | --jellyfin-path-map | --db | --db-password-file | --worker-name | --lease-seconds)
      [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)" 2
      case $1 in
        --tarball) tarball=$2 ;;
        --user) user=$2 ;;
        --pool) pool=$2 ;;
        --staging) staging=$2 ;;
        --movies) movies=$2 ;;
        --tv) tv=$2 ;;
        --languages) languages=$2 ;;
        --encoder) encoder=$2 ;;
        --preset) preset=$2 ;;
        --crf) crf=$2 ;;
        --qsv-device) qsv_device=$2 ;;
        --keep-source) keep_source=$2 ;;
        --metrics-port) metrics_port=$2 ;;
        --metrics-bind) metrics_bind=$2 ;;
        --root) root=$2 ;;
        --role) role=$2 ;;
        --device) device=$2 ;;
        --drive) drive=$2 ;;
        --min-length) min_length=$2 ;;
        --auto-rip) auto_rip=$2 ;;
        --eject) eject=$2 ;;
        --drive-gid) drive_gid=$2 ;;
        --web-port) web_port=$2 ;;
        --web-bind) web_bind=$2 ;;
        --gpu-proof) gpu_proof=$2 ;;
        --rip-status) rip_status=$2 ;;
        --public-url) public_url=$2 ;;
        --trusted-proxies) trusted_proxies=$2 ;;
        --metrics-allow) metrics_allow=$2 ;;
        --jellyfin-url) jellyfin_url=$2 ;;
        --jellyfin-api-key-file) jellyfin_api_key_file=$2 ;;
        --jellyfin-path-map) jellyfin_path_map=$2 ;;
        --db) db=$2 ;;
        --db-password-file) db_password_file=$2 ;;
        --worker-name) worker_name=$2 ;;
        --lease-seconds) lease_seconds=$2 ;;
      esac
      shift 2
      ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done

# --- inputs -----------------------------------------------------------------------------
[[ -n $tarball ]] || die "--tarball is required (see --help)" 2
[[ -f $tarball && -r $tarball ]] || die "--tarball $tarball: no such readable file" 2
if [[ -n $pool ]]; then
  [[ $pool == /* ]] || die "--pool must be an absolute path (got $pool)" 2
  staging=${staging:-$pool/staging} movies=${movies:-$pool/movies} tv=${tv:-$pool/tv}
fi
[[ $role == transcoder || $role == ripper ]] || die "--role must be transcoder or ripper (got $role)" 2
if [[ $role == ripper ]]; then
  needed=("staging:$staging")
  [[ -z $device || $device =~ ^/dev/[A-Za-z0-9/_-]+$ ]] || die "--device must be a device path such as /dev/sr0 (got $device)" 2
  [[ $drive =~ ^[A-Za-z0-9][A-Za-z0-9\ ._:+/-]*$ ]] || die "--drive must be auto, a /dev/disk/by-id name, a model or a serial (got $drive)" 2
  [[ $min_length =~ ^[0-9]+$ ]] || die "--min-length must be a number of seconds (got $min_length)" 2
  [[ $auto_rip == true || $auto_rip == false ]] || die "--auto-rip must be true or false (got $auto_rip)" 2
  [[ $eject == true || $eject == false ]] || die "--eject must be true or false (got $eject)" 2
  [[ -z $drive_gid || $drive_gid =~ ^[0-9]+$ ]] || die "--drive-gid must be a group id such as 24 (got $drive_gid)" 2
  metrics_port=${metrics_port:-0}
else
  needed=("staging:$staging" "movies:$movies" "tv:$tv")
  metrics_port=${metrics_port:-9464}
fi
for pair in "${needed[@]}"; do
  [[ -n ${pair#*:} ]] || die "--${pair%%:*} is required (or --pool)" 2
  [[ ${pair#*:} == /* ]] || die "--${pair%%:*} must be an absolute path (got ${pair#*:})" 2
done
[[ $languages =~ ^[A-Za-z]{2,3}(,[A-Za-z]{2,3})*$ ]] || die "--languages must look like eng,bul (got $languages)" 2
[[ $encoder == libx265 || $encoder == hevc_qsv ]] || die "--encoder must be libx265 or hevc_qsv (got $encoder)" 2
[[ $crf =~ ^[0-9]+$ ]] || die "--crf must be a number (got $crf)" 2
[[ -z $qsv_device || $qsv_device =~ ^/[^[:space:]]+$ ]] ||
  die "--qsv-device must be an absolute device path such as /dev/dri/renderD129 (got $qsv_device)" 2
[[ $keep_source == true || $keep_source == false ]] || die "--keep-source must be true or false (got $keep_source)" 2
[[ $metrics_port =~ ^[0-9]+$ && $metrics_port -le 65535 ]] || die "--metrics-port must be 0-65535 (got $metrics_port)" 2
[[ $metrics_bind =~ ^[A-Za-z0-9.:-]+$ ]] || die "--metrics-bind must be an address such as 127.0.0.1 or 0.0.0.0 (got $metrics_bind)" 2
[[ $web_port =~ ^[0-9]+$ && $web_port -le 65535 ]] || die "--web-port must be 0-65535 (got $web_port)" 2
[[ $web_bind =~ ^[A-Za-z0-9.:-]+$ ]] || die "--web-bind must be an address such as 127.0.0.1 or 0.0.0.0 (got $web_bind)" 2
[[ $gpu_proof == /* ]] || die "--gpu-proof must be an absolute path (got $gpu_proof)" 2
rip_status=${rip_status:-${staging%/}/.media-rip/status.json}
[[ $rip_status == /* ]] ||
  die "--rip-status must be an absolute path such as /mnt/storage/staging/.media-rip/status.json (got $rip_status)" 2
[[ -z $jellyfin_url || $jellyfin_url =~ ^https?://[^[:space:]]+$ ]] ||
  die "--jellyfin-url must look like http://192.168.1.60:8096 (got $jellyfin_url)" 2
[[ $jellyfin_api_key_file == /* ]] || die "--jellyfin-api-key-file must be an absolute path (got $jellyfin_api_key_file)" 2
[[ -z $jellyfin_path_map || $jellyfin_path_map =~ ^/[^=,]*=/[^=,]*(,/[^=,]*=/[^=,]*)*$ ]] ||
  die "--jellyfin-path-map must be HOST=CONTAINER[,HOST=CONTAINER...] with absolute paths, e.g. /mnt/storage/movies=/media/movies (got $jellyfin_path_map)" 2
queue_url=false
if [[ $db == postgresql://* || $db == postgres://* ]]; then
  [[ $role == transcoder ]] || die "--db applies to the transcoder role (media-pipeline), not $role" 2
  queue_url=true
  db_password_file=${db_password_file:-/etc/media-pipeline/db-password}
  PY_PACKAGES+=(python3-psycopg)
  PY_IMPORTS+=", psycopg"
elif [[ -n $db && $db != /* ]]; then
  die "--db must be an absolute SQLite path or a postgresql:// URL (got $db)" 2
fi
[[ -z $db_password_file || $db_password_file == /* ]] || die "--db-password-file must be an absolute path (got $db_password_file)" 2
[[ -z $worker_name || $worker_name =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] ||
  die "--worker-name must be a short name such as worker-2 (got $worker_name)" 2
[[ -z $lease_seconds || $lease_seconds =~ ^[0-9]+$ ]] || die "--lease-seconds must be a number of seconds (got $lease_seconds)" 2
web_password=""
if $web_password_stdin; then
  IFS= read -r web_password || true # the secret arrives on stdin, never in argv
fi
[[ $user =~ ^[a-z_][a-z0-9_-]*$ ]] || die "--user must be a plain user name (got $user)" 2
if [[ -n $root ]]; then
  [[ $root == /* && -d $root ]] || die "--root must be an existing absolute directory (got $root)" 2
  root=${root%/}
else
  need_root
fi

command -v python3 >/dev/null || die "python3 is missing: apt-get install -y python3 (ct-bootstrap-transcoder.sh installs it)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 is older than 3.9: Debian 12 has 3.11"
libs_changed=false
step "Python libraries the service imports: ${PY_PACKAGES[*]}"
if python3 -c "$PY_IMPORTS" 2>/dev/null; then
  ok "present"
elif [[ -n $root ]]; then
  warn "missing here; the container needs: apt-get install ${PY_PACKAGES[*]} (not installed with --root)"
else
  export DEBIAN_FRONTEND=noninteractive
  retry 2 10 apt_quiet update || die "apt-get update failed (network, or a broken apt source?); the service needs ${PY_PACKAGES[*]}"
  retry 2 10 apt_quiet install -y --no-install-recommends "${PY_PACKAGES[@]}" ||
    die "apt-get install failed for: ${PY_PACKAGES[*]}"
  python3 -c "$PY_IMPORTS" || die "${PY_PACKAGES[*]} installed but python3 cannot import them"
  libs_changed=true
  ok "installed"
fi
[[ $role == ripper ]] || command -v ffmpeg >/dev/null || warn "ffmpeg is not installed yet: the service needs it (ct-bootstrap-transcoder.sh installs it)"

user_exists=false
if getent passwd "$user" >/dev/null; then
  user_exists=true
elif [[ -z $root ]]; then
  die "user $user does not exist: run ct-media-user.sh first"
else
  warn "user $user does not exist here; ownership is left as is (--root)"
fi

changed=$libs_changed
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# write_file PATH MODE [UID:GID]: replace PATH atomically with stdin when content, mode or
# (as root) ownership differ. Compared outside the target directory, so an unchanged file
# leaves even its directory untouched. The new file gets its mode and owner before the rename.
write_file() {
  local path=$1 mode=$2 owner=${3:-} new=$work/new-file tmp
  cat >"$new"
  [[ $(id -u) -eq 0 ]] || owner=""
  if [[ -f $path ]] && cmp -s "$new" "$path" && [[ $(stat -c %a "$path") == "${mode#0}" ]] &&
    [[ -z $owner || $(stat -c %u:%g "$path") == "$owner" ]]; then
    return 1
  fi
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "$(dirname "$path")/.$(basename "$path").XXXXXX")
  cat "$new" >"$tmp"
  chmod "$mode" "$tmp"
  [[ -z $owner ]] || chown "$owner" "$tmp"
  mv -f "$tmp" "$path"
  changed=true
}

# tree_hash DIR: content hash of a package tree, ignoring byte-code caches.
tree_hash() {
  (cd "$1" && find media_pipeline -type f ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# --- package ----------------------------------------------------------------------------
step "Unpacking $(basename "$tarball")"
tar -xzf "$tarball" -C "$work" --no-same-owner
[[ -f $work/media_pipeline/__init__.py ]] || die "$tarball does not contain media_pipeline/__init__.py"
find "$work/media_pipeline" -name __pycache__ -type d -prune -exec rm -rf {} +
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$work/media_pipeline/__init__.py")
[[ -n $version ]] || die "media_pipeline/__init__.py has no __version__"
hash=$(tree_hash "$work")
ok "media_pipeline $version ($hash)"

base=$root/opt/media-pipeline
release=releases/$version-$hash
link=$base/media_pipeline
step "Installing the package to /opt/media-pipeline"
if [[ -d $base/$release && $(tree_hash "$base/$release") != "$hash" ]]; then
  warn "installed files differ from the release; reinstalling"
  rm -rf "${base:?}/$release"
fi
if [[ ! -d $base/$release ]]; then
  mkdir -p "$base/releases"
  rm -rf "$base/$release.tmp"
  mkdir -p "$base/$release.tmp"
  cp -R "$work/media_pipeline" "$base/$release.tmp/"
  chmod -R u=rwX,go=rX "$base/$release.tmp"
  python3 -m compileall -q "$base/$release.tmp/media_pipeline" >/dev/null 2>&1 ||
    warn "could not precompile the package (it still works)"
  mv -T "$base/$release.tmp" "$base/$release"
  changed=true
fi
if [[ $(readlink "$link" 2>/dev/null || true) != "$release/media_pipeline" ]]; then
  old=""
  if [[ -d $link && ! -L $link ]]; then # a plain directory from a hand install: move it aside
    old=$base/.media_pipeline.old.$$
    mv -T "$link" "$old"
  fi
  ln -sfn "$release/media_pipeline" "$base/.media_pipeline.new"
  mv -T "$base/.media_pipeline.new" "$link" # rename(2): the switch is atomic
  [[ -z $old ]] || rm -rf "$old"
  changed=true
fi
for dir in "$base"/releases/*; do
  [[ -e $dir && $dir != "$base/$release" ]] || continue
  rm -rf "$dir"
done
ok "/opt/media-pipeline/media_pipeline -> $release/media_pipeline"

if [[ $role == ripper ]]; then
  commands=(media-rip:rip) service_name=media-rip etc_dir=media-rip
else
  commands=(media-transcode:transcode media-pipeline:service) service_name=media-pipeline etc_dir=media-pipeline
fi
step "Installing /usr/local/bin/{$(IFS=,; echo "${commands[*]%%:*}")}"
for cmd in "${commands[@]}"; do
  write_file "$root/usr/local/bin/${cmd%%:*}" 0755 <<EOF || true
#!/bin/sh
# Installed by ct-install-pipeline.sh: the media_pipeline package runs on Debian's python3.
PYTHONPATH=/opt/media-pipeline
export PYTHONPATH
exec python3 -m media_pipeline.${cmd#*:} "\$@"
EOF
done
ok "commands ready"

# --- config -----------------------------------------------------------------------------
step "Writing /etc/$etc_dir/config.json"
config=$root/etc/$etc_dir/config.json
if [[ $role == ripper ]]; then
  rendered=$(PYTHONPATH=$base/$release python3 -m media_pipeline.config render --rip --base "$config" \
    "staging=$staging" "device=$device" "drive=$drive" "min_length=$min_length" "auto_rip=$auto_rip" "eject=$eject" \
    "metrics_port=$metrics_port" "metrics_bind=$metrics_bind" "metrics_allow=$metrics_allow" "status_file=$rip_status") ||
    die "the settings above are not a valid media-rip config" 2
else
  password_flag=()
  if $web_password_stdin; then password_flag=(--web-password-stdin); fi
  rendered=$(printf '%s\n' "$web_password" | PYTHONPATH=$base/$release python3 -m media_pipeline.config render \
    --base "$config" "${password_flag[@]}" \
    "staging=$staging" "movies=$movies" "tv=$tv" "languages=$languages" "encoder=$encoder" \
    "preset=$preset" "crf=$crf" "qsv_device=$qsv_device" "keep_source=$keep_source" "metrics_port=$metrics_port" \
    "metrics_bind=$metrics_bind" "metrics_allow=$metrics_allow" "web_port=$web_port" "web_bind=$web_bind" \
    "gpu_proof_file=$gpu_proof" "rip_status_file=$rip_status" "public_url=$public_url" "trusted_proxies=$trusted_proxies" \
    "jellyfin_url=$jellyfin_url" "jellyfin_api_key_file=$jellyfin_api_key_file" \
    "jellyfin_path_map=$jellyfin_path_map" \
    "db=${db:-/var/lib/media-pipeline/jobs.sqlite3}" "db_password_file=$db_password_file" \
    "worker_name=$worker_name" "lease_seconds=${lease_seconds:-60}") ||
    die "the settings above are not a valid config" 2
fi
# It may hold notification tokens: root writes it, the service user's group reads it.
config_owner=""
if $user_exists; then config_owner=0:$(id -g "$user"); fi
if write_file "$config" 0640 "$config_owner" <<<"$rendered"; then ok "config written"; else ok "config unchanged"; fi

if [[ $role == transcoder && -n $jellyfin_url && ! -f $root$jellyfin_api_key_file ]]; then
  warn "$jellyfin_api_key_file does not exist yet: Jellyfin refreshes fail until python3 -m media_pipeline.jellyfin configure --key-file $jellyfin_api_key_file --key-owner $user writes it"
fi

state=$root/var/lib/$service_name
if [[ ! -d $state ]]; then
  mkdir -p "$state"
  changed=true
fi
if $user_exists && [[ $(id -u) -eq 0 && $(stat -c %U "$state") != "$user" ]]; then
  chown "$user:" "$state"
  changed=true
fi

# --- an existing SQLite store moves into the queue (once; idempotent) --------------------
old_store=$root/var/lib/media-pipeline/jobs.sqlite3
if $queue_url && [[ -z $root && -s $old_store && ! -e $old_store.migrated ]]; then
  step "Moving the jobs of $old_store into the queue (media-pipeline migrate)"
  [[ -r $db_password_file ]] || die "$db_password_file is missing: the queue's password must be there before the install (ct-secret-file.sh)"
  systemctl stop media-pipeline.service 2>/dev/null || true # no job may change under the copy
  run_as "$user" /usr/local/bin/media-pipeline migrate --from "$old_store" --to "$db" >&2 ||
    die "media-pipeline migrate failed: $old_store is left as it was; fix the queue and run again"
  touch "$old_store.migrated"
  changed=true
  ok "moved; $old_store is kept as it was (its copy is in the queue)"
fi

# --- service ----------------------------------------------------------------------------
step "Installing $service_name.service"
unit=$root/etc/systemd/system/$service_name.service
unit_changed=false
if [[ $role == ripper ]]; then
  if write_file "$unit" 0644 <<EOF; then unit_changed=true; fi
[Unit]
Description=Media rip: rip each new disc in ${device:-drive $drive} into staging with MakeMKV
After=local-fs.target

[Service]
Type=simple
User=$user
${drive_gid:+SupplementaryGroups=$drive_gid
}ExecStart=/usr/local/bin/media-rip run
Restart=on-failure
RestartSec=10
StateDirectory=media-rip
UMask=0002
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
EOF
elif write_file "$unit" 0644 <<EOF; then unit_changed=true; fi
[Unit]
Description=Media pipeline: transcode finished rips from staging into the library
After=local-fs.target network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$user
ExecStart=/usr/local/bin/media-pipeline run
Restart=on-failure
RestartSec=10
StateDirectory=media-pipeline
UMask=0002
Nice=10
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
EOF
wants=$root/etc/systemd/system/multi-user.target.wants
service=enabled
if [[ -z $root && -d /run/systemd/system ]]; then
  if $unit_changed; then systemctl daemon-reload; fi
  if ! systemctl is-enabled --quiet "$service_name.service"; then
    quiet systemctl enable "$service_name.service"
    changed=true
  fi
  if $changed; then
    systemctl restart "$service_name.service"
  elif ! systemctl is-active --quiet "$service_name.service"; then
    systemctl start "$service_name.service"
    changed=true
  fi
  service=active
  ok "$service_name.service enabled and running"
else
  if [[ $(readlink "$wants/$service_name.service" 2>/dev/null || true) != "/etc/systemd/system/$service_name.service" ]]; then
    mkdir -p "$wants"
    ln -sfn "/etc/systemd/system/$service_name.service" "$wants/$service_name.service"
    changed=true
  fi
  if [[ -n $root ]]; then
    ok "unit enabled under $root (not started: --root)"
  else
    warn "systemd is not PID 1 here: the unit is enabled (symlink) but not started"
  fi
fi

python3 - "$version" "$changed" "$service" "$service_name" "$etc_dir" <<'EOF'
import json, sys
version, changed, service, name, etc = sys.argv[1:6]
print(json.dumps({
    "installed": "/opt/media-pipeline/media_pipeline",
    "version": version,
    "unit": f"/etc/systemd/system/{name}.service",
    "config": f"/etc/{etc}/config.json",
    "changed": changed == "true",
    "service": service,
}))
EOF
