#!/usr/bin/env bash
# Inside the queue container: Debian 12's PostgreSQL for the workers' one queue, its role and
# database, pg_hba for the workers' addresses only, and a pg_dump timer into the backup folder.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-files.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'USAGE'
Usage: ct-install-queue.sh --listen ADDR --allow ADDR [--allow ADDR ...] [options] < password

Installs Debian 12's postgresql (15) in this container and makes it the workers' queue
(docs/adr/0016, 0017): a role and a database owned by it, PostgreSQL listening on ADDR (and
loopback), and pg_hba.conf admitting the role to its database from the --allow addresses only
(scram-sha-256; everything else is refused). The role's password is the first line of stdin
(ct-queue-password.sh prints it), never an argument. A systemd timer runs pg_dump -Fc into
--backup-dir (the pool's queue.backupDir, mounted here) and keeps the newest --keep dumps; the
first run makes one at once. A second run with the same inputs changes nothing; PostgreSQL is
restarted only when its settings changed (reloaded when only pg_hba did). Run as root.

  --listen ADDR        the container's own address, where the workers reach it (required)
  --allow ADDR         a worker's address (the transcoder and each homelab-media:workers entry)
  --port N             PostgreSQL's port (default 5432)
  --database NAME      the queue's database (default media_pipeline)
  --role NAME          the workers' role (default media_pipeline)
  --backup-dir DIR     where dumps go (default /var/backups/media-queue)
  --on-calendar SPEC   the timer's OnCalendar= (default daily)
  --keep N             dumps kept (default 7); only files named DATABASE-*.dump are removed
  -h, --help           this help

Stdout: {"version","listen","port","database","role","allowed","backupDir","onCalendar",
"lastBackup","changed"} as one JSON object.
USAGE
}

listen="" port=5432 database=media_pipeline role=media_pipeline backup_dir=/var/backups/media-queue
on_calendar=daily keep=7 allowed=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --listen) need_arg "$@"; listen=$2; shift 2 ;;
    --allow) need_arg "$@"; allowed+=("$2"); shift 2 ;;
    --port) need_arg "$@"; need_int --port "$2"; port=$2; shift 2 ;;
    --database) need_arg "$@"; database=$2; shift 2 ;;
    --role) need_arg "$@"; role=$2; shift 2 ;;
    --backup-dir) need_arg "$@"; backup_dir=$2; shift 2 ;;
    --on-calendar) need_arg "$@"; on_calendar=$2; shift 2 ;;
    --keep) need_arg "$@"; need_int --keep "$2"; keep=$2; shift 2 ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
