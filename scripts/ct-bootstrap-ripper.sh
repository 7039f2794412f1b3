#!/usr/bin/env bash
# Inside the ripper container: media user in the node's cdrom group, MakeMKV from pinned tarballs, settings.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"

usage() {
  cat <<'USAGE'
Usage: ct-bootstrap-ripper.sh --user media --cdrom-gid 24 --staging DIR --makemkv-version V
         [--uid 1000] [--gid 1000] [--makemkv-url BASE] [--makemkv-key-stdin] [--skip-makemkv]

Inside the ripper container (Debian 12):
  1. the media user (ct-media-user.sh, next to this script) in the node's cdrom
     group (by number);
  2. MakeMKV V built from makemkv-oss-V.tar.gz and makemkv-bin-V.tar.gz, only
     if makemkvcon V is not installed yet. Both tarballs must match the sha256
     pinned in makemkv-versions.txt (next to this script): an unpinned version
     or a different download is refused before anything is built. Build deps
     come from apt. makemkv-bin's EULA prompt is answered non-interactively
     (tmp/eula_accepted, as jlesage/docker-makemkv does): asking for an install
     means accepting MakeMKV's EULA (https://www.makemkv.com/eula/).
     About 5-15 minutes;
  3. python3 (media-rip runs on Debian's python3), installed from apt when missing;
  4. ~USER/.MakeMKV/settings.conf (0600, owned by USER): app_DestinationDir =
     DIR and, with --makemkv-key-stdin, app_Key = the first line of stdin (the
     key is never printed). Other settings in the file are kept.

  --makemkv-url BASE   where the tarballs are (default https://www.makemkv.com/download;
                       any curl URL such as a local mirror, or a local directory /srv/makemkv).
                       Each tarball is tried at BASE/FILE, then at BASE/old/FILE, where
                       makemkv.com moves a release once a newer one is out; either way
                       it must match its pinned sha256
  --skip-makemkv       do steps 1, 3 and 4 only
Environment: MAKEMKV_PINS overrides the pins file (tests).

stdout: JSON {"user":{ct-media-user JSON},
              "makemkv":{"version","state":"built"|"present"|"skipped","verified":bool},
              "settings":{"path","changed":bool,"key":"set"|"unchanged"|"not given"},
              "changed":bool}
Exit 1 with a message on stderr: unpinned version, checksum mismatch, download or build failure.
USAGE
}

export DEBIAN_FRONTEND=noninteractive
BUILD_DEPS=(build-essential pkg-config libc6-dev libssl-dev libexpat1-dev libavcodec-dev
  zlib1g-dev libcurl4 curl ca-certificates)
STAMP=/var/lib/homelab-media/makemkv.version

user="" uid=1000 gid=1000 cdrom_gid="" staging="" version="" base=https://www.makemkv.com/download
key_stdin=0 skip=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --user) need_arg "$@"; user=$2; shift 2 ;;
    --uid) need_arg "$@"; uid=$2; shift 2 ;;
    --gid) need_arg "$@"; gid=$2; shift 2 ;;
    --cdrom-gid) need_arg "$@"; cdrom_gid=$2; shift 2 ;;
    --staging) need_arg "$@"; staging=$2; shift 2 ;;
    --makemkv-version) need_arg "$@"; version=$2; shift 2 ;;
    --makemkv-url) need_arg "$@"; base=${2%/}; shift 2 ;;
    --makemkv-key-stdin) key_stdin=1; shift ;;
    --skip-makemkv) skip=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $user ]] || die "--user is required (see --help)"
