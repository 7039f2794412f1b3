#!/usr/bin/env bash
# Boot the lab node: its own PID and mount namespaces, the mounts it needs, pivot into its tree, run its sshd.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
  cat <<'USAGE'
Usage: unshare --mount --uts --pid --cgroup --net --fork --kill-child=SIGTERM --propagation private -- \
         lab/node-boot.sh NODE_ROOT CT_TEMPLATE [--bridge CIDR] [--pool DIR] [--pve-nodes DIR]

Run by lab/lab-up.sh as PID 1 of the node's own PID namespace, in its own mount, UTS,
cgroup and network namespaces (never this machine's), with its own hostname (the tree's
/etc/hostname): nothing mounted here is visible outside, and everything goes when this
init ends, and so does every process of the node and its containers (the kernel kills a
PID namespace with its init). lab-up.sh starts it inside the lab's own cgroup, which is
the root of the node's cgroup namespace.
  NODE_ROOT    the node's Debian 12 tree (.lab/node)
  CT_TEMPLATE  the cached container tree, bound read-only at /var/lib/lab/ct-template
  --bridge CIDR    the node's address on vmbr0 (default 10.99.0.1/24; the second node 10.99.0.2/24)
  --pool DIR       bind DIR at /mnt/storage (default: the tree's own mnt/storage); the second
                   node gets the first one's, so both see one pool, as a cluster's nodes do
  --pve-nodes DIR  bind DIR at /etc/pve/nodes: the first node's, so that every node sees every
                   node's container configs, as pmxcfs shows them (/etc/pve/lxc and
                   /etc/pve/local stay this node's links)
Network (this machine's ip and nft, before the pivot): lo up; the bridge vmbr0 with
10.99.0.1/24, the containers' gateway as on the lab stack; forwarding and a masquerade
of 10.99.0.0/24 out of tap0, the slirp4netns link lab-up.sh adds for the way out; the
containers may not reach this machine's loopback (10.0.2.2), only the node may.
Mounts in the node: /proc, a devpts at /dev/pts, tmpfs /run, cgroup2 at /sys/fs/cgroup
(its root is the lab's cgroup: LXC makes lxc/<id> there and enforces
lxc.cgroup2.devices.* rules through BPF), a full sysfs at /run/lab-sysfs (0700; the
kernel lets an unprivileged container mount sysfs only when one is fully visible), the
pool /mnt/storage as a bind mount of itself (a real mount point; `umount /mnt/storage`
in the node makes it "not mounted"). Then pivots into the tree, moves itself into the
cgroup /init.scope, starts its sshd and stays as the node's init: reaps orphans (lxc-start's
monitors among them), ends on SIGTERM (unshare's --kill-child) with sshd.
USAGE
}

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
[[ $# -ge 2 ]] || die "needs NODE_ROOT and CT_TEMPLATE (see --help)"
root=$(realpath "$1")
template=$(realpath "$2")
shift 2
bridge=10.99.0.1/24
pool=$root/mnt/storage
pve_nodes=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --bridge) bridge=$2; shift 2 ;;
    --pool) pool=$(realpath "$2"); shift 2 ;;
    --pve-nodes) pve_nodes=$(realpath "$2"); shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -x $root/usr/sbin/sshd ]] || die "$root has no /usr/sbin/sshd; run lab/lab-up.sh"
# Refuse to run in this machine's own namespace: the mounts would leak onto it.
[[ $(readlink /proc/self/ns/mnt) != $(readlink /proc/1/ns/mnt) ]] || die "run me under unshare --mount --uts (see --help)"
[[ $(readlink /proc/self/ns/uts) != $(readlink /proc/1/ns/uts) ]] || die "run me under unshare --mount --uts (see --help)"
[[ $$ -eq 1 ]] || die "run me as PID 1 of a new PID namespace: unshare --pid --fork (see --help)"

[[ $(readlink /proc/self/ns/net) != $(readlink /proc/1/ns/net) ]] || die "run me under unshare --net (see --help)"
[[ $(readlink /proc/self/ns/cgroup) != $(readlink /proc/1/ns/cgroup) ]] || die "run me under unshare --cgroup (see --help)"

hostname "$(cat "$root/etc/hostname")"

ip link set lo up
ip link add vmbr0 type bridge
ip addr add "$bridge" dev vmbr0
ip link set vmbr0 up
echo 1 >/proc/sys/net/ipv4/ip_forward
nft -f - <<'NFT'
table ip lab {
  chain postrouting { type nat hook postrouting priority srcnat; ip saddr 10.99.0.0/24 oifname "tap0" masquerade; }
  chain forward { type filter hook forward priority filter; iifname "vmbr0" ip daddr 10.0.2.2 drop; }
}
NFT

mount --make-rprivate /
# The tree becomes the node's root filesystem (pivot_root, not chroot: / is a mount there,
# so findmnt -T /mnt/storage says "/" when the pool is not mounted, as on a real node).
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
mount -t tmpfs -o mode=0755,size=64m run "$root/run"
mkdir -p "$root/run/sshd" "$root/run/lock"
chmod 0755 "$root/run/sshd"
mkdir -p "$root/sys/fs/cgroup"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$root/sys/fs/cgroup"
mkdir -p "$root/sys/fs/cgroup/init.scope"
mkdir -m 0700 "$root/run/lab-sysfs"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$root/run/lab-sysfs"
mount --bind "$pool" "$root/mnt/storage"
if [[ -n $pve_nodes ]]; then
  mkdir -p "$root/etc/pve/nodes"
  mount --bind "$pve_nodes" "$root/etc/pve/nodes"
fi
mount --bind "$template" "$root/var/lib/lab/ct-template"
mount -o remount,bind,ro "$root/var/lib/lab/ct-template"
mkdir -p "$root/.old-root"
cd "$root"
pivot_root . .old-root
umount -l /.old-root
rmdir /.old-root
# out of the namespace's root cgroup, so that LXC may enable controllers below it
echo $$ >/sys/fs/cgroup/init.scope/cgroup.procs
ok "node mounts ready in namespace $(readlink /proc/self/ns/mnt)"
trap - ERR
/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config &
sshd=$!
trap 'kill -TERM "$sshd" 2>/dev/null; exit 0' TERM INT HUP
# The node's init: wait for sshd (bash reaps any orphan handed to PID 1 meanwhile).
while kill -0 "$sshd" 2>/dev/null; do
  wait "$sshd" || true
done
die "the node's sshd ended; see this log"
