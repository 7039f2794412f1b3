#!/bin/bash
# The lab node's stand-in for what PVE does to a container's root filesystem: create it, and set it up before each start.
set -Eeuo pipefail
trap 'echo "lab-lxc-setup: failed at line $LINENO" >&2' ERR

usage() {
  cat <<'USAGE'
Usage: lab-lxc-setup VMID

Installed as /usr/local/sbin/lab-lxc-setup in the lab node by lab/lab-up.sh; the lab's API
(lab/pve-lab.py) runs it in the node before each start of a container, reading
/etc/pve/lxc/VMID.conf:
  - the first time, /var/lib/lxc/VMID/rootfs is copied from the container template
    (/var/lib/lab/ct-template, a Debian 12 tree like PVE's debian-12-standard; what PVE's
    vzcreate extracts), without the template build's policy-rc.d: services start;
  - storage-backed mount points (mpN=<storage>:...) get their directory under
    /var/lib/lxc/VMID/volumes/mpN; for an unprivileged container it and the rootfs's top
    are owned by the mapped root 100000, as PVE's mkfs makes them;
  - then, as PVE::LXC::Setup::Debian does at each start: /etc/hostname, /etc/hosts,
    /etc/network/interfaces (from netN: static, dhcp or manual) and /etc/resolv.conf
    (the conf's nameserver, or the node's), written inside a chroot of the rootfs.
USAGE
}

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
[[ ${1:-} =~ ^[0-9]+$ ]] || { echo "needs a VMID (see --help)" >&2; exit 2; }
vmid=$1
conf=/etc/pve/lxc/$vmid.conf
[[ -f $conf ]] || { echo "Configuration file 'nodes/$(hostname)/lxc/$vmid.conf' does not exist" >&2; exit 1; }
dir=/var/lib/lxc/$vmid
template=/var/lib/lab/ct-template
# key: the main section's value of KEY ("" when absent)
key() { sed -n "/^\[/q; s/^$1: *//p" "$conf" | head -n1; }
opt() { tr ',' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n1; }

mkdir -p "$dir"
if [[ ! -d $dir/rootfs/etc ]]; then
  [[ -f $template/etc/debian_version ]] || { echo "the container template is not mounted at $template" >&2; exit 1; }
  rm -rf --one-file-system "$dir/rootfs" "$dir/rootfs.partial"
  cp -a "$template" "$dir/rootfs.partial"
  rm -f "$dir/rootfs.partial/.complete" "$dir/rootfs.partial/usr/sbin/policy-rc.d"
  mv "$dir/rootfs.partial" "$dir/rootfs"
fi
unpriv=$(key unprivileged)
owner=0
[[ $unpriv == 1 ]] && owner=100000
# an idmapped rootfs (lxc.rootfs.options = idmap=container) keeps the tree as it is; only
# what the container mounts from outside it must be owned by the mapped root
while read -r k v; do
  src=${v%%,*}
  [[ $src == /* ]] && continue
  mkdir -p "$dir/volumes/$k"
  chown "$owner:$owner" "$dir/volumes/$k"
done < <(sed -n '/^\[/q; s/^\(mp[0-9]*\): */\1 /p' "$conf")

hostname=$(key hostname)
hostname=${hostname:-CT$vmid}
{
  printf 'auto lo\niface lo inet loopback\n'
  while read -r k v; do
    name=$(opt "$v" name) ip=$(opt "$v" ip) gw=$(opt "$v" gw)
    [[ -n $name ]] || continue
    printf '\nauto %s\n' "$name"
    case $ip in
      dhcp) printf 'iface %s inet dhcp\n' "$name" ;;
      "" | manual) printf 'iface %s inet manual\n' "$name" ;;
      *) printf 'iface %s inet static\n\taddress %s\n' "$name" "$ip"
         [[ -z $gw ]] || printf '\tgateway %s\n' "$gw" ;;
    esac
  done < <(sed -n '/^\[/q; s/^\(net[0-9]*\): */\1 /p' "$conf")
} >"$dir/.interfaces"
nameserver=$(key nameserver)
if [[ -n $nameserver ]]; then
  for ns in $nameserver; do printf 'nameserver %s\n' "$ns"; done >"$dir/.resolv"
else
  grep '^nameserver' /etc/resolv.conf >"$dir/.resolv"
fi
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 %s\n' "$hostname" >"$dir/.hosts"
printf '%s\n' "$hostname" >"$dir/.hostname"
# written from inside a chroot: a symlink planted in the container cannot point the writes at the node
for f in hostname hosts resolv interfaces; do
  case $f in
    resolv) target=/etc/resolv.conf ;;
    interfaces) target=/etc/network/interfaces ;;
    *) target=/etc/$f ;;
  esac
  # shellcheck disable=SC2016  # expanded by the chroot's sh
  chroot "$dir/rootfs" /bin/sh -c 'mkdir -p "$(dirname "$1")" && rm -f "$1" && cat >"$1"' sh "$target" <"$dir/.$f"
  rm -f "$dir/.$f"
done
