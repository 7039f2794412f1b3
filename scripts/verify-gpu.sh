#!/usr/bin/env bash
# Prove the GPU works for the media user: VA driver, profiles, and a real 1-second hevc_qsv encode.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-devices.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-exec.sh"

usage() {
  cat <<'USAGE'
Usage: verify-gpu.sh --user media [--render-node PATH] [--save FILE] [--strict]

Inside the transcoder container, as USER (runuser, so group membership is
fresh): `vainfo --display drm --device NODE` (driver and VA profiles), the QSV
encoders ffmpeg was built with, and a real one-second encode:
  ffmpeg -init_hw_device qsv=hw:NODE -f lavfi -i testsrc=d=1 \
         -vf hwupload=extra_hw_frames=64,format=qsv -c:v hevc_qsv -f null -
Only the encode proves the GPU works; `ok` is true only if it succeeded.
Missing hardware or tools are reported with a reason, not as a crash. A GPU on
the xe kernel driver with a VA stack too old for xe (Debian 12's) fails with
that reason and the fix; vainfo and the encode are not tried.

  --render-node PATH   /dev/dri/by-path/pci-<domain:bus:device.function>-render (stable across
                       reboots; resolved now to today's renderD<N>, through the by-path link or
                       sysfs) or /dev/dri/renderD<N>. Default: media-transcode's auto choice: the
                       first i915/xe render node, an xe one only if the VA stack drives xe or
                       there is no i915 one, else the first renderD* (DEV_ROOT overrides /dev,
                       SYSFS_ROOT /sys)
  --save FILE          also write the JSON (plus "checked_at", unix time) to FILE, mode 0644,
                       atomically; media-pipeline's status page shows it
                       (/var/lib/media-pipeline/gpu-proof.json)
  --strict             exit 1 after printing the JSON if ok is false

stdout: JSON {"ok":bool,"render_node":str|null,"choice":str|null,
              "kernel_driver":"i915"|"xe"|other|"unknown"|null,"pci_address":str|null,
              "driver":str|null (the VA driver, from vainfo),"va_profiles":[str],
              "qsv_encoders":[str],"encode":"ok"|"failed: REASON","reason":str|null}
USAGE
}

user="" node="" save="" strict=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --user) need_arg "$@"; user=$2; shift 2 ;;
    --render-node) need_arg "$@"; node=$2; shift 2 ;;
    --save) need_arg "$@"; save=$2; shift 2 ;;
    --strict) strict=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $user ]] || die "--user is required (see --help)"
