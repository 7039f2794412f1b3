#!/usr/bin/env bash
# Make a Debian 12 root filesystem at DEST from a cached debootstrap tree.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
  cat <<'USAGE'
Usage: scripts/lab/debian-rootfs.sh [--cache DIR] [--mirror URL] DEST

Copies a cached Debian 12 (bookworm) debootstrap tree to DEST. The cache is
built once (debootstrap --variant=minbase plus a few base tools) and reused.
  --cache DIR   cache directory (default: $LAB_CACHE or ~/.cache/homelab-media/rootfs)
  --mirror URL  Debian mirror (default: the first deb.debian.org-style URI of this machine's apt sources)
DEST is replaced only if it does not exist yet (idempotent: an existing DEST is kept).
USAGE
}

cache=${LAB_CACHE:-${HOME}/.cache/homelab-media/rootfs}
mirror=""
dest=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --cache) cache=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) dest=$1; shift ;;
  esac
done
[[ -n $dest ]] || die "DEST missing (see --help)"
need_root
command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install debootstrap)"

if [[ -z $mirror ]]; then
  mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

tree="$cache/bookworm"
if [[ ! -f $tree/.complete ]]; then
  step "Building the cached Debian 12 tree in $tree (once; a few minutes)"
  rm -rf "$tree"
  mkdir -p "$cache"
  quiet debootstrap --variant=minbase \
    --include=passwd,login,procps,iproute2,ca-certificates,python3,jq,util-linux,findutils,kmod \
    bookworm "$tree" "$mirror"
  touch "$tree/.complete"
  ok "Built the cached Debian 12 tree"
fi

if [[ -e $dest ]]; then
  ok "$dest exists; kept"
  exit 0
fi
step "Copying the Debian 12 tree to $dest"
mkdir -p "$(dirname "$dest")"
cp -a "$tree" "$dest.partial"
rm -f "$dest.partial/.complete"
mv "$dest.partial" "$dest"
ok "Debian 12 tree ready at $dest"
