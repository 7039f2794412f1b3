#!/usr/bin/env bash
# Inside the monitoring container: Grafana from Grafana's own apt repository (key pinned by fingerprint),
# its settings, provisioning and dashboards.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"

usage() {
  cat <<'USAGE'
Usage: ct-install-grafana.sh --admin-password-stdin [--provisioning DIR]
         [--http-addr ADDR] [--http-port PORT]
         [--repo URL] [--suite stable] [--component main]
         [--key-url URL] [--fingerprint HEX40]
       ct-install-grafana.sh --print-settings [--http-addr ADDR] [--http-port PORT]

Inside the monitoring container (Debian 12), as root:
  1. gpg, ca-certificates and curl, if missing (apt-get update + install);
  2. Grafana's signing key downloaded from --key-url and checked with
     `gpg --show-keys --with-colons`: it must hold exactly one key, the pinned
     --fingerprint. Any other key stops the run before anything is written;
  3. /etc/apt/keyrings/grafana.asc (0644) and /etc/apt/sources.list.d/grafana.list:
       deb [signed-by=/etc/apt/keyrings/grafana.asc] URL SUITE COMPONENT
     (as Grafana's install guide, with an armored key file);
  4. apt-get update (only when the source changed or grafana is missing) and
     apt-get install grafana (only when missing);
  5. /etc/grafana/grafana.ini (0640 root:grafana): DIR/grafana.ini if the
     provisioning directory has one, else the settings of --http-addr/--http-port
     (see --print-settings: admin_user admin, anonymous access off, no reporting or
     update checks, provisioning from /etc/grafana/provisioning), plus
     [security] admin_password from stdin;
  6. the provisioning directory's files:
       DIR/provisioning/datasources/*.yaml -> /etc/grafana/provisioning/datasources/ (0640 root:grafana)
       DIR/provisioning/dashboards/*.yaml  -> /etc/grafana/provisioning/dashboards/  (0640 root:grafana)
       DIR/dashboards/*.json               -> /var/lib/grafana/dashboards/           (0644)
     A file installed by an earlier run and no longer in DIR is removed
     (the list is kept in /etc/grafana/.homelab-media-files);
  7. Grafana keeps the admin password in its database after its first start:
     admin_password in grafana.ini is read only when that database is created.
     When the password differs from the one in grafana.ini and the database
     exists, `grafana-cli admin reset-admin-password --password-from-stdin` sets it
     (as the grafana user; the password goes through stdin, never argv);
  8. grafana-server enabled and (re)started when something changed, only when
     systemd runs (in a chroot it does not: said, and skipped).

  --admin-password-stdin  the admin password is the first line of stdin (required;
                          at least 4 characters, no double quote)
  --provisioning DIR      files to install (see 5 and 6); components/grafana_render.py renders them
  --provisioning-tar F    the same files as a tar archive (how the stack ships them: a bundle
                          carries plain files only); unpacked into a temporary directory
  --http-addr ADDR        the address Grafana listens on (default: empty, all addresses)
  --http-port PORT        its port (default 3000)
  --repo URL              Grafana's apt repository (default https://apt.grafana.com)
  --suite NAME            (default stable)   --component NAME  (default main)
  --key-url URL           its signing key (default https://apt.grafana.com/gpg.key)
  --fingerprint HEX40     the key's pinned fingerprint (default
                          B53AE77BADB630A683046005963FA27710458545, Grafana's apt key,
                          https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/)
  --print-settings        print grafana.ini's settings for --http-addr/--http-port (no
                          password) and exit; needs no root

stdout: JSON {"version":"<grafana's dpkg version>","fingerprint":"<pinned>",
              "changed":bool,"changes":[...],"password_reset":bool,
              "service":"restarted"|"unchanged"|"no-systemd"}
Exit 1 with a message on stderr on failure.
USAGE
}

GRAFANA_FPR=B53AE77BADB630A683046005963FA27710458545
KEYRING=/etc/apt/keyrings/grafana.asc
SOURCES=/etc/apt/sources.list.d/grafana.list
INI=/etc/grafana/grafana.ini
PROV=/etc/grafana/provisioning
DASHBOARDS=/var/lib/grafana/dashboards
MANIFEST=/etc/grafana/.homelab-media-files
GRAFANA_DB=/var/lib/grafana/grafana.db

repo=https://apt.grafana.com suite=stable component=main key_url=https://apt.grafana.com/gpg.key
fingerprint=$GRAFANA_FPR prov_dir="" prov_tar="" http_addr="" http_port=3000 http_given=0 pw_stdin=0 print_settings=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --repo) need_arg "$@"; repo=${2%/}; shift 2 ;;
    --suite) need_arg "$@"; suite=$2; shift 2 ;;
    --component) need_arg "$@"; component=$2; shift 2 ;;
    --key-url) need_arg "$@"; key_url=$2; shift 2 ;;
    --fingerprint) need_arg "$@"; fingerprint=$2; shift 2 ;;
    --provisioning) need_arg "$@"; prov_dir=${2%/}; shift 2 ;;
    --provisioning-tar) need_arg "$@"; prov_tar=$2; shift 2 ;;
    --http-addr) [[ $# -ge 2 && $2 != --* ]] || die "--http-addr needs a value (see --help)"
      http_addr=$2 http_given=1; shift 2 ;;
    --http-port) need_arg "$@"; http_port=$2 http_given=1; shift 2 ;;
    --admin-password-stdin) pw_stdin=1; shift ;;
    --print-settings) print_settings=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

fingerprint=${fingerprint^^}
fingerprint=${fingerprint// /}
[[ $fingerprint =~ ^[0-9A-F]{40}$ ]] || die "--fingerprint must be a key's 40 hex digit fingerprint, got '$fingerprint'"
if [[ ! $http_port =~ ^[0-9]{1,5}$ ]] || ((10#$http_port < 1 || 10#$http_port > 65535)); then
  die "--http-port must be a port number 1-65535, got '$http_port'"
fi
http_port=$((10#$http_port))
[[ $http_addr =~ ^[A-Za-z0-9.:_-]*$ ]] || die "--http-addr must be an IP address or host name (or empty for all), got '$http_addr'"
[[ $repo =~ ^https?://[^[:space:]]+$ ]] || die "--repo must be an http(s) URL, got '$repo'"
[[ $key_url =~ ^https?://[^[:space:]]+$ ]] || die "--key-url must be an http(s) URL, got '$key_url'"
[[ $suite =~ ^[A-Za-z0-9._/-]+$ ]] || die "--suite must be a suite name like stable, got '$suite'"
[[ $component =~ ^[A-Za-z0-9._-]+$ ]] || die "--component must be a component name like main, got '$component'"

# settings: grafana.ini without the password (components/grafana_render.py grafana_ini_settings renders the same).
settings() {
  cat <<EOF
# Managed by homelab-media (scripts/ct-install-grafana.sh); changes here are overwritten.
[server]
http_addr = $http_addr
http_port = $http_port

[security]
admin_user = admin

[auth.anonymous]
enabled = false

[analytics]
reporting_enabled = false
check_for_updates = false
check_for_plugin_updates = false

[paths]
provisioning = $PROV
EOF
}

if ((print_settings)); then
  settings
  exit 0
fi

need_root
((pw_stdin)) || die "--admin-password-stdin is required: pass the admin password as the first line of stdin (never as an argument)"
password=""
IFS= read -r password || [[ -n $password ]] || die "--admin-password-stdin: stdin is empty; pass the admin password as its first line"
[[ ${#password} -ge 4 ]] || die "the admin password on stdin is shorter than 4 characters (Grafana refuses it); pass a longer one"
[[ $password != *'"'* && $password != *[$'\001'-$'\037']* ]] ||
  die "the admin password on stdin contains a double quote or a control character; grafana.ini cannot hold it (triple-quoted value): choose another"
if [[ -n $prov_tar ]]; then
  [[ -z $prov_dir ]] || die "--provisioning and --provisioning-tar exclude each other: give one"
  [[ -f $prov_tar && -r $prov_tar ]] || die "--provisioning-tar $prov_tar: no such readable file"
  prov_dir=$(mktemp -d)
  trap 'rm -rf "$prov_dir"' EXIT
  tar -xf "$prov_tar" -C "$prov_dir" --no-same-owner || die "--provisioning-tar $prov_tar: not a tar archive"
fi
if [[ -n $prov_dir ]]; then
  [[ -d $prov_dir ]] || die "--provisioning $prov_dir: no such directory"
  if [[ -f $prov_dir/grafana.ini ]] && ((http_given)); then
    die "--provisioning $prov_dir has a grafana.ini, which sets http_addr/http_port itself: drop --http-addr/--http-port (or the file)"
  fi
  if [[ -f $prov_dir/grafana.ini ]] && grep -qiE '^[[:space:]]*admin_password[[:space:]]*=' "$prov_dir/grafana.ini"; then
    die "$prov_dir/grafana.ini sets admin_password: remove that line; the password comes only from stdin (--admin-password-stdin)"
  fi
fi

GNUPGHOME=$(mktemp -d)
export GNUPGHOME
WORK=$(mktemp -d)
cleanup() { rm -rf "$GNUPGHOME" "$WORK" "${prov_tar:+$prov_dir}"; }
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
step "Tools: gpg ca-certificates curl"
mapfile -t missing < <(apt_missing gpg ca-certificates curl)
export DEBIAN_FRONTEND=noninteractive
if [[ ${#missing[@]} -gt 0 ]]; then
  retry 3 10 apt_quiet update || die "apt-get update failed (network, or a broken apt source in /etc/apt?)"
  retry 2 10 apt_quiet install -y --no-install-recommends "${missing[@]}" || die "apt-get install failed for: ${missing[*]}"
  changed "installed ${missing[*]}"
else
  ok "gpg, ca-certificates and curl are installed"
fi

# ---------------------------------------------------------------------------------------------
step "Grafana's signing key from $key_url (pinned: $fingerprint)"
retry 3 5 curl -fsSL --max-time 60 --max-filesize 1000000 -o "$WORK/key" "$key_url" ||
  die "could not download the signing key from $key_url (network? set --key-url if it moved)"
grep -q -- '-----BEGIN PGP PUBLIC KEY BLOCK-----' "$WORK/key" ||
  die "$key_url is not an armored OpenPGP public key (no BEGIN PGP PUBLIC KEY BLOCK line); check --key-url"
colons=$(gpg --batch --quiet --show-keys --with-colons "$WORK/key" 2>"$WORK/gpg.err") ||
  die "gpg cannot read the key from $key_url: $(tail -n 3 "$WORK/gpg.err")"
# the primary keys' fingerprints: the fpr line right after each pub line (sub keys' come after sub lines)
mapfile -t seen < <(awk -F: '$1 == "pub" { p = 1; next } $1 == "fpr" && p { print $10 } { p = 0 }' <<<"$colons")
if [[ ${#seen[@]} -ne 1 || ${seen[0]} != "$fingerprint" ]]; then
  die "the key at $key_url has fingerprint ${seen[*]:-(none)}, but $fingerprint is pinned; no keyring, apt source or Grafana file was written. If Grafana rotated its key, check the new fingerprint on https://grafana.com/docs/grafana/latest/setup-grafana/installation/debian/ and pass it with --fingerprint; otherwise --key-url serves the wrong key"
fi
ok "the key's fingerprint is the pinned $fingerprint"

# ---------------------------------------------------------------------------------------------
# put FILE MODE OWNER:GROUP: write stdin to FILE when it differs, then make its mode and owner these;
# returns 0 when anything changed.
put() {
  local file=$1 mode=$2 owner=$3 rc=1
  if write_if_changed "$file" "$mode"; then rc=0; fi
  if [[ $(stat -c '%a %U:%G' "$file") != "${mode#0} $owner" ]]; then
    chown "$owner" "$file"
    chmod "$mode" "$file"
    rc=0
  fi
  return "$rc"
}

step "apt source: $SOURCES"
install -d -m 0755 /etc/apt/keyrings
sources_changed=0
if put "$KEYRING" 0644 root:root <"$WORK/key"; then changed "wrote $KEYRING"; sources_changed=1; fi
if printf 'deb [signed-by=%s] %s %s %s\n' "$KEYRING" "$repo" "$suite" "$component" | put "$SOURCES" 0644 root:root; then
  changed "wrote $SOURCES ($repo $suite $component)"
  sources_changed=1
fi
((sources_changed)) || ok "$KEYRING and $SOURCES are up to date"

step "Package: grafana"
need_pkg=$(apt_missing grafana)
if [[ -n $need_pkg || $sources_changed -eq 1 ]]; then
  step "apt-get update"
  retry 3 10 apt_quiet update || die "apt-get update failed: is $repo reachable and signed by $fingerprint? (see the log above)"
fi
if [[ -n $need_pkg ]]; then
  step "Installing grafana"
  retry 2 10 apt_quiet install -y --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold grafana ||
    die "apt-get install grafana failed (see the log above)"
  changed "installed grafana $(dpkg-query -W -f='${Version}' grafana)"
else
  ok "grafana is installed"
fi
getent group grafana >/dev/null || die "the grafana package did not create the grafana group; reinstall it (apt-get install --reinstall grafana)"

# ---------------------------------------------------------------------------------------------
step "Settings: $INI"
old_password=""
if [[ -f $INI ]]; then
  old_password=$(awk '/^[[:space:]]*\[/ { s = $0 } s ~ /^[[:space:]]*\[security\]/ && /^[[:space:]]*admin_password[[:space:]]*=/ {
    v = $0; sub(/^[^=]*=[[:space:]]*/, "", v); sub(/^"""/, "", v); sub(/"""[[:space:]]*$/, "", v); print v; exit }' "$INI")