ipv4='^([0-9]{1,3}\.){3}[0-9]{1,3}$'
[[ $listen =~ $ipv4 ]] || die "--listen must be this container's IPv4 address, e.g. 192.168.1.205 (got '$listen')" 2
[[ ${#allowed[@]} -gt 0 ]] || die "at least one --allow ADDR (a worker's address) is required" 2
for a in "${allowed[@]}"; do [[ $a =~ $ipv4 ]] || die "--allow must be an IPv4 address, e.g. 192.168.1.201 (got '$a')" 2; done
((port >= 1 && port <= 65535)) || die "--port must be 1-65535 (got $port)" 2
for pair in "database:$database" "role:$role"; do
  [[ ${pair#*:} =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "--${pair%%:*} must be a plain PostgreSQL name (got '${pair#*:}')" 2
done
[[ $backup_dir == /* ]] || die "--backup-dir must be an absolute path" 2
[[ $on_calendar =~ ^[A-Za-z0-9*:.,/\ ~-]{1,64}$ ]] || die "--on-calendar must be a systemd OnCalendar= expression (got '$on_calendar')" 2
((keep >= 1)) || die "--keep must be at least 1" 2
need_root
password=""
IFS= read -r password || [[ -n $password ]] || die "stdin is empty: the role's password is its first line (ct-queue-password.sh)"
changed=false

step "PostgreSQL from Debian's packages"
missing=$(apt_missing postgresql)
if [[ -n $missing ]]; then
  export DEBIAN_FRONTEND=noninteractive
  retry 2 10 apt_quiet update || die "apt-get update failed (network, or a broken apt source?)"
  retry 2 10 apt_quiet install -y --no-install-recommends postgresql || die "apt-get install postgresql failed"
  changed=true
  ok "installed"
else
  ok "present"
fi
read -r version cluster _ < <(pg_lsclusters -h | head -n 1) || true
[[ -n ${version:-} && -n ${cluster:-} ]] || die "pg_lsclusters lists no cluster: the postgresql package made none (pg_createcluster 15 main)"
etc=/etc/postgresql/$version/$cluster
unit=postgresql@$version-$cluster.service

step "Settings: listen on $listen:$port ($etc/conf.d/media-queue.conf)"
mkdir -p "$etc/conf.d"
grep -Eq "^[[:space:]]*include_dir[[:space:]]*=[[:space:]]*'conf.d'" "$etc/postgresql.conf" ||
  die "$etc/postgresql.conf has no include_dir = 'conf.d' (Debian's has it): add it back"
restart=false
if write_if_changed "$etc/conf.d/media-queue.conf" 0644 <<CONF; then restart=true changed=true; ok "written"; else ok "unchanged"; fi
# Written by ct-install-queue.sh (homelab-media queue): edit the stack, not this file.
listen_addresses = '127.0.0.1,$listen'
port = $port
password_encryption = scram-sha-256
# a worker whose node dies or whose link is cut never closes its session, which holds its advisory
# locks (the scanner's among them) until the server notices: ask after 10 s of silence, give up after
# 3 probes 5 s apart or 30 s of unacknowledged data (the kernel's default would be about 2 hours)
tcp_keepalives_idle = 10
tcp_keepalives_interval = 5
tcp_keepalives_count = 3
tcp_user_timeout = 30000
CONF

step "pg_hba.conf: $role to $database from ${allowed[*]} only"
hba=$etc/pg_hba.conf
block=$(
  echo "# BEGIN homelab-media queue (ct-install-queue.sh): the workers' addresses; edit the stack, not these lines"
  for a in "${allowed[@]}"; do printf 'host %s %s %s/32 scram-sha-256\n' "$database" "$role" "$a"; done
  echo "# END homelab-media queue"
)
reload=false
if ! { sed '/^# BEGIN homelab-media queue/,/^# END homelab-media queue/d' "$hba"; printf '%s\n' "$block"; } |
  write_if_changed "$hba" 0640; then
  ok "unchanged"
else
  chown postgres:postgres "$hba"
  reload=true changed=true
  ok "written"
fi

step "$unit"
systemctl enable --quiet "$unit" 2>/dev/null || true
if $restart || ! systemctl is-active --quiet "$unit"; then
  systemctl restart "$unit"
  ok "(re)started"
elif $reload; then
  systemctl reload "$unit"
  ok "reloaded"
else
  ok "running, unchanged"
fi
for _ in $(seq 1 60); do
  runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 1
done
runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p "$port" || die "PostgreSQL does not answer on 127.0.0.1:$port (journalctl -u $unit)"

psql_su() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"; }

step "Role $role and database $database"
# the password reaches psql through its environment (\getenv, psql 15), never argv
export MQ_ROLE=$role MQ_DB=$database
out=$(MQ_PW=$password psql_su -d postgres -At <<'SQL'
\getenv role MQ_ROLE
\getenv db MQ_DB
\getenv pw MQ_PW
SELECT 'role-made' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role');
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role')
\gexec
SELECT 'db-made' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db');
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db')
\gexec
SQL
) || die "could not create role $role / database $database (see the psql message above)"
[[ $out != *made* ]] || changed=true
if PGPASSWORD=$password PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "$port" -U "$role" -d "$database" -Atc 'SELECT 1' >/dev/null 2>&1; then
  ok "present; its password is current"
else
  MQ_PW=$password psql_su -d postgres <<'SQL' || die "could not set $role's password"
\getenv role MQ_ROLE
\getenv pw MQ_PW
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'pw')
\gexec
SQL
  PGPASSWORD=$password psql -X -q -h 127.0.0.1 -p "$port" -U "$role" -d "$database" -Atc 'SELECT 1' >/dev/null ||
    die "$role cannot log in to $database over TCP after its password was set (check $hba)"
  changed=true
  ok "password set"
fi
psql_su -d "$database" -c "GRANT ALL ON SCHEMA public TO \"$role\"" >/dev/null

step "pg_dump timer into $backup_dir (keep $keep)"
[[ -d $backup_dir ]] || die "$backup_dir does not exist: the stack mounts queue.backupDir there (is mp0 in the container's conf?)"
probe=$(mktemp "$backup_dir/.write-test.XXXXXX" 2>/dev/null) ||
  die "$backup_dir is not writable by the container's root: on the node, the folder must belong to the container's root (uid 100000)"
rm -f "$probe"
if write_if_changed /usr/local/sbin/media-queue-backup 0755 <<SCRIPT; then changed=true; fi
#!/bin/sh
# Written by ct-install-queue.sh: one pg_dump of the queue, then keep the newest $keep.
set -eu
dir='$backup_dir' db='$database'
stamp=\$(date -u +%Y%m%dT%H%M%SZ)
tmp="\$dir/.\$db-\$stamp.dump.tmp"
runuser -u postgres -- pg_dump -p $port -Fc "\$db" >"\$tmp"
mv "\$tmp" "\$dir/\$db-\$stamp.dump"
ls -1t "\$dir"/"\$db"-*.dump | tail -n +$((keep + 1)) | while read -r old; do rm -f -- "\$old"; done
SCRIPT
units_changed=false
if write_if_changed /etc/systemd/system/media-queue-backup.service 0644 <<UNIT; then units_changed=true; fi
[Unit]
Description=pg_dump of the media pipeline's queue into $backup_dir
After=$unit
Requires=$unit

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/media-queue-backup
UNIT
if write_if_changed /etc/systemd/system/media-queue-backup.timer 0644 <<UNIT; then units_changed=true; fi
[Unit]
Description=pg_dump of the media pipeline's queue ($on_calendar)

[Timer]
OnCalendar=$on_calendar
Persistent=true

[Install]
WantedBy=timers.target
UNIT
if $units_changed; then
  systemctl daemon-reload
  changed=true
fi
systemctl enable --quiet --now media-queue-backup.timer
last=$(find "$backup_dir" -maxdepth 1 -name "$database-*.dump" -printf '%f\n' | sort | tail -n 1)
if [[ -z $last ]]; then
  systemctl start media-queue-backup.service || die "the first pg_dump failed (journalctl -u media-queue-backup.service)"
  last=$(find "$backup_dir" -maxdepth 1 -name "$database-*.dump" -printf '%f\n' | sort | tail -n 1)
  [[ -n $last ]] || die "media-queue-backup.service ran but wrote no dump into $backup_dir"
  changed=true
fi
ok "timer on; newest dump $last"

server=$(runuser -u postgres -- psql -X -At -p "$port" -d postgres -c 'SHOW server_version' | cut -d' ' -f1)
allowed_json=$(json_arr "${allowed[@]}")
json_obj version "$(json_str "$server")" listen "$(json_str "$listen")" port "$port" \
  database "$(json_str "$database")" role "$(json_str "$role")" allowed "$allowed_json" \
  backupDir "$(json_str "$backup_dir")" onCalendar "$(json_str "$on_calendar")" \
  lastBackup "$(json_str "$last")" changed "$(json_bool "$changed")"
echo
