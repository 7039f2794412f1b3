#!/usr/bin/env bash
# Boot the lab node: its own PID and mount namespaces, the mounts it needs, pivot into its tree, run its sshd.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
  cat <<'USAGE'
Usage: unshare --mount --uts --pid --fork --kill-child=SIGTERM --propagation private -- \
         lab/node-boot.sh NODE_ROOT CT_TEMPLATE

Run by lab/lab-up.sh as PID 1 of the node's own PID namespace, in its own mount
namespace (never this machine's) and with its own hostname (the tree's /etc/hostname): nothing mounted here is visible outside, and everything
goes when this init ends, and so does every process of the node and its containers
(the kernel kills a PID namespace with its init).
  NODE_ROOT    the node's Debian 12 tree (.lab/node)
  CT_TEMPLATE  the cached container tree, bound read-only at /var/lib/lab/ct-template
Mounts in the node: /proc, a devpts at /dev/pts, tmpfs /run, the pool
/mnt/storage as a bind mount of itself (a real mount point; `umount /mnt/storage`
in the node makes it "not mounted"). Then pivots into the tree, starts its sshd and stays
as the node's init: reaps orphans, ends on SIGTERM (unshare's --kill-child) with sshd.
USAGE
}

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
[[ $# -eq 2 ]] || die "needs NODE_ROOT and CT_TEMPLATE (see --help)"
root=$(realpath "$1")
template=$(realpath "$2")
[[ -x $root/usr/sbin/sshd ]] || die "$root has no /usr/sbin/sshd; run lab/lab-up.sh"
# Refuse to run in this machine's own namespace: the mounts would leak onto it.
[[ $(readlink /proc/self/ns/mnt) != $(readlink /proc/1/ns/mnt) ]] || die "run me under unshare --mount --uts (see --help)"
[[ $(readlink /proc/self/ns/uts) != $(readlink /proc/1/ns/uts) ]] || die "run me under unshare --mount --uts (see --help)"
[[ $$ -eq 1 ]] || die "run me as PID 1 of a new PID namespace: unshare --pid --fork (see --help)"

hostname "$(cat "$root/etc/hostname")"

mount --make-rprivate /
# The tree becomes the node's root filesystem (pivot_root, not chroot: / is a mount there,
# so findmnt -T /mnt/storage says "/" when the pool is not mounted, as on a real node).
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
mount -t tmpfs -o mode=0755,size=64m run "$root/run"
mkdir -p "$root/run/sshd" "$root/run/lock"
chmod 0755 "$root/run/sshd"
mount --bind "$root/mnt/storage" "$root/mnt/storage"
mount --bind "$template" "$root/var/lib/lab/ct-template"
mount -o remount,bind,ro "$root/var/lib/lab/ct-template"
mkdir -p "$root/.old-root"
cd "$root"
pivot_root . .old-root
umount -l /.old-root
rmdir /.old-root
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