fi
# with_password: the settings on stdin with admin_password after [security]'s first line (a
# triple-quoted value: Grafana's configuration docs, admin_password: "If the password contains # or ;
# you have to wrap it with triple quotes"; the password cannot hold a double quote, checked above;
# a [security] section is added at the end when they have none). printf is a builtin: no argv.
with_password() {
  local line done=0
  while IFS= read -r line || [[ -n $line ]]; do
    printf '%s\n' "$line"
    if ((!done)) && [[ $line =~ ^[[:space:]]*\[security\][[:space:]]*$ ]]; then
      printf 'admin_password = """%s"""\n' "$password"
      done=1
    fi
  done
  ((done)) || printf '\n[security]\nadmin_password = """%s"""\n' "$password"
}
ini_source=flags
if [[ -n $prov_dir && -f $prov_dir/grafana.ini ]]; then
  ini_source=$prov_dir/grafana.ini
  with_password <"$prov_dir/grafana.ini" >"$WORK/grafana.ini"
else
  settings | with_password >"$WORK/grafana.ini"
fi
install -d -m 0755 /etc/grafana
if put "$INI" 0640 root:grafana <"$WORK/grafana.ini"; then
  changed "wrote $INI (settings from $ini_source; admin password from stdin)"
else
  ok "$INI is up to date"
