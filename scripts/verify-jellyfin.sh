#!/usr/bin/env bash
# Prove the Jellyfin container works: server, libraries, read-only media, the GPU for the jellyfin user, a hardware encode.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"

usage() {
  cat <<'USAGE'
Usage: verify-jellyfin.sh [--port 8096] [--url-host HOST] [--render-node PATH] [--hwaccel vaapi|qsv|none]
         [--key-file /etc/homelab-media/jellyfin-api-key] [--user jellyfin] [--strict]

Inside the Jellyfin container, as root:
  1. GET /System/Info/Public (no auth): the server's version; the URL people use
     is http://HOST:PORT (HOST: the container's static address or its hostname);
  2. GET /Library/VirtualFolders with the API key: a library at /media/movies and
     one at /media/tv;
  3. a write to /media/movies is refused (the mount is read-only: PVE's ro=1);
  4. the render node is a character device the jellyfin user can read and write;
  5. as the jellyfin user, jellyfin-ffmpeg's vainfo (the VA driver) and a real
     one-second hardware encode (vaapi: h264_vaapi; qsv: h264_qsv on a VA device):
       /usr/lib/jellyfin-ffmpeg/ffmpeg -init_hw_device vaapi=va:NODE -f lavfi -i testsrc=d=1
         -vf format=nv12,hwupload -c:v h264_vaapi -f null -
`ok` is true only if every check that applies passed (with --hwaccel none the GPU
checks are skipped and say so). Otherwise "reason" lists what failed.
  --strict   exit 1 after printing the JSON if ok is false

stdout: JSON {"ok":bool,"version":str|null,"url":str,"libraries":[{"name","paths"}],
              "movies_library":bool,"tv_library":bool,"read_only":bool,"read_only_detail":str,
              "render_node":str|null,"render_access":bool|null,"driver":str|null,
              "encode":"ok"|"skipped: ..."|"failed: ...","reason":str|null}
USAGE
}

port=8096 host="" node="" hwaccel=none key_file=/etc/homelab-media/jellyfin-api-key user=jellyfin strict=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --port) need_arg "$@"; need_int --port "$2"; port=$2; shift 2 ;;
    --url-host) need_arg "$@"; host=$2; shift 2 ;;
    --render-node) need_arg "$@"; node=$2; shift 2 ;;
    --hwaccel) need_arg "$@"; hwaccel=$2; shift 2 ;;
    --key-file) need_arg "$@"; key_file=$2; shift 2 ;;
    --user) need_arg "$@"; need_name --user "$2"; user=$2; shift 2 ;;
    --strict) strict=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ $hwaccel == vaapi || $hwaccel == qsv || $hwaccel == none ]] || die "--hwaccel must be vaapi, qsv or none"
[[ -n $host ]] || host=$(hostname)
url="http://$host:$port"
reasons=()
FFDIR=/usr/lib/jellyfin-ffmpeg

# api PATH [KEYFILE]: GET http://127.0.0.1:PORT/PATH, print the body (python3: ct-install-jellyfin.sh installs it)
api() {
  PORT=$port KEY_FILE=${2:-} python3 - "$1" <<'PY'
import os, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{os.environ['PORT']}{sys.argv[1]}")
if os.environ.get("KEY_FILE"):
    key = open(os.environ["KEY_FILE"]).read().strip()
    req.add_header("Authorization", f'MediaBrowser Token="{key}"')
with urllib.request.urlopen(req, timeout=20) as r:
    sys.stdout.write(r.read().decode())
PY
}

step "Jellyfin's server ($url)"
version=""
if info=$(api /System/Info/Public 2>&1); then
  version=$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("Version") or "")' <<<"$info" 2>/dev/null || true)
fi
if [[ -n $version ]]; then
  ok "Jellyfin $version"
else
  reasons+=("no answer from Jellyfin on 127.0.0.1:$port/System/Info/Public (systemctl status jellyfin): ${info##*$'\n'}")
fi

step "Libraries"
libs_json="[]" movies_lib=false tv_lib=false
if [[ ! -r $key_file ]]; then
  reasons+=("no API key at $key_file (ct-jellyfin-configure.sh writes it)")
