#!/usr/bin/env bash
# Start the local lab that stands in for a Proxmox VE node: fakepve API, the node's sshd in its own Debian 12 tree, pct.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib-exec.sh"

usage() {
  cat <<'USAGE'
Usage: lab/lab-up.sh [--no-secrets]

Builds (once) and starts the local lab under .lab/ in the project; safe to run
again (it only does what is missing; a half-dead lab left by a killed run is ended
first, by the pid files and the cgroup it wrote). As root.
  https://127.0.0.1:18006/   the Proxmox API: fakepve (lab/pve-lab.py) as
                             node "pve1", root@pam with a random password; keeps
                             /etc/pve/lxc/<id>.conf of the node tree in step and
                             starts and stops the containers with real LXC
  ssh root@127.0.0.1 -p 12222  the node: a real OpenSSH server, key only, whose
                             sessions run in .lab/node, a Debian 12 tree of its own with
                             Debian's lxc (own mount, PID, UTS, cgroup and network
                             namespaces: /mnt/storage is a mount, fake /dev/dri, /dev/sr0,
                             /dev/sg*, fake sysfs, pct; bridge vmbr0 10.99.0.1/24 with NAT)
  ssh root@127.0.0.1 -p 12223  the second node of the same cluster, "pve2": the same, in
                             .lab/node2, with its own namespaces, sshd and slirp4netns; its
                             /mnt/storage is the first node's pool directory (one pool, as
                             a cluster's nodes share one), its /etc/pve/nodes the first
                             node's (as pmxcfs shows every node's configs); its vmbr0
                             (10.99.0.2/24) is linked to the first node's by a veth pair,
                             so containers on both nodes share one network (gateway 10.99.0.1)
The node lives in its own cgroup (<cgroup2 mount>/homelab-lab-<hash of .lab>), the
root of its cgroup namespace: its containers' cgroups go there, and lab-down.sh ends
everything in it at once (cgroup.kill). slirp4netns links the node's network to this
machine's: the way out for apt, 10.0.2.2 for the node to reach the API, and the
forward of 127.0.0.1:12222 to the node's sshd.
Writes .lab/env (endpoint, node, ssh host/port/key, paths; shell syntax) and, when
the Pulumi CLI is in .tools/, the lab stack's secrets (proxmoxPassword,
sshPrivateKey) into the local backend .pulumi-state/ (passphrase "lab").
  --no-secrets   do not touch the Pulumi stack
Environment: LAB_DIR (default .lab), LAB_CACHE (default ~/.cache/homelab-media/rootfs),
LAB_APT_CACHE (default ~/.cache/homelab-media/apt-archives).
Stop and remove it all with lab/lab-down.sh.
USAGE
}

