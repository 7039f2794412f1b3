#!/usr/bin/env bash
# Start the local lab that stands in for a Proxmox VE node: fakepve API, the node's sshd in its own Debian 12 tree, pct.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib-exec.sh"

usage() {
  cat <<'USAGE'
Usage: lab/lab-up.sh [--no-secrets]

Builds (once) and starts the local lab under .lab/ in the project; safe to run
again (it only does what is missing). As root. Everything listens on loopback:
  https://127.0.0.1:18006/   the Proxmox API: fakepve (lab/pve-lab.py) as
                             node "pve1", root@pam with a random password; keeps
                             /etc/pve/lxc/<id>.conf of the node tree in step
  ssh root@127.0.0.1 -p 12222  the node: a real OpenSSH server, key only, whose
                             sessions run in .lab/node, a Debian 12 tree of its own
                             (private mount namespace: /mnt/storage is a mount,
                             fake /dev/dri, /dev/sr0, /dev/sg*, fake sysfs, pct shim)
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
host=127.0.0.1
pve_port=18006
ssh_port=12222
# The node: a PVE host's sshd. Containers: close to Proxmox's debian-12-standard template.
node_packages="openssh-server"
ct_packages="systemd systemd-sysv ifupdown iputils-ping curl wget less vim-tiny locales cron apt-utils"
ssh_opts=(-i "$lab/id_ed25519" -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5)

step "Checking what the lab needs"
for c in unshare chroot openssl ssh ssh-keygen curl flock setsid mknod debootstrap; do
  command -v "$c" >/dev/null || die "$c is missing (make deps, or apt-get install openssh-client openssl curl util-linux debootstrap)"
done
[[ -x $python ]] || die "$python is missing (make setup)"
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

step "Debian 12 trees for the node and the containers (cached in $cache)"
"$here/debian-rootfs.sh" --variant ct --packages "$ct_packages"
"$here/debian-rootfs.sh" --variant node --packages "$node_packages" "$node"
ok "trees ready"

step "Lab credentials: SSH key, root@pam password, TLS certificate"
[[ -f $lab/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C homelab-media-lab -f "$lab/id_ed25519"
if [[ ! -s $lab/pve/password ]]; then
  (umask 077 && openssl rand -hex 16 >"$lab/pve/password")
fi
if [[ ! -s $lab/pve/cert.pem ]]; then
  quiet openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$node_name" \
    -addext "subjectAltName=IP:$host,DNS:localhost,DNS:$node_name" \
    -keyout "$lab/pve/key.pem" -out "$lab/pve/cert.pem"
  chmod 0600 "$lab/pve/key.pem"
fi
password=$(cat "$lab/pve/password")
ok "credentials in $lab (id_ed25519, pve/)"

# mk_node PATH TYPE MAJOR MINOR GROUP: a device node in the node tree (kept if already right).
mk_node() {
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

# fake_sysfs: the sysfs entries the discovery reads (SYSFS_ROOT=/opt/lab/sysfs in the node):
# sg0 is a disk (type 0, sda), sg1 the optical drive (type 5, sr0); card0/renderD128 an Arc GPU.
fake_sysfs() {
  local s=$node/opt/lab/sysfs pci=devices/pci0000:00 d
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

step "Configuring the node tree $node"
printf '%s\n' "$node_name" >"$node/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s.lab %s\n::1 localhost ip6-localhost ip6-loopback\n' "$node_name" "$node_name" >"$node/etc/hosts"
cp -L /etc/resolv.conf "$node/etc/resolv.conf"
if ! grep -q '^render:' "$node/etc/group"; then
  holder=$(awk -F: '$3 == 104 { print $1 }' "$node/etc/group")
  [[ -z $holder ]] || die "gid 104 is taken by group '$holder' in the node tree; a PVE 8 node has render=104 (rm -rf $node and retry)"
  chroot "$node" groupadd -g 104 render
fi
mk_node dri/card0 c 226 0 video
mk_node dri/renderD128 c 226 128 render
mk_node sr0 b 11 0 cdrom
mk_node sg0 c 21 0 disk
mk_node sg1 c 21 1 cdrom
chmod 0755 "$node/dev/dri"
[[ -L $node/dev/ptmx ]] || { rm -f "$node/dev/ptmx"; ln -s pts/ptmx "$node/dev/ptmx"; }
fake_sysfs
mkdir -p "$node/mnt/storage" "$node/etc/pve/nodes/$node_name/lxc" "$node/var/lib/lxc" "$node/var/lib/lab/ct-template" \
  "$node/var/cache/lab-apt" "$node/opt/lab"
ln -sfn "nodes/$node_name/lxc" "$node/etc/pve/lxc"
ln -sfn "nodes/$node_name" "$node/etc/pve/local"
install -m 0755 "$here/pct.py" "$node/usr/sbin/pct"
install -m 0755 "$here/lab-session.sh" "$node/usr/local/sbin/lab-session"
install -d -m 0700 "$node/etc/pve-lab"
(umask 077 && printf '{"url": "https://%s:%s/", "node": "%s", "username": "root@pam", "password": "%s"}\n' \
  "$host" "$pve_port" "$node_name" "$password" >"$node/etc/pve-lab/api.json")
install -d -m 0700 "$node/root/.ssh"
install -m 0600 "$lab/id_ed25519.pub" "$node/root/.ssh/authorized_keys"
[[ -f $node/etc/ssh/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C "root@$node_name" -f "$node/etc/ssh/ssh_host_ed25519_key"
cat >"$node/etc/ssh/sshd_config" <<EOF
# The lab node's sshd (written by lab/lab-up.sh). Key only, loopback only.
Port $ssh_port
ListenAddress $host
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

step "Proxmox API (fakepve) on https://$host:$pve_port/"
if alive "$lab/run/pve.pid" pve-lab.py; then
  ok "already running (pid $(cat "$lab/run/pve.pid"))"
else
  port_busy "$pve_port" && die "port $pve_port is in use by another program (ss -ltnp 'sport = :$pve_port'); the lab needs it"
  setsid "$python" "$here/pve-lab.py" --node-root "$node" --node "$node_name" --host "$host" --port "$pve_port" \
    --password-file "$lab/pve/password" --cert "$lab/pve/cert.pem" --key "$lab/pve/key.pem" \
    >>"$lab/log/pve.log" 2>&1 </dev/null &
  echo $! >"$lab/run/pve.pid"
  retry 100 0.1 port_busy "$pve_port" || die "fakepve did not start; see $lab/log/pve.log"
  ok "started (pid $(cat "$lab/run/pve.pid"), log $lab/log/pve.log)"
fi
curl -skf -o /dev/null --data-urlencode "username=root@pam" --data-urlencode "password=$password" \
  "https://$host:$pve_port/api2/json/access/ticket" || die "fakepve refuses the lab's root@pam password; run lab/lab-down.sh, then lab-up.sh"

step "Node sshd on $host:$ssh_port (own mount namespace, chrooted in $node)"
if alive "$lab/run/node.pid" node-boot.sh; then
  ok "already running (pid $(cat "$lab/run/node.pid"))"
else
  port_busy "$ssh_port" && die "port $ssh_port is in use by another program (ss -ltnp 'sport = :$ssh_port'); the lab needs it"
  setsid unshare --mount --uts --pid --fork --kill-child=SIGTERM --propagation private -- \
    "$here/node-boot.sh" "$node" "$cache/bookworm-ct" >>"$lab/log/node.log" 2>&1 </dev/null &
  echo $! >"$lab/run/node.pid"
  retry 100 0.1 port_busy "$ssh_port" || die "the node's sshd did not start; see $lab/log/node.log"
  readlink "/proc/$(cat "$lab/run/node.pid")/ns/mnt" >"$lab/run/node.ns"
  ok "started (pid $(cat "$lab/run/node.pid"), log $lab/log/node.log)"
fi
got=$(ssh "${ssh_opts[@]}" "root@$host" 'hostname; findmnt -n -o TARGET /mnt/storage') ||
  die "cannot log in to the node with $lab/id_ed25519; see $lab/log/node.log"
[[ $got == "$node_name"$'\n'/mnt/storage ]] || die "the node answered '$got', expected its name and the pool mount"
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
