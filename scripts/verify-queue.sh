#!/usr/bin/env bash
# Prove a worker reaches the shared queue: `media-pipeline workers --json` as the service user lists it.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/lib-json.sh"

usage() {
  cat <<'USAGE'
Usage: verify-queue.sh --worker-name NAME [--user media] [--wait SECONDS] [--strict]

Inside a worker container (the transcoder or one of homelab-media:workers), as root: runs
`media-pipeline workers --json` as the service user, which opens the queue the way the service
does (the config's db URL and db_password_file), and waits up to --wait seconds (default 60)
until this worker (NAME) is listed as healthy: the service started, logged in to PostgreSQL
through pg_hba, and sent its heartbeat.
  --strict   exit 1 after printing the JSON if reachable is false

stdout: JSON {"reachable":bool,"worker":NAME,"state":str|null,"encoder":str|null,"workers":N,
              "names":[...],"reason":str|null}
USAGE
}

user=media name="" wait=60 strict=0
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --user) need_arg "$@"; need_name --user "$2"; user=$2; shift 2 ;;
    --worker-name) need_arg "$@"; name=$2; shift 2 ;;
    --wait) need_arg "$@"; need_int --wait "$2"; wait=$2; shift 2 ;;
    --strict) strict=1; shift ;;
    *) die "unknown argument: $1 (see --help)" 2 ;;
  esac
done
[[ -n $name ]] || die "--worker-name is required (see --help)" 2
need_root
command -v media-pipeline >/dev/null || die "media-pipeline is not installed here (ct-install-pipeline.sh)"

step "The queue, as $user sees it: worker $name listed and healthy (up to ${wait}s)"
deadline=$((SECONDS + wait))
out="" err="" state="" reason=""
while :; do
  err=$(mktemp)
  if out=$(runuser -u "$user" -- media-pipeline workers --json 2>"$err"); then
    state=$(python3 -c 'import json,sys; n=sys.argv[1]; ws=[w for w in json.loads(sys.stdin.read()) if w.get("name")==n]; print(ws[0].get("state","") if ws else "")' "$name" <<<"$out")
    reason=""
    [[ $state == healthy ]] && { rm -f "$err"; break; }
    reason="worker $name is ${state:-not listed} in the queue"
  else
    reason="media-pipeline workers failed: $(tail -n 3 "$err" | tr '\n' ' ')"
    out="[]"
  fi
  rm -f "$err"
  ((SECONDS < deadline)) || break
  sleep 2
done
if [[ -z $reason ]]; then ok "reachable; $name is healthy"; else warn "$reason"; fi
python3 -c '
import json, sys
name, reason, text = sys.argv[1], sys.argv[2], sys.argv[3]
ws = json.loads(text or "[]")
mine = next((w for w in ws if w.get("name") == name), {})
print(json.dumps({"reachable": not reason, "worker": name, "state": mine.get("state"),
                  "encoder": mine.get("encoder"), "workers": len(ws),
                  "names": sorted(w.get("name", "") for w in ws), "reason": reason or None}))
' "$name" "$reason" "$out"
[[ $strict -eq 0 || -z $reason ]] || exit 1
