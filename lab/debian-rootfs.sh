#!/usr/bin/env bash
# Make a Debian 12 root filesystem at DEST from a cached debootstrap tree (optionally a variant of it).
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib-exec.sh"

usage() {
  cat <<'USAGE'
Usage: lab/debian-rootfs.sh [--cache DIR] [--mirror URL] [--variant NAME --packages "PKG ..."] [DEST]

Copies a cached Debian 12 (bookworm) debootstrap tree to DEST. The cache is
built once (debootstrap --variant=minbase plus a few base tools) and reused.
  --cache DIR       cache directory (default: $LAB_CACHE or ~/.cache/homelab-media/rootfs)
  --mirror URL      Debian mirror (default: the first deb.debian.org-style URI of this machine's apt sources)
  --variant NAME    copy (and build once) the variant NAME instead of the bare tree: the
                    cached tree plus --packages, installed with apt inside the tree, with
                    apt sources like a Proxmox template or node (bookworm, bookworm-updates,
                    bookworm-security; main contrib) and a policy-rc.d that keeps services
                    from starting in a chroot. Cached as DIR/bookworm-NAME; rebuilt when the
                    package list changes.
  --packages "..."  packages of the variant (needed with --variant)
  --apt-cache DIR   .deb cache shared with the lab (default: $LAB_APT_CACHE or
                    ~/.cache/homelab-media/apt-archives); saves downloads across builds
DEST is replaced only if it does not exist yet (idempotent: an existing DEST is kept).
Without DEST, only the cache (and the variant) is built.
Builds are serialised with a lock on DIR/.lock; debootstrap never runs twice into one cache.
USAGE
}

cache=${LAB_CACHE:-${HOME}/.cache/homelab-media/rootfs}
apt_cache=${LAB_APT_CACHE:-${HOME}/.cache/homelab-media/apt-archives}
mirror=""
dest=""
variant=""
packages=""
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --cache) cache=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --variant) variant=$2; shift 2 ;;
    --packages) packages=$2; shift 2 ;;
    --apt-cache) apt_cache=$2; shift 2 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) dest=$1; shift ;;
  esac
done
[[ -z $variant || $variant =~ ^[a-z0-9-]+$ ]] || die "--variant must be a short name like 'node' or 'ct', got '$variant'"
[[ -z $variant || -n $packages ]] || die "--variant $variant needs --packages (see --help)"
need_root
command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install debootstrap)"

if [[ -z $mirror ]]; then
  mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
mirror=${mirror%/}

mkdir -p "$cache" "$apt_cache"
exec 9>"$cache/.lock"
if ! flock -n 9; then
  step "Waiting for another build of the cache in $cache"
  flock 9
fi

tree="$cache/bookworm"
if [[ ! -f $tree/.complete ]]; then
  step "Building the cached Debian 12 tree in $tree (once; a few minutes)"
  rm -rf "$tree"
  quiet debootstrap --variant=minbase \
    --include=passwd,login,procps,iproute2,ca-certificates,python3,jq,util-linux,findutils,kmod \
    bookworm "$tree" "$mirror"
  touch "$tree/.complete"
  ok "Built the cached Debian 12 tree"
fi

# share_debs FROM TO: hard-link (or copy, across filesystems) the .deb files of FROM into TO.
share_debs() {
  local from=$1 to=$2 f
  for f in "$from"/*.deb; do
    [[ -f $f && ! -e $to/${f##*/} ]] || continue
    ln "$f" "$to/" 2>/dev/null || cp -p "$f" "$to/"
  done
}

# in_tree ROOT CMD...: run CMD chrooted in ROOT inside a private mount namespace with /proc
# and the host's DNS, so nothing it mounts or starts outlives it.
in_tree() {
  local root=$1
  shift
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # shellcheck disable=SC2016  # expanded by the inner bash
  unshare --mount --propagation private --fork -- bash -c '
    set -e
    root=$1; shift
    mount -t proc proc "$root/proc"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
  ' in_tree "$root" "$@"
}

if [[ -n $variant ]]; then
  vtree="$cache/bookworm-$variant"
  want="packages: $packages"
  if [[ ! -f $vtree/.complete || $(cat "$vtree/.complete") != "$want" ]]; then
    step "Building the '$variant' variant in $vtree: $packages (once)"
    rm -rf "$vtree" "$vtree.partial"
    cp -a "$tree" "$vtree.partial"
    rm -f "$vtree.partial/.complete"
    security=http://deb.debian.org/debian-security
    [[ $mirror == */debian ]] && security="${mirror%/debian}/debian-security"
    cat >"$vtree.partial/etc/apt/sources.list" <<EOF
deb $mirror bookworm main contrib
deb $mirror bookworm-updates main contrib
deb $security bookworm-security main contrib
EOF
    # No daemons from package scripts: a chroot has no init, they would run on this machine.
    printf '#!/bin/sh\n# lab: no service starts inside a chroot\nexit 101\n' >"$vtree.partial/usr/sbin/policy-rc.d"
    chmod 0755 "$vtree.partial/usr/sbin/policy-rc.d"
    share_debs "$apt_cache" "$vtree.partial/var/cache/apt/archives"
    read -r -a pkgs <<<"$packages"
    quiet retry 3 5 in_tree "$vtree.partial" apt-get -q update
    quiet retry 2 5 in_tree "$vtree.partial" apt-get -q -y --no-install-recommends install "${pkgs[@]}"
    share_debs "$vtree.partial/var/cache/apt/archives" "$apt_cache"
    rm -f "$vtree.partial"/var/cache/apt/archives/*.deb
    # Like a template: no package lists (the first apt-get update fetches them), no host keys.
    find "$vtree.partial/var/lib/apt/lists" -mindepth 1 -maxdepth 1 -type f -delete
    rm -f "$vtree.partial"/etc/ssh/ssh_host_*
    printf '%s\n' "$want" >"$vtree.partial/.complete"
    mv "$vtree.partial" "$vtree"
    ok "Built the '$variant' variant"
  fi
  tree=$vtree
fi

[[ -n $dest ]] || exit 0
if [[ -e $dest ]]; then
  ok "$dest exists; kept"
  exit 0
fi
step "Copying the Debian 12 tree${variant:+ ($variant)} to $dest"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
cp -a "$tree" "$dest.partial"
rm -f "$dest.partial/.complete"
mv "$dest.partial" "$dest"
ok "Debian 12 tree ready at $dest"