elif folders=$(api /Library/VirtualFolders "$key_file" 2>&1); then
  libs_json=$(python3 -c '
import json, sys
print(json.dumps([{"name": f.get("Name"), "paths": f.get("Locations") or []} for f in json.load(sys.stdin)]))' <<<"$folders")
  grep -q '"/media/movies"' <<<"$libs_json" && movies_lib=true
  grep -q '"/media/tv"' <<<"$libs_json" && tv_lib=true
  [[ $movies_lib == true ]] || reasons+=("no library at /media/movies")
  [[ $tv_lib == true ]] || reasons+=("no library at /media/tv")
  ok "$libs_json"
else
  reasons+=("GET /Library/VirtualFolders failed: ${folders##*$'\n'}")
fi

step "A write to /media/movies is refused"
probe=/media/movies/.homelab-media-ro-probe
read_only=false
if [[ ! -d /media/movies ]]; then
  ro_detail="/media/movies does not exist"
  reasons+=("$ro_detail")
elif err=$(touch "$probe" 2>&1); then
  rm -f "$probe"
  ro_detail="a write to /media/movies succeeded: the mount is not read-only"
  reasons+=("$ro_detail")
else
  read_only=true
  ro_detail=${err##*: }
  ok "refused: $ro_detail"
fi

driver="" encode="" render_access=null
if [[ $hwaccel == none || -z $node ]]; then
  encode="skipped: no GPU (jellyfin.gpu none, or no render node)"
  ok "$encode"
else
  step "The render node $node for $user"
  if [[ ! -c $node ]]; then
    render_access=false
    reasons+=("$node is not a character device in the container (PVE's dev0 passthrough)")
    encode="failed: no $node"
  elif run_as "$user" test -r "$node" -a -w "$node"; then
    render_access=true
    ok "$node ($(stat -c '%G %a' "$node")) is open to $user"
  else
    render_access=false
    reasons+=("$user cannot open $node (owner $(stat -c '%U:%G %a' "$node"), $user in: $(id -nG "$user")): the devN gid is not the container's render group")
    encode="failed: $user cannot open $node"
  fi
  if [[ -z $encode ]]; then
    step "VA driver (jellyfin-ffmpeg's vainfo as $user)"
    if [[ -x $FFDIR/vainfo ]]; then
      va=$(run_as "$user" timeout 60 "$FFDIR/vainfo" --display drm --device "$node" 2>&1 || true)
      if [[ $va =~ Driver\ version:\ ([^$'\n']*) ]]; then
        driver=${BASH_REMATCH[1]}
        ok "$driver"
      else
        reasons+=("vainfo found no VA driver for $node: ${va##*$'\n'}")
      fi
    fi
    step "One-second $hwaccel encode as $user"
    if [[ ! -x $FFDIR/ffmpeg ]]; then
      encode="failed: $FFDIR/ffmpeg missing (jellyfin-ffmpeg7)"
      reasons+=("$encode")
    else
      if [[ $hwaccel == qsv ]]; then
        enc=(-init_hw_device "vaapi=va:$node" -init_hw_device qsv=qs@va -f lavfi -i testsrc=d=1
          -vf "hwupload=extra_hw_frames=64,format=qsv" -c:v h264_qsv -f null -)
      else
        enc=(-init_hw_device "vaapi=va:$node" -f lavfi -i testsrc=d=1 -vf "format=nv12,hwupload" -c:v h264_vaapi -f null -)
      fi
      if out=$(run_as "$user" timeout 120 "$FFDIR/ffmpeg" -hide_banner -nostdin -loglevel error "${enc[@]}" 2>&1); then
        encode=ok
        ok "$hwaccel encode works"
      else
        last=$(grep -v '^[[:space:]]*$' <<<"$out" | tail -n 1 || true)
        encode="failed: ${last:-ffmpeg failed}"
        reasons+=("the $hwaccel test encode failed: ${last:-ffmpeg failed}")
      fi
    fi
  fi
fi

ok_json=false
[[ ${#reasons[@]} -gt 0 ]] || ok_json=true
reason=""
if [[ ${#reasons[@]} -gt 0 ]]; then
  reason=$(printf '%s; ' "${reasons[@]}")
  reason=${reason%; }
  warn "Jellyfin not proven: $reason"
fi
json_obj ok "$ok_json" version "$(json_str_or_null "$version")" url "$(json_str "$url")" libraries "$libs_json" \
  movies_library "$movies_lib" tv_library "$tv_lib" read_only "$read_only" read_only_detail "$(json_str "$ro_detail")" \
  render_node "$(json_str_or_null "$node")" render_access "$render_access" driver "$(json_str_or_null "$driver")" \
  encode "$(json_str "$encode")" reason "$(json_str_or_null "$reason")"
echo
if ((strict)) && [[ $ok_json != true ]]; then exit 1; fi
exit 0