[[ -z $save || $save == /* ]] || die "--save must be an absolute path (got $save)"


reasons=()
driver="" encode="" profiles=() encoders=() choice="" kernel_driver="" pci=""

if ! getent passwd "$user" >/dev/null; then
  reasons+=("user $user does not exist (run ct-media-user.sh)")
  encode="failed: user $user does not exist"
fi

step "Render node"
if [[ -n $node ]]; then
  resolve_render_node "$node"
  choice="requested"
  [[ $RES_NODE == "$node" || -z $RES_NODE ]] || choice="requested $node, which is ${RES_NODE##*/} now"
  node=$RES_NODE
else
  RES_REASON=""
  auto_render_node
  node=$AUTO_NODE choice=$AUTO_WHY
fi
if [[ -n $RES_REASON ]]; then
  reasons+=("$RES_REASON")
  encode="failed: no render node is PCI device $RES_ADDR"
  choice=""
elif [[ -z $node ]]; then
  reasons+=("no render node: no ${DEV_ROOT:-/dev}/dri/renderD* (is the GPU passed through? see host-discover.sh and the raw lxc lines)")
  encode="failed: no render node"
elif [[ ! -c $node ]]; then
  reasons+=("$node is not a character device")
  encode="failed: $node is not a character device"
else
  kernel_driver=$(render_kernel_driver "$node")
  pci=$(render_pci_address "$node")
  ok "$node (kernel driver $kernel_driver${pci:+, PCI $pci}; $choice)"
  if [[ $kernel_driver == xe ]] && problem=$(xe_stack_problem) && [[ -n $problem ]]; then
    # vainfo would only say "init failed": name the cause and the fix instead
    reasons+=("$(xe_refusal "$node" "$problem")")
    encode="failed: $node is on the xe kernel driver, which this VA stack cannot drive"
  fi
fi

if [[ -z $encode ]]; then
  step "VA driver (vainfo as $user)"
  if ! command -v vainfo >/dev/null; then
    reasons+=("vainfo is not installed (ct-bootstrap-transcoder.sh installs it)")
  else
    va_out=$(run_as "$user" timeout 60 vainfo --display drm --device "$node" 2>&1) && va_rc=0 || va_rc=$?
    if [[ $va_out =~ Driver\ version:\ ([^$'\n']*) ]]; then
      driver=${BASH_REMATCH[1]}
      driver=${driver%"${driver##*[![:space:]]}"}
    fi
    while IFS= read -r l; do
      if [[ $l =~ (VAProfile[A-Za-z0-9_]+)[[:space:]]*:[[:space:]]*(VAEntrypoint[A-Za-z0-9_]+) ]]; then
        profiles+=("${BASH_REMATCH[1]}:${BASH_REMATCH[2]}")
      fi
    done <<<"$va_out"
    if [[ -n $driver ]]; then
      ok "$driver (${#profiles[@]} profile/entrypoint pairs)"
    else
      reasons+=("vainfo found no VA driver for $node (exit $va_rc): $(tail -n1 <<<"$va_out")")
    fi
  fi
fi

step "QSV encoders in ffmpeg"
if command -v ffmpeg >/dev/null; then
  while read -r _ name _; do
    [[ $name == *_qsv ]] && encoders+=("$name")
  done < <(ffmpeg -hide_banner -encoders 2>/dev/null || true)
  ok "${encoders[*]:-none}"
else
  reasons+=("ffmpeg is not installed (ct-bootstrap-transcoder.sh installs it)")
  [[ -n $encode ]] || encode="failed: ffmpeg not installed"
fi

if [[ -z $encode ]]; then
  step "One-second hevc_qsv encode as $user"
  enc_out=$(run_as "$user" timeout 120 ffmpeg -hide_banner -nostdin -loglevel error \
    -init_hw_device "qsv=hw:$node" -f lavfi -i testsrc=d=1 \
    -vf hwupload=extra_hw_frames=64,format=qsv -c:v hevc_qsv -f null - 2>&1) && enc_rc=0 || enc_rc=$?
  if [[ $enc_rc -eq 0 ]]; then
    encode=ok
    ok "hevc_qsv encode works"
  else
    # first and last error lines: the cause and ffmpeg's summary
    last=$(grep -v '^[[:space:]]*$' <<<"$enc_out" | sed -n '1p;$p' | uniq | paste -sd'|' | sed 's/|/ | /' || true)
    encode="failed: ffmpeg exit $enc_rc: ${last:-no output}"
    reasons+=("the hevc_qsv test encode failed: ${last:-ffmpeg exit $enc_rc}")
  fi
fi

ok_json=false
[[ $encode == ok ]] && ok_json=true
reason=""
if [[ ${#reasons[@]} -gt 0 ]]; then
  reason=$(printf '%s; ' "${reasons[@]}")
  reason=${reason%; }
fi
[[ $ok_json == true ]] || warn "GPU not proven: ${reason:-$encode}"
result=$(json_obj ok "$ok_json" render_node "$(json_str_or_null "${node}")" choice "$(json_str_or_null "$choice")" \
  kernel_driver "$(json_str_or_null "$kernel_driver")" pci_address "$(json_str_or_null "$pci")" \
  driver "$(json_str_or_null "$driver")" \
  va_profiles "$(json_arr "${profiles[@]}")" qsv_encoders "$(json_arr "${encoders[@]}")" \
  encode "$(json_str "$encode")" reason "$(json_str_or_null "$reason")")
printf '%s\n' "$result"
if [[ -n $save ]]; then
  step "Saving the proof to $save"
  mkdir -p "$(dirname "$save")"
  tmp=$(mktemp "$(dirname "$save")/.gpu-proof.XXXXXX")
  printf '%s,"checked_at":%s}\n' "${result%\}}" "$(date +%s)" >"$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$save"
  ok "saved"
fi
if ((strict)) && [[ $ok_json != true ]]; then exit 1; fi
exit 0