secrets=1
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --no-secrets) secrets=0; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
need_root

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)
lab=${LAB_DIR:-$project/.lab}
cache=${LAB_CACHE:-$HOME/.cache/homelab-media/rootfs}
apt_cache=${LAB_APT_CACHE:-$HOME/.cache/homelab-media/apt-archives}
export LAB_CACHE=$cache LAB_APT_CACHE=$apt_cache
python=$project/.venv/bin/python
node=$lab/node
node_name=pve1
node2=$lab/node2
node2_name=pve2
host=127.0.0.1
pve_port=18006
ssh_port=12222
ssh2_port=12223
# The node: a PVE host's sshd. Containers: close to Proxmox's debian-12-standard template.
# lxc without recommends: no uidmap, so LXC writes an unprivileged container's ID maps
# itself from /etc/subuid and /etc/subgid (docs/research/real-lxc-spike.md section 4).
node_packages="openssh-server lxc zstd"  # zstd: PVE has it (templates are .tar.zst)
ct_packages="systemd systemd-sysv ifupdown iputils-ping curl wget less vim-tiny locales cron apt-utils"
ssh_opts=(-i "$lab/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5)

step "Checking what the lab needs"
for c in unshare nsenter chroot openssl ssh ssh-keygen curl flock setsid mknod debootstrap ip nft slirp4netns; do
  command -v "$c" >/dev/null || die "$c is missing (make deps, or apt-get install openssh-client openssl curl util-linux debootstrap iproute2 nftables slirp4netns)"
done
[[ -x $python ]] || die "$python is missing (make setup)"
cgroot=$(findmnt -n -t cgroup2 -o TARGET | head -n1)
[[ -n $cgroot ]] || die "no cgroup2 mount on this machine (findmnt -t cgroup2); the lab's LXC needs one"
"$python" -c 'import fakepve' 2>/dev/null || die "fakepve is not installed in .venv (make setup)"
mkdir -p "$lab/log" "$lab/run" "$lab/pve"
chmod 0700 "$lab"
ok "tools present; lab directory $lab"

# alive PIDFILE MARKER: true if the process in PIDFILE runs and its command line contains MARKER.
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# port_busy PORT: true if something listens on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; }

# The lab's cgroup: one per lab directory, so that two labs never share one.
cgroup=$cgroot/homelab-lab-$(printf '%s' "$lab" | sha256sum | cut -c1-12)
populated() { grep -q '^populated 1' "$1/cgroup.events" 2>/dev/null; }

# end_previous: a lab whose API or node died (a killed test run) is ended as a whole: the
# API by its pid file, the node and all it holds (sshd, sessions, containers, slirp4netns)
# by its cgroup; then the empty cgroups go.
end_previous() {
  local pid
  if alive "$lab/run/pve.pid" pve-lab.py; then
    pid=$(cat "$lab/run/pve.pid")
    kill -TERM "$pid" 2>/dev/null || true
    retry 50 0.1 bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
  fi
  if alive "$lab/run/node.pid" node-boot.sh; then
    # SIGKILL of unshare: its --kill-child ends the node's init, and the kernel its PID namespace
    # (unshare ignores SIGTERM); a node of an older lab may have no cgroup of its own
    pid=$(cat "$lab/run/node.pid")
    kill -KILL "$pid" 2>/dev/null || true
    retry 50 0.1 bash -c "! kill -0 $pid 2>/dev/null" || die "the old node (pid $pid) did not end"
  fi
  if [[ -d $cgroup ]]; then
    if populated "$cgroup"; then
      echo 1 >"$cgroup/cgroup.kill"
      retry 100 0.1 bash -c "! grep -q '^populated 1' '$cgroup/cgroup.events'" || die "processes in $cgroup survived cgroup.kill"
    fi
    find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ ! -d $cgroup ]] || die "could not remove the cgroup $cgroup"
  fi
  rm -f "$lab/run/pve.pid" "$lab/run/node.pid" "$lab/run/node.ns" "$lab/run/slirp.pid" "$lab/run/slirp.sock" \
    "$lab/run/standin.pid" "$lab/run/node2.pid" "$lab/run/node2.ns" "$lab/run/slirp2.pid" "$lab/run/slirp2.sock"
}

step "A previous lab here"
if alive "$lab/run/pve.pid" pve-lab.py && alive "$lab/run/node.pid" node-boot.sh && populated "$cgroup" &&
  alive "$lab/run/slirp.pid" slirp4netns && alive "$lab/run/node2.pid" node-boot.sh &&
  alive "$lab/run/slirp2.pid" slirp4netns; then
  ok "running (API pid $(cat "$lab/run/pve.pid"), node pid $(cat "$lab/run/node.pid")): kept"
elif [[ -e $lab/run/pve.pid || -e $lab/run/node.pid || -d $cgroup ]]; then
  end_previous
  ok "a half-dead lab (a killed run?) ended: its processes and cgroup $cgroup are gone"
else
  ok "none"
fi

step "Debian 12 trees for the node and the containers (cached in $cache)"
if [[ -d $node && ! -x $node/usr/bin/lxc-start ]]; then
  die "the node tree $node predates the lab's real LXC; remove the old lab first: make lab-down"