fi

# ---------------------------------------------------------------------------------------------
prov_changed=0
step "Provisioning${prov_dir:+ from $prov_dir}"
declare -A want=()
if [[ -n $prov_dir ]]; then
  for pair in "provisioning/datasources:$PROV/datasources:0640:root:grafana:yaml" \
    "provisioning/dashboards:$PROV/dashboards:0640:root:grafana:yaml" \
    "dashboards:$DASHBOARDS:0644:root:root:json"; do
    IFS=: read -r from to mode owner group ext <<<"$pair"
    [[ -d $prov_dir/$from ]] || continue
    install -d -m 0755 "$to"
    for f in "$prov_dir/$from"/*; do
      [[ -f $f ]] || continue
      [[ $f == *."$ext" || ($ext == yaml && $f == *.yml) ]] ||
        die "$f: only *.$ext files belong in $prov_dir/$from (Grafana reads nothing else there); remove it"
      dest=$to/$(basename "$f")
      want[$dest]=1
      if put "$dest" "$mode" "$owner:$group" <"$f"; then
        changed "wrote $dest"
        prov_changed=1
      fi
    done
  done
fi
if [[ -f $MANIFEST ]]; then
  while IFS= read -r old; do
    [[ -n $old && -z ${want[$old]:-} && -f $old ]] || continue
    rm -f "$old"
    changed "removed $old (no longer in the provisioning directory)"
    prov_changed=1
  done <"$MANIFEST"
fi
if ((${#want[@]})); then printf '%s\n' "${!want[@]}" | sort; fi | put "$MANIFEST" 0644 root:root || true
((prov_changed)) || ok "provisioning files are up to date"

# ---------------------------------------------------------------------------------------------
# Grafana creates the admin user from admin_password only with its database; later it is changed with
# `grafana-cli admin reset-admin-password` (https://grafana.com/docs/grafana/latest/cli/, "Reset admin
# password"), whose --password-from-stdin reads one line of stdin (grafana/grafana
# pkg/cmd/grafana-cli/commands/reset_password_command.go).
password_reset=false
if [[ $password != "$old_password" && -f $GRAFANA_DB ]]; then
  step "Admin password changed: Grafana keeps it in $GRAFANA_DB, so grafana-cli admin reset-admin-password sets it"
  printf '%s\n' "$password" | run_as grafana grafana-cli admin reset-admin-password --password-from-stdin >"$WORK/cli.log" 2>&1 ||
    die "grafana-cli admin reset-admin-password failed: $(tail -n 5 "$WORK/cli.log")"
  password_reset=true
  changed "reset the admin password in $GRAFANA_DB"
fi

# ---------------------------------------------------------------------------------------------
service=unchanged
step "Service: grafana-server"
if [[ ! -d /run/systemd/system ]]; then
  service=no-systemd
  warn "systemd is not running here (a chroot or a build?): grafana-server was not enabled or started"
else
  if [[ $(systemctl is-enabled grafana-server 2>/dev/null || true) != enabled ]]; then
    quiet systemctl daemon-reload
    quiet systemctl enable grafana-server || die "systemctl enable grafana-server failed"
    changed "enabled grafana-server"
  fi
  if [[ ${#CHANGED[@]} -gt 0 ]] || ! systemctl is-active --quiet grafana-server; then
    quiet systemctl restart grafana-server || die "grafana-server did not start: see journalctl -u grafana-server"
    service=restarted
    ok "restarted grafana-server"
  else
    ok "grafana-server is running and nothing changed"
  fi
fi

any=false
[[ ${#CHANGED[@]} -eq 0 ]] || any=true
json_obj version "$(json_str "$(dpkg-query -W -f='${Version}' grafana)")" fingerprint "$(json_str "$fingerprint")" \
  changed "$any" changes "$(json_arr "${CHANGED[@]}")" password_reset "$password_reset" service "$(json_str "$service")"
echo
