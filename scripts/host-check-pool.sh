#!/usr/bin/env bash
# Check that the storage pool is mounted (and usable by containers) before anything binds it.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-pool.sh"

usage() {
  cat <<'USAGE'
Usage: host-check-pool.sh --pool /mnt/storage [--no-require-mount]

Checks, on the Proxmox node, that the pool is a mount point and, if it is a
mergerfs (FUSE) mount, that it has allow_other. A container bind-mounting an
unmounted pool sees the empty directory under it and writes to the root disk.

  --pool DIR            the pool's mount point
  --no-require-mount    report problems as warnings instead of failing

stdout: JSON {"pool","mounted":bool,"fstype":str|null,"allow_other":bool|null,
              "ok":bool,"problems":[str]}
        (allow_other is null when the pool is not a FUSE mount)
Exit 1 with a message on stderr (after the JSON) if the pool is not mounted or
is mergerfs without allow_other, unless --no-require-mount.
USAGE
}

FSTAB_EXAMPLE='/mnt/disk* POOL fuse.mergerfs defaults,allow_other,use_ino,cache.files=off,category.create=mfs 0 0'

pool=""
require=1
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --pool) need_arg "$@"; pool=$2; shift 2 ;;
    --no-require-mount) require=0; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $pool ]] || die "--pool is required (see --help)"
[[ $pool == /* ]] || die "--pool must be an absolute path, got '$pool'"
[[ $pool == / ]] || pool=${pool%/}
command -v findmnt >/dev/null || die "findmnt not found (apt-get install util-linux)"

step "Checking that $pool is a mounted pool"
mounted=false fstype="" options="" allow_other=null
problems=()
line=$(pool_mount "$pool") || line=""
if [[ -n $line ]]; then
  mounted=true
  fstype=${line%% *}
  options=${line#* }
  if pool_is_fuse "$fstype"; then
    allow_other=false
    pool_allows_other "$options" && allow_other=true
  fi
fi

# the verdict is lib-pool.sh's, as at every container start (pve-hookscript.sh)
problem=$(pool_verdict "$line") || true
case $problem in
  "") ;;
  not-mounted)
    if [[ -d $pool ]]; then
      problems+=("$pool is not a mount point: the pool is not mounted, so a container bind-mounting it would see the empty directory and write to the node's root disk. Mount it (mount $pool) and make that permanent in /etc/fstab; for a mergerfs pool a line such as: ${FSTAB_EXAMPLE/POOL/$pool}")
    else
      problems+=("$pool does not exist: create the mount point and mount the pool there; for a mergerfs pool an /etc/fstab line such as: ${FSTAB_EXAMPLE/POOL/$pool}")
    fi
    ;;
  *)
    problems+=("$pool is a ${problem#* } mount without allow_other: other users (and the containers' media user) cannot see it. Add allow_other to its options in /etc/fstab, e.g. ${FSTAB_EXAMPLE/POOL/$pool}, then: umount $pool && mount $pool")
    ;;
esac

ok_json=true
[[ ${#problems[@]} -eq 0 ]] || ok_json=false
json_obj pool "$(json_str "$pool")" mounted "$mounted" fstype "$(json_str_or_null "$fstype")" \
  allow_other "$allow_other" ok "$ok_json" problems "$(json_arr "${problems[@]}")"
echo

if [[ ${#problems[@]} -eq 0 ]]; then
  suffix=""
  [[ $allow_other == true ]] && suffix=", allow_other"
  ok "$pool is mounted ($fstype$suffix)"
  exit 0
fi
for p in "${problems[@]}"; do
  if ((require)); then
    printf '✗ %s: %s\n' "$SCRIPT_NAME" "$p" >&2
  else
    warn "$p"
  fi
done
if ((require)); then
  printf '✗ %s: refusing to continue (set homelab-media:storage.requireMount false, or pass --no-require-mount, if the pool is a plain directory on purpose)\n' "$SCRIPT_NAME" >&2
  exit 1
fi
warn "continuing because of --no-require-mount"
