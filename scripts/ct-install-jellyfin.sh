#!/usr/bin/env bash
# Inside the Jellyfin container: Jellyfin's own apt repository (key pinned by fingerprint), its packages, the render group.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"

# Jellyfin's repository, key and fingerprint as its installer (repo.jellyfin.org/install-debuntu.sh)
# and its packaging (jellyfin/jellyfin-packaging debian/control) give them; docs/adr/0014.
DEFAULT_REPO=https://repo.jellyfin.org/debian
DEFAULT_KEY_URL=https://repo.jellyfin.org/jellyfin_team.gpg.key
DEFAULT_FPR=4918AABC486CA052358D778D49023CD01DE21A7B
DEFAULT_PACKAGES="jellyfin-server jellyfin-web jellyfin-ffmpeg7"

usage() {
  cat <<USAGE
Usage: ct-install-jellyfin.sh [--render-gid N] [--repo URL] [--suite NAME] [--key-url URL]
         [--fingerprint HEX40] [--packages "PKG ..."] [--user jellyfin]

Inside the Jellyfin container (Debian 12), as root:
  1. the render group with the gid PVE gives the passed-through render node (devN
     gid=N, read from the template by host-template-group.sh): created with N if
     missing; an existing render group with another gid is refused (the device
     node would belong to another group);
  2. gpg, ca-certificates and python3 from the container's own Debian mirror, if missing;
  3. Jellyfin's signing key from --key-url, accepted only if it holds exactly one key,
     the one with --fingerprint; written to /etc/apt/keyrings/jellyfin.gpg (binary).
     A wrong fingerprint is refused before anything of Jellyfin's is written;
  4. /etc/apt/sources.list.d/jellyfin.sources (deb822, Signed-By that keyring):
     --repo, suite (default: this system's VERSION_CODENAME), component main;
  5. apt-get update + install of the missing packages among --packages
     (nothing is fetched when all are installed and the repository is unchanged);
  6. the jellyfin user in the render group;
  7. jellyfin.service enabled and started, only when systemd runs (not in a chroot).
A second run changes nothing.

Defaults: --repo $DEFAULT_REPO
          --key-url $DEFAULT_KEY_URL
          --fingerprint $DEFAULT_FPR
          --packages "$DEFAULT_PACKAGES"

stdout: JSON {"repo","suite","fingerprint","keyring","sources","packages":{name:version},
              "installed":[newly installed],"render_group":{"gid","members":[...]}|null,
              "service":"active"|"inactive"|"no systemd","changed":[...]}
USAGE
}

repo=$DEFAULT_REPO key_url=$DEFAULT_KEY_URL fpr=$DEFAULT_FPR suite="" render_gid="" user=jellyfin
packages=$DEFAULT_PACKAGES
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --render-gid) need_arg "$@"; need_int --render-gid "$2"; render_gid=$2; shift 2 ;;
    --repo) need_arg "$@"; repo=$2; shift 2 ;;
    --suite) need_arg "$@"; suite=$2; shift 2 ;;
    --key-url) need_arg "$@"; key_url=$2; shift 2 ;;
    --fingerprint) need_arg "$@"; fpr=$2; shift 2 ;;
    --packages) need_arg "$@"; packages=$2; shift 2 ;;
    --user) need_arg "$@"; need_name --user "$2"; user=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