[[ -n $cdrom_gid ]] || die "--cdrom-gid is required (the node's cdrom gid, 24 on PVE 8)"
need_int --cdrom-gid "$cdrom_gid"
[[ $staging == /* ]] || die "--staging must be an absolute path (the staging dir as the container sees it), got '${staging}'"
if ((!skip)); then
  [[ -n $version ]] || die "--makemkv-version is required unless --skip-makemkv"
  [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--makemkv-version must look like 1.18.4, got '$version'"
fi

key=""
if ((key_stdin)); then
  IFS= read -r key || true
  key=${key//[[:space:]]/}
  [[ -n $key ]] || die "--makemkv-key-stdin given but stdin has no key on its first line"
  [[ $key =~ ^[A-Za-z0-9@_=+/.-]+$ ]] || die "the MakeMKV key on stdin has characters a key does not have (${#key} characters read; not shown)"
fi
need_root

# fetch_tarball FILE DEST: FILE from BASE, else from BASE/old (where makemkv.com moves a
# release once a newer one is out); stop naming both places if neither has it.
fetch_tarball() {
  local f=$1 dest=$2 src
  for src in "$base/$f" "$base/old/$f"; do
    if [[ $base == /* ]]; then
      [[ -f $src ]] && cp "$src" "$dest" && { ok "got $src"; return 0; }
    elif retry 2 5 curl -fsSL -o "$dest" "$src"; then
      ok "got $src"
      return 0
    fi
  done
  rm -f "$dest"
  die "could not get $f from $base/$f nor from $base/old/$f (check ${STACK_NS}:makemkv.baseUrl, or pick a pinned version that is still published)"
}

# pinned_sum FILE: print the pinned sha256 of a tarball name (empty if not pinned).
pins=${MAKEMKV_PINS:-$(dirname "${BASH_SOURCE[0]}")/makemkv-versions.txt}
pinned_sum() { awk -v v="$version" -v f="$1" '$1 == v && $2 == f { print $3; exit }' "$pins"; }

# installed_version: the MakeMKV version makemkvcon reports (or the stamp of our last build).
installed_version() {
  local out v=""
  command -v makemkvcon >/dev/null || return 0
  out=$(timeout 60 makemkvcon -r --cache=1 info disc:9999 2>&1 || true)
  [[ $out =~ MakeMKV\ v([0-9]+\.[0-9]+\.[0-9]+) ]] && v=${BASH_REMATCH[1]}
  [[ -n $v || ! -f $STAMP ]] || v=$(<"$STAMP")
  printf '%s\n' "$v"
}

# Refuse an unpinned version before changing anything.
if ((!skip)); then
  [[ -f $pins ]] || die "$pins not found; it must ship next to this script"
  oss="makemkv-oss-$version.tar.gz" bin="makemkv-bin-$version.tar.gz"
  oss_sum=$(pinned_sum "$oss") bin_sum=$(pinned_sum "$bin")
  if [[ -z $oss_sum || -z $bin_sum ]]; then
    die "MakeMKV $version has no pinned sha256 in $(basename "$pins") (pinned: $(awk '!/^#/ && NF { print $1 }' "$pins" | sort -uV | paste -sd' ')); refusing to build an unverified download. Use a pinned version, or add both sums after checking them."
  fi
fi

step "Media user"
user_json=$(bash "$(dirname "${BASH_SOURCE[0]}")/ct-media-user.sh" --user "$user" --uid "$uid" --gid "$gid" \
  --groups "cdrom:$cdrom_gid")
[[ $user_json == *'"changed":[]'* ]] || CHANGED+=("media user")

mk_state=skipped verified=false
if ((skip)); then
  ok "MakeMKV skipped (--skip-makemkv)"
else
  step "MakeMKV $version"
  have=$(installed_version)
  if [[ $have == "$version" ]]; then
    mk_state=present
    # verified only if this script built it (from checked tarballs)
    [[ -f $STAMP && $(<"$STAMP") == "$version" ]] && verified=true
    ok "makemkvcon $version already installed"
  else
    [[ -z $have ]] || warn "makemkvcon $have is installed; building $version"
    [[ $base == /* ]] || command -v curl >/dev/null || {
      step "Installing curl"
      retry 3 10 apt_quiet update
      retry 2 10 apt_quiet install -y --no-install-recommends curl ca-certificates
    }
    work=$(mktemp -d /var/tmp/makemkv-build.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    for f in "$oss" "$bin"; do
      step "Downloading $f from $base (then $base/old)"
      fetch_tarball "$f" "$work/$f"
      want=$([[ $f == "$oss" ]] && echo "$oss_sum" || echo "$bin_sum")
      got=$(sha256sum "$work/$f" | cut -d' ' -f1)
      [[ $got == "$want" ]] || die "$f: sha256 is $got but the pinned sum is $want; refusing to build it (a changed or corrupted download)"
      ok "$f sha256 verified"
    done
    verified=true

    step "Installing build dependencies (${BUILD_DEPS[*]})"
    mapfile -t missing < <(apt_missing "${BUILD_DEPS[@]}")
    if [[ ${#missing[@]} -gt 0 ]]; then
      retry 3 10 apt_quiet update || die "apt-get update failed"
      retry 2 10 apt_quiet install -y --no-install-recommends "${missing[@]}" ||
        die "apt-get install failed for: ${missing[*]}"
      ok "installed ${missing[*]}"
    fi

    step "Building makemkv-oss $version (several minutes)"
    tar -xzf "$work/$oss" -C "$work"
    tar -xzf "$work/$bin" -C "$work"
    (cd "$work/makemkv-oss-$version" && quiet ./configure --disable-gui && quiet make -j"$(nproc)" && quiet make install) ||
      die "building makemkv-oss $version failed (log tail above)"
    step "Installing makemkv-bin $version (EULA accepted non-interactively)"
    mkdir -p "$work/makemkv-bin-$version/tmp"
    echo accepted >"$work/makemkv-bin-$version/tmp/eula_accepted"
    (cd "$work/makemkv-bin-$version" && quiet make install) || die "installing makemkv-bin $version failed (log tail above)"
    command -v ldconfig >/dev/null && ldconfig
    mkdir -p "$(dirname "$STAMP")"
    echo "$version" >"$STAMP"
    mk_state=built
    changed "MakeMKV $version built and installed"
  fi
fi

step "python3 for media-rip"
if [[ -z $(apt_missing python3) ]]; then
  ok "python3 present"
else
  retry 3 10 apt_quiet update || die "apt-get update failed (network, or a broken apt source?)"
  retry 2 10 apt_quiet install -y --no-install-recommends python3 || die "apt-get install failed for: python3"
  changed "installed python3"
fi

step "MakeMKV settings for $user"
home=$(getent passwd "$user" | cut -d: -f6)
[[ -n $home && -d $home ]] || die "home of $user ($home) does not exist"
cfg_dir="$home/.MakeMKV" cfg="$home/.MakeMKV/settings.conf"
if [[ ! -d $cfg_dir ]]; then
  install -d -m 0700 -o "$uid" -g "$gid" "$cfg_dir"
  changed "created $cfg_dir"
fi

# set_setting NAME VALUE: print stdin with NAME = "VALUE" replaced, or appended.
# (The value goes through the environment, not argv: argv is world-readable in /proc.)
set_setting() {
  SET_K=$1 SET_V=$2 awk '
    BEGIN { k = ENVIRON["SET_K"]; v = ENVIRON["SET_V"] }
    $0 ~ "^[ \t]*" k "[ \t]*=" { if (!done) print k " = \"" v "\""; done = 1; next }
    { print }
    END { if (!done) print k " = \"" v "\"" }'
}
current=""
[[ -f $cfg ]] && current=$(<"$cfg")
new=$(if [[ -n $current ]]; then printf '%s\n' "$current"; fi | set_setting app_DestinationDir "$staging")
key_state="not given"
if [[ -n $key ]]; then
  new=$(printf '%s\n' "$new" | set_setting app_Key "$key")
  key_state="unchanged"
  [[ $current == *"app_Key = \"$key\""* ]] || key_state="set"
fi
settings_changed=false
if printf '%s\n' "$new" | write_if_changed "$cfg" 0600; then
  settings_changed=true
  changed "wrote $cfg (app_DestinationDir${key:+, app_Key})"
fi
if [[ -n $(find "$cfg" -maxdepth 0 \( ! -user "$uid" -o ! -group "$gid" -o ! -perm 0600 \) -print) ]]; then
  chown "$uid:$gid" "$cfg"
  chmod 0600 "$cfg"
  settings_changed=true
  changed "$cfg owner/mode set to $user, 0600"
fi
[[ ${#CHANGED[@]} -gt 0 ]] || ok "nothing to change"

any=false
[[ ${#CHANGED[@]} -eq 0 ]] || any=true
json_obj user "$user_json" \
  makemkv "$(json_obj version "$(json_str_or_null "$version")" state "$(json_str "$mk_state")" verified "$verified")" \
  settings "$(json_obj path "$(json_str "$cfg")" changed "$settings_changed" key "$(json_str "$key_state")")" \
  changed "$any"
echo
