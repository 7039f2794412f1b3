#!/usr/bin/env bash
# The storage pool: the one rule every script uses to decide whether a container may bind it.
# Sourced after lib.sh, never run. Used by host-check-pool.sh (deploy), pve-ct-raw.sh (before a
# reboot) and pve-hookscript.sh (every start).

# pool_mount POOL: print "FSTYPE OPTIONS" of the mount a container binding POOL gets; status 1
# (nothing printed) when POOL is not a mount point. With stacked mounts (mergerfs mounted over a
# bind mount of the same path) findmnt lists every mount at the path in mount order; the visible
# one, which a bind mount of the path gets, is the top one: the last line.
pool_mount() {
  local out
  [[ -d $1 ]] || return 1
  out=$(findmnt -n -r -o FSTYPE,OPTIONS --mountpoint "$1" 2>/dev/null) || return 1
  [[ -n $out ]] || return 1
  tail -n 1 <<<"$out"
}

# pool_is_fuse FSTYPE: a FUSE mount (fuse.mergerfs, fuse.*, fuseblk as ntfs-3g mounts, fuse).
# The kernel lets only the mounting user into a FUSE mount unless it has allow_other
# (fuse_allow_current_process in fs/fuse/dir.c), whichever FUSE type it is.
pool_is_fuse() {
  [[ $1 == fuse || $1 == fuse.* || $1 == fuseblk ]]
}

# pool_allows_other OPTIONS: the mount options (comma-separated) include allow_other.
pool_allows_other() {
  [[ ,$1, == *,allow_other,* ]]
}

# pool_verdict MOUNT: the verdict on what pool_mount printed ("" when POOL is not a mount point).
# Prints nothing (status 0) when a container may bind the pool; else status 1 and one word of
# why: "not-mounted", or "no-allow-other FSTYPE" (a FUSE mount the containers' media user could
# not use). Each script words its own message from it.
pool_verdict() {
  if [[ -z $1 ]]; then
    echo not-mounted
    return 1
  fi
  if pool_is_fuse "${1%% *}" && ! pool_allows_other "${1#* }"; then
    echo "no-allow-other ${1%% *}"
    return 1
  fi
}

# pool_problem POOL: pool_verdict on POOL as it is mounted now.
pool_problem() {
  local line
  line=$(pool_mount "$1") || line=""
  pool_verdict "$line"
}