fpr=${fpr^^}
fpr=${fpr// /}
[[ $fpr =~ ^[0-9A-F]{40}$ ]] || die "--fingerprint must be the key's 40 hex digits, got '$fpr'"
[[ $repo =~ ^https?://[^[:space:]]+$ ]] || die "--repo must be an http(s) URL, got '$repo'"
[[ $key_url =~ ^https?://[^[:space:]]+$ ]] || die "--key-url must be an http(s) URL, got '$key_url'"
read -r -a want_pkgs <<<"$packages"
[[ ${#want_pkgs[@]} -gt 0 ]] || die "--packages is empty"
need_root
export DEBIAN_FRONTEND=noninteractive

keyring=/etc/apt/keyrings/jellyfin.gpg
sources=/etc/apt/sources.list.d/jellyfin.sources
if [[ -z $suite ]]; then
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n $suite ]] || die "no VERSION_CODENAME in /etc/os-release: pass --suite (e.g. bookworm)"
fi
installed_new=()

step "The render group"
if [[ -n $render_gid ]]; then
  have=$(getent group render | cut -d: -f3 || true)
  if [[ -z $have ]]; then
    holder=$(getent group "$render_gid" | cut -d: -f1 || true)
    [[ -z $holder ]] || die "gid $render_gid is group '$holder' in this container, not render: the passed-through render node (devN gid=$render_gid) would belong to it. Rename that group or free the gid, then re-run."
    groupadd --system -g "$render_gid" render
    changed "render group created with gid $render_gid (the devN node's gid)"
  elif [[ $have != "$render_gid" ]]; then
    die "the container's render group is gid $have, but the render node is passed through with gid=$render_gid (read from the template by host-template-group.sh): the jellyfin user could not open it. Recreate the container from the template, or set the group to $render_gid (groupmod -g $render_gid render) and re-run."
  else
    ok "render is gid $render_gid"
  fi
else
  ok "no GPU (jellyfin.gpu none, or no render node): no render group needed"
fi

step "gpg, ca-certificates, python3 (the configure CLI)"
mapfile -t missing < <(apt_missing gpg ca-certificates python3)
if [[ ${#missing[@]} -gt 0 ]]; then
  apt_quiet update
  apt_quiet install -y --no-install-recommends "${missing[@]}"
  installed_new+=("${missing[@]}")
  changed "installed ${missing[*]}"
else
  ok "present"
fi

step "Jellyfin's signing key ($key_url)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt's own downloader: no curl or wget needed in a minimal template
if ! /usr/lib/apt/apt-helper download-file "$key_url" "$work/key" >"$work/dl.log" 2>&1; then
  die "could not download the key from $key_url: $(tail -n 1 "$work/dl.log"). Nothing was written."
fi
export GNUPGHOME=$work/gnupg
mkdir -m 0700 "$GNUPGHOME"
# --show-keys reads the file without importing it (no keyring, no gpg-agent needed)
colons=$(gpg --batch --show-keys --with-colons "$work/key" 2>/dev/null) ||
  die "$key_url is not an OpenPGP key. Nothing was written."
# the fingerprints of the primary keys the file holds (the "fpr" line right after each "pub")
mapfile -t fprs < <(awk -F: '$1 == "pub" { p = 1; next } $1 == "fpr" && p { print $10; p = 0 }' <<<"$colons")
if [[ ${#fprs[@]} -ne 1 || ${fprs[0]:-} != "$fpr" ]]; then
  die "the key at $key_url has fingerprint ${fprs[*]:-none}, not the pinned $fpr: refused (a changed or forged key, or more than one). Nothing was written. If Jellyfin rotated its key, check the new fingerprint on jellyfin.org and pass it with --fingerprint."
fi
# apt's signed-by takes a binary keyring (or an armored .asc): the key, dearmored
if grep -q -- '-----BEGIN PGP PUBLIC KEY BLOCK-----' "$work/key"; then
  gpg --batch --dearmor <"$work/key" >"$work/jellyfin.gpg"
else
  cp "$work/key" "$work/jellyfin.gpg"
fi
ok "fingerprint $fpr"
mkdir -p /etc/apt/keyrings
repo_changed=0
if write_if_changed "$keyring" 0644 <"$work/jellyfin.gpg"; then
  repo_changed=1
  changed "$keyring"
fi

step "Jellyfin's apt source ($repo $suite main)"
arch=$(dpkg --print-architecture)
mkdir -p "$(dirname "$sources")"
if printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nArchitectures: %s\nSigned-By: %s\n' \
  "$repo" "$suite" "$arch" "$keyring" | write_if_changed "$sources" 0644; then
  repo_changed=1
  changed "$sources"
else
  ok "$sources unchanged"
fi

step "Jellyfin's packages (${want_pkgs[*]})"
mapfile -t missing < <(apt_missing "${want_pkgs[@]}")
if ((repo_changed)) || [[ ${#missing[@]} -gt 0 ]]; then
  apt_quiet update
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  apt_quiet install -y "${missing[@]}"
  installed_new+=("${missing[@]}")
  changed "installed ${missing[*]}"
else
  ok "all installed"
fi

step "The $user user in the render group"
getent passwd "$user" >/dev/null || die "user $user does not exist after installing jellyfin-server (its postinst makes it)"
members=""
if getent group render >/dev/null; then
  if id -nG "$user" | tr ' ' '\n' | grep -qx render; then
    ok "$user is in render"
  else
    usermod -aG render "$user"
    changed "$user added to render"
  fi
  members=$(getent group render | cut -d: -f4)
else
  ok "no render group here: nothing to join"
fi

step "jellyfin.service"
if [[ -d /run/systemd/system ]]; then
  if ! systemctl is-enabled --quiet jellyfin 2>/dev/null; then
    systemctl enable --quiet jellyfin
    changed "jellyfin enabled"
  fi
  if ! systemctl is-active --quiet jellyfin; then
    systemctl start jellyfin
    changed "jellyfin started"
  fi
  service=$(systemctl is-active jellyfin || true)
  ok "jellyfin is $service"
else
  service="no systemd"
  ok "systemd is not running here (a chroot): not started"
fi

pkg_json=()
for p in "${want_pkgs[@]}"; do
  pkg_json+=("$p" "$(json_str_or_null "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)")")
done
group_json=null
if [[ -n $render_gid ]]; then
  IFS=, read -r -a mem <<<"$members"
  group_json=$(json_obj gid "$render_gid" members "$(json_arr "${mem[@]}")")
fi
json_obj repo "$(json_str "$repo")" suite "$(json_str "$suite")" fingerprint "$(json_str "$fpr")" \
  keyring "$(json_str "$keyring")" sources "$(json_str "$sources")" packages "$(json_obj "${pkg_json[@]}")" \
  installed "$(json_arr "${installed_new[@]}")" render_group "$group_json" service "$(json_str "$service")" \
  changed "$(json_arr "${CHANGED[@]}")"
echo