fi
"$here/debian-rootfs.sh" --variant ct --packages "$ct_packages"
"$here/debian-rootfs.sh" --variant node --packages "$node_packages" "$node"
"$here/debian-rootfs.sh" --variant node --packages "$node_packages" "$node2"
ok "trees ready"

step "Lab credentials: SSH key, root@pam password, TLS certificate"
[[ -f $lab/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C homelab-media-lab -f "$lab/id_ed25519"
if [[ ! -s $lab/pve/password ]]; then
  (umask 077 && openssl rand -hex 16 >"$lab/pve/password")
fi
# the stack's other secrets the lab stack needs (Grafana's and Jellyfin's admin passwords): one
# file each under .lab/secrets, named by the config key (lab/run-program.py and the engine read them)
mkdir -p "$lab/secrets"
chmod 0700 "$lab/secrets"
for key in grafanaAdminPassword jellyfinAdminPassword; do
  [[ -s $lab/secrets/$key ]] || (umask 077 && openssl rand -hex 16 >"$lab/secrets/$key")
done
if [[ ! -s $lab/pve/cert.pem ]]; then
  quiet openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$node_name" \
    -addext "subjectAltName=IP:$host,DNS:localhost,DNS:$node_name" \
    -keyout "$lab/pve/key.pem" -out "$lab/pve/cert.pem"
  chmod 0600 "$lab/pve/key.pem"
fi
password=$(cat "$lab/pve/password")
ok "credentials in $lab (id_ed25519, pve/)"

# mk_node ROOT PATH TYPE MAJOR MINOR GROUP: a device node in a node tree (kept if already right).
mk_node() {
  local node=$1
  shift
  local path=$node/dev/$1 type=$2 major=$3 minor=$4 group=$5 want have
  want=$(printf '%x %x' "$major" "$minor")
  have=$(stat -c '%t %T' "$path" 2>/dev/null || true)
  if [[ $have != "$want" ]] || { [[ $type == c ]] && [[ ! -c $path ]]; } || { [[ $type == b ]] && [[ ! -b $path ]]; }; then
    rm -f "$path"
    mkdir -p "$(dirname "$path")"
    mknod "$path" "$type" "$major" "$minor"
  fi
  chown "root:$(awk -F: -v g="$group" '$1 == g { print $3 }' "$node/etc/group")" "$path"
  chmod 0660 "$path"
}

# fake_sysfs ROOT: the sysfs entries the discovery reads (SYSFS_ROOT=/opt/lab/sysfs in the node):
# sg0 is a disk (type 0, sda), sg1 the optical drive (type 5, sr0); card0/renderD128 an Arc GPU.
fake_sysfs() {
  local s=$1/opt/lab/sysfs pci=devices/pci0000:00 d
  d=$s/$pci/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0
  mkdir -p "$d/block/sda" "$d/scsi_generic/sg0"
  printf '0\n' >"$d/type"; printf 'ATA     \n' >"$d/vendor"; printf 'WDC WD40EFRX-68N\n' >"$d/model"
  printf '8:0\n' >"$d/block/sda/dev"; printf '21:0\n' >"$d/scsi_generic/sg0/dev"
  d=$s/$pci/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0
  mkdir -p "$d/block/sr0" "$d/scsi_generic/sg1"
  printf '5\n' >"$d/type"; printf 'HL-DT-ST\n' >"$d/vendor"; printf 'BD-RE WH16NS60  \n' >"$d/model"
  printf '11:0\n' >"$d/block/sr0/dev"; printf '21:1\n' >"$d/scsi_generic/sg1/dev"
  d=$s/$pci/0000:03:00.0
  mkdir -p "$d/drm/card0" "$d/drm/renderD128"
  printf '0x8086\n' >"$d/vendor"; printf '0x56a0\n' >"$d/device"
  printf '226:0\n' >"$d/drm/card0/dev"; printf '226:128\n' >"$d/drm/renderD128/dev"
  mkdir -p "$s/class/scsi_generic" "$s/class/block" "$s/class/drm" "$s/devices/system"
  ln -sfn "../../$pci/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/scsi_generic/sg0" "$s/class/scsi_generic/sg0"
  ln -sfn "../../$pci/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/scsi_generic/sg1" "$s/class/scsi_generic/sg1"
  ln -sfn "../../../0:0:0:0" "$s/$pci/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/scsi_generic/sg0/device"
  ln -sfn "../../../1:0:0:0" "$s/$pci/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/scsi_generic/sg1/device"
  ln -sfn "../../$pci/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda" "$s/class/block/sda"
  ln -sfn "../../$pci/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block/sr0" "$s/class/block/sr0"
  ln -sfn "../../$pci/0000:03:00.0/drm/card0" "$s/class/drm/card0"
  ln -sfn "../../$pci/0000:03:00.0/drm/renderD128" "$s/class/drm/renderD128"
  # as the kernel links it (class/drm/renderD128/device -> ../../../0000:03:00.0): readlink names the PCI address
  ln -sfn ../../../0000:03:00.0 "$d/drm/card0/device"
  ln -sfn ../../../0000:03:00.0 "$d/drm/renderD128/device"
}

# configure_node NAME ROOT SSH_PORT: a node tree made ready to boot (idempotent).
configure_node() {
  local node_name=$1 node=$2 ssh_port=$3
  step "Configuring the node tree $node ($node_name)"
  printf '%s\n' "$node_name" >"$node/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 %s.lab %s\n::1 localhost ip6-localhost ip6-loopback\n' "$node_name" "$node_name" >"$node/etc/hosts"
  # slirp4netns's DNS forwarder: the node and its containers resolve through this machine's resolver
  printf 'nameserver 10.0.2.3\n' >"$node/etc/resolv.conf"
  # as on a PVE node: root may map 100000-165535 for unprivileged containers
  printf 'root:100000:65536\n' >"$node/etc/subuid"
  printf 'root:100000:65536\n' >"$node/etc/subgid"
  if ! grep -q '^render:' "$node/etc/group"; then
    holder=$(awk -F: '$3 == 104 { print $1 }' "$node/etc/group")
    [[ -z $holder ]] || die "gid 104 is taken by group '$holder' in the node tree; a PVE 8 node has render=104 (rm -rf $node and retry)"
    chroot "$node" groupadd -g 104 render
  fi
  mk_node "$node" dri/card0 c 226 0 video
  mk_node "$node" dri/renderD128 c 226 128 render
  mk_node "$node" sr0 b 11 0 cdrom
  mk_node "$node" sg0 c 21 0 disk
  mk_node "$node" sg1 c 21 1 cdrom
  chmod 0755 "$node/dev/dri"
  [[ -L $node/dev/ptmx ]] || { rm -f "$node/dev/ptmx"; ln -s pts/ptmx "$node/dev/ptmx"; }
  fake_sysfs "$node"
  mkdir -p "$node/mnt/storage" "$node/etc/pve/nodes/$node_name/lxc" "$node/var/lib/lxc" "$node/var/lib/lab/ct-template" \
    "$node/var/cache/lab-apt" "$node/opt/lab"
  ln -sfn "nodes/$node_name/lxc" "$node/etc/pve/lxc"
  ln -sfn "nodes/$node_name" "$node/etc/pve/local"
  install -m 0755 "$here/pct.py" "$node/usr/sbin/pct"
  install -m 0755 "$here/lab-session.sh" "$node/usr/local/sbin/lab-session"
  install -m 0755 "$here/lxc-netaddbr.sh" "$node/usr/local/sbin/lab-lxcnetaddbr"
  install -m 0755 "$here/lxc-poststop.sh" "$node/usr/local/sbin/lab-lxc-poststop"
  install -m 0755 "$here/lxc-start.sh" "$node/usr/local/sbin/lab-lxc-start"
  install -m 0755 "$here/lxc-setup.sh" "$node/usr/local/sbin/lab-lxc-setup"
  install -m 0755 "$here/node-systemctl.sh" "$node/usr/local/sbin/systemctl"
  mkdir -p "$node/var/log/lxc"
  install -d -m 0700 "$node/etc/pve-lab"
  (umask 077 && printf '{"url": "https://10.0.2.2:%s/", "node": "%s", "username": "root@pam", "password": "%s"}\n' \
    "$pve_port" "$node_name" "$password" >"$node/etc/pve-lab/api.json")
  install -d -m 0700 "$node/root/.ssh"
  install -m 0600 "$lab/id_ed25519.pub" "$node/root/.ssh/authorized_keys"
  [[ -f $node/etc/ssh/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C "root@$node_name" -f "$node/etc/ssh/ssh_host_ed25519_key"
  cat >"$node/etc/ssh/sshd_config" <<EOF
# The lab node's sshd (written by lab/lab-up.sh). Key only; in the node's own network
# namespace, reached from this machine through slirp4netns's forward of $host:$ssh_port.
Port $ssh_port
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
# as on a Debian/PVE node: other client environment is dropped
AcceptEnv LANG LC_*
# the scripts read the fake sysfs tree (a real node leaves this unset: /sys)
SetEnv SYSFS_ROOT=/opt/lab/sysfs
# Pulumi opens many sessions at once
MaxStartups 200:30:400
MaxSessions 100
LogLevel VERBOSE
PidFile /run/sshd.pid
# every command is logged to /var/log/ssh-commands.log, then run by bash
ForceCommand /usr/local/sbin/lab-session
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  touch "$node/var/log/pct.log" "$node/var/log/ssh-commands.log" "$node/var/log/lxc-events.log"
  # apt's downloads, shared by the container trees (hard links: same filesystem as the trees)
  for f in "$apt_cache"/*.deb; do
    [[ -f $f && ! -e $node/var/cache/lab-apt/${f##*/} ]] || continue
    ln "$f" "$node/var/cache/lab-apt/" 2>/dev/null || cp -p "$f" "$node/var/cache/lab-apt/"
  done
  ok "node $node_name: /dev/dri/{card0,renderD128}, /dev/sr0, /dev/sg0, /dev/sg1, fake sysfs, pct, sshd config"
}
configure_node "$node_name" "$node" "$ssh_port"
configure_node "$node2_name" "$node2" "$ssh2_port"
# the second node shows the first node's container configs (node-boot.sh binds them at /etc/pve/nodes)
mkdir -p "$node/etc/pve/nodes/$node2_name/lxc"

step "Proxmox API (fakepve) on https://$host:$pve_port/"
if alive "$lab/run/pve.pid" pve-lab.py; then
  ok "already running (pid $(cat "$lab/run/pve.pid"))"
else
  port_busy "$pve_port" && die "port $pve_port is in use by another program (ss -ltnp 'sport = :$pve_port'); the lab needs it"
  setsid "$python" "$here/pve-lab.py" --node-root "$node" --node "$node_name" --extra-node "$node2_name=$node2" \
    --host "$host" --port "$pve_port" \
    --password-file "$lab/pve/password" --cert "$lab/pve/cert.pem" --key "$lab/pve/key.pem" \
    >>"$lab/log/pve.log" 2>&1 </dev/null &
  echo $! >"$lab/run/pve.pid"
  retry 100 0.1 port_busy "$pve_port" || die "fakepve did not start; see $lab/log/pve.log"
  ok "started (pid $(cat "$lab/run/pve.pid"), log $lab/log/pve.log)"
fi
curl -skf -o /dev/null --data-urlencode "username=root@pam" --data-urlencode "password=$password" \
  "https://$host:$pve_port/api2/json/access/ticket" || die "fakepve refuses the lab's root@pam password; run lab/lab-down.sh, then lab-up.sh"

# init_of RUN: the node's init (PID 1 of its namespaces), the child of the unshare in $lab/run/RUN.pid.
init_of() { awk '{ print $1 }' "/proc/$(cat "$lab/run/$1.pid")/task/$(cat "$lab/run/$1.pid")/children" 2>/dev/null; }

# start_node NAME ROOT RUN CGROUP SSH_PORT [node-boot.sh options]: boot a node in its own
# namespaces inside CGROUP (the root of its cgroup namespace), with its own slirp4netns (the way
# out, 10.0.2.2 for the API, and the forward of $host:SSH_PORT to its sshd); RUN names its pid
# files ($lab/run/RUN.pid, .ns, .cgroup; the slirp's from RUN with "node" read as "slirp").
start_node() {
  local name=$1 root=$2 run=$3 cg=$4 port=$5
  shift 5
  local slirp=${run/node/slirp}
  step "Node $name on $host:$port (own namespaces and cgroup $cg, pivoted into $root)"
  if alive "$lab/run/$run.pid" node-boot.sh; then
    ok "already running (pid $(cat "$lab/run/$run.pid"))"
  else
    port_busy "$port" && die "port $port is in use by another program (ss -ltnp 'sport = :$port'); the lab needs it"
    mkdir -p "$cg/init.scope"
    # started in its cgroup, so that it is the root of the node's cgroup namespace
    # shellcheck disable=SC2016  # expanded by the inner bash
    setsid bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' lab-node "$cg" \
      unshare --mount --uts --pid --cgroup --net --fork --kill-child=SIGTERM --propagation private -- \
      "$here/node-boot.sh" "$root" "$cache/bookworm-ct" "$@" >>"$lab/log/$run.log" 2>&1 </dev/null &
    echo $! >"$lab/run/$run.pid"
    node_ready() { [[ -n $(init_of "$run") ]] && grep -qx "$(init_of "$run")" "$cg/init.scope/cgroup.procs"; }
    retry 100 0.1 node_ready || die "the node $name did not boot; see $lab/log/$run.log"
    # unshare itself leaves the namespace's root cgroup too (LXC enables controllers there)
    cat "$lab/run/$run.pid" >"$cg/init.scope/cgroup.procs"
    readlink "/proc/$(init_of "$run")/ns/mnt" >"$lab/run/$run.ns"
    rm -f "$lab/run/$slirp.sock"
    # shellcheck disable=SC2016  # expanded by the inner bash
    setsid bash -c 'echo $$ >"$1/init.scope/cgroup.procs"; shift; exec "$@"' lab-slirp "$cg" \
      slirp4netns --configure --mtu=65520 --api-socket "$lab/run/$slirp.sock" "$(init_of "$run")" tap0 \
      >>"$lab/log/$slirp.log" 2>&1 </dev/null &
    echo $! >"$lab/run/$slirp.pid"
    retry 100 0.1 test -S "$lab/run/$slirp.sock" || die "slirp4netns did not start; see $lab/log/$slirp.log"
    "$python" - "$lab/run/$slirp.sock" "$host" "$port" <<'PY' || die "slirp4netns refused the forward of $host:$port; see $lab/log/$slirp.log"
import json, socket, sys
sock, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
s.sendall(json.dumps({"execute": "add_hostfwd", "arguments": {
    "proto": "tcp", "host_addr": host, "host_port": port, "guest_port": port}}).encode())
got = json.loads(s.recv(4096) or b"{}")
if "return" not in got:
    sys.exit(f"slirp4netns: {got}")
PY
    ok "started (pid $(cat "$lab/run/$run.pid"), log $lab/log/$run.log; slirp4netns pid $(cat "$lab/run/$slirp.pid"))"
  fi
  printf '%s\n' "$cg" >"$lab/run/$run.cgroup"
  local got
  node_login() { ssh "${ssh_opts[@]}" -p "$port" "root@$host" true 2>/dev/null; }
  retry 100 0.2 node_login || true
  got=$(ssh "${ssh_opts[@]}" -p "$port" "root@$host" 'hostname; findmnt -n -o TARGET /mnt/storage') ||
    die "cannot log in to the node $name with $lab/id_ed25519; see $lab/log/$run.log"
  [[ $got == "$name"$'\n'/mnt/storage ]] || die "the node $name answered '$got', expected its name and the pool mount"
}
start_node "$node_name" "$node" node "$cgroup" "$ssh_port"
# the second node: a cgroup inside the lab's (lab-down.sh's cgroup.kill ends both), which
# needs the lab's cgroup to hand its controllers down (it holds no process itself: init.scope does)
read -r -a controllers <"$cgroup/cgroup.controllers" || true
for c in "${controllers[@]}"; do
  grep -qw "$c" "$cgroup/cgroup.subtree_control" || echo "+$c" >"$cgroup/cgroup.subtree_control" 2>/dev/null || true
done
start_node "$node2_name" "$node2" node2 "$cgroup/node-$node2_name" "$ssh2_port" \
  --bridge 10.99.0.2/24 --pool "$node/mnt/storage" --pve-nodes "$node/etc/pve/nodes"

# one network for the containers of both nodes, as a cluster's nodes share a LAN: a veth pair
# between the two nodes' vmbr0 (it goes with either node's network namespace)
step "Linking vmbr0 of $node_name and $node2_name"
pid1=$(init_of node)
pid2=$(init_of node2)
if nsenter -t "$pid1" -n ip link show lab-to-pve2 >/dev/null 2>&1; then
  ok "linked already"
else
  ip link add lab-to-pve2 netns "$pid1" type veth peer name lab-to-pve1 netns "$pid2"
  nsenter -t "$pid1" -n ip link set lab-to-pve2 master vmbr0 up
  nsenter -t "$pid2" -n ip link set lab-to-pve1 master vmbr0 up
  # shellcheck disable=SC2016  # expanded by the inner bash
  retry 50 0.1 nsenter -t "$pid2" -n bash -c 'exec 3<>"/dev/tcp/10.99.0.1/$1"' - "$ssh_port" 2>/dev/null ||
    die "$node2_name cannot reach $node_name's sshd at 10.99.0.1:$ssh_port over the link"
  ok "$node2_name (10.99.0.2) reaches $node_name's sshd (10.99.0.1:$ssh_port) over vmbr0"
fi

# Grafana's and Jellyfin's repositories cannot be reached from here: their stand-ins, signed with
# lab/standin-key.asc (Pulumi.lab.yaml pins its fingerprint), served in the node's network on its
# bridge, where the containers reach them; in the lab's cgroup, so lab-down ends it with the rest
step "Stand-in apt repositories (lab/standin-repos.py) on 10.99.0.1:18080 (Grafana's), :18081 (Jellyfin's)"
if alive "$lab/run/standin.pid" standin-repos.py; then
  ok "running (pid $(cat "$lab/run/standin.pid")): kept"
else
  init_pid=$(init_of node)
  mkdir -p "$lab/standin"
  : >"$lab/log/standin.log"
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid bash -c 'echo $$ >"$1/init.scope/cgroup.procs"; shift; exec "$@"' lab-standin "$cgroup" \
    nsenter --target "$init_pid" --net "$python" "$here/standin-repos.py" serve --bind 10.99.0.1 \
    --record "$lab/standin" >>"$lab/log/standin.log" 2>&1 </dev/null &
  echo $! >"$lab/run/standin.pid"
  retry 150 0.2 grep -q '^jellyfin: ' "$lab/log/standin.log" || die "the stand-in repositories did not start; see $lab/log/standin.log"
  ok "serving (pid $(cat "$lab/run/standin.pid"), requests logged in $lab/standin/)"
fi
ok "ssh root@$host -p $ssh_port works; /mnt/storage is a mount point"

step "Writing $lab/env"
cat >"$lab/env" <<EOF
# The local lab (lab/lab-up.sh). Shell syntax: source it.
LAB_DIR=$lab
LAB_ENDPOINT=https://$host:$pve_port/
LAB_PVE_HOST=$host
LAB_PVE_PORT=$pve_port
LAB_NODE=$node_name
LAB_PVE_USER=root@pam
LAB_PVE_PASSWORD_FILE=$lab/pve/password
LAB_SSH_HOST=$host
LAB_SSH_PORT=$ssh_port
LAB_SSH_USER=root
LAB_SSH_KEY=$lab/id_ed25519
LAB_NODE_ROOT=$node
LAB_POOL=$node/mnt/storage
LAB_CONF_DIR=$node/etc/pve/nodes/$node_name/lxc
LAB_CT_DIR=$node/var/lib/lxc
LAB_PCT_LOG=$node/var/log/pct.log
LAB_SSH_LOG=$node/var/log/ssh-commands.log
LAB_EVENTS_LOG=$node/var/log/lxc-events.log
LAB_PVE_PID=$(cat "$lab/run/pve.pid")
LAB_NODE_PID=$(cat "$lab/run/node.pid")
LAB_CGROUP=$cgroup
# the second node of the cluster (same API, same key; its own sshd, tree and namespaces)
LAB_NODE2=$node2_name
LAB_SSH2_PORT=$ssh2_port
LAB_NODE2_ROOT=$node2
LAB_NODE2_PID=$(cat "$lab/run/node2.pid")
LAB_CONF2_DIR=$node/etc/pve/nodes/$node2_name/lxc
LAB_CT2_DIR=$node2/var/lib/lxc
EOF
ok "$lab/env"

if ((secrets)); then
  step "Lab stack secrets (stack lab, backend file://$project/.pulumi-state)"
  # shellcheck source=tools/pulumi-env.sh
  source "$project/tools/pulumi-env.sh"
  if [[ ! -x $project/.tools/bin/pulumi ]] && ! command -v pulumi >/dev/null; then
    warn "no Pulumi CLI yet (.tools/bin/pulumi): secrets not set; run this again after make toolchain"
  elif [[ -x $project/.tools/bin/pulumi ]] && ! bash "$project/tools/toolchain.sh" --check >/dev/null 2>&1; then
    # the engine cannot run here (docs/adr/0002); run-program.py reads the lab's secrets from
    # .lab/ itself, so Pulumi.lab.yaml is left as committed
    ok "engine incomplete: lab stack secrets not written (run-program.py reads them from .lab/)"
  else
    export PULUMI_CONFIG_PASSPHRASE=lab PULUMI_BACKEND_URL="file://$project/.pulumi-state"
    mkdir -p "$project/.pulumi-state"
    cd "$project"
    quiet pulumi login "file://$project/.pulumi-state"
    pulumi stack select lab >/dev/null 2>&1 || quiet pulumi stack init lab --secrets-provider passphrase
    # set_secret KEY FILE: set the secret from FILE unless it already has that value.
    set_secret() {
      local have
      have=$(pulumi config get --stack lab "homelab-media:$1" 2>/dev/null || true)
      if [[ $have == "$(cat "$2")" ]]; then
        ok "homelab-media:$1 unchanged"
      else
        pulumi config set --secret --stack lab "homelab-media:$1" <"$2"
        ok "homelab-media:$1 set"
      fi
    }
    set_secret proxmoxPassword "$lab/pve/password"
    set_secret sshPrivateKey "$lab/id_ed25519"
    for f in "$lab"/secrets/*; do
      set_secret "$(basename "$f")" "$f"
    done
    # The engine reads its secrets from the stack file, so the lab's (throwaway, loopback-only)
    # secrets are now in Pulumi.lab.yaml. Keep them out of commits: git ignores the file's
    # changes until lab-down.sh takes the secrets out and clears the flag.
    if git -C "$project" ls-files --error-unmatch Pulumi.lab.yaml >/dev/null 2>&1; then
      git -C "$project" update-index --skip-worktree Pulumi.lab.yaml
      ok "Pulumi.lab.yaml marked skip-worktree while the lab is up (git add/commit leave the lab's secrets out)"
    fi
  fi
fi
ok "lab up: API https://$host:$pve_port/ (node $node_name), ssh root@$host -p $ssh_port -i $lab/id_ed25519"
