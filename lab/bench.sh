#!/usr/bin/env bash
# Time the program's life cycle against the local lab; count the remote work each step does.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
  cat <<'USAGE'
Usage: lab/bench.sh [--out FILE]

Starts the local lab (lab-up.sh), empties the lab stack, then measures, in order:
  up_from_empty   pulumi up on an empty stack
  noop_up         pulumi up again (nothing to do)
  preview         pulumi preview
  destroy         pulumi destroy
For each: wall time, SSH commands run on the node (ssh-commands.log), pct calls and
pct exec calls (pct.log), container starts (lxc-events.log) and Proxmox API requests
(fakepve). Also the time of lab-up itself, and for one plain container (CT 298, made and
removed here): its start through the API to `systemctl is-system-running` = running
(real LXC, systemd as init), and its idle memory after 5 s (PSS and RSS summed over the
container's processes, from smaps_rollup; its LXC monitor apart). Writes JSON (default bench-results/lab.json).
As root. With the toolchain incomplete (docs/adr/0002) the program runs without the
engine (lab/run-program.py, docs/adr/0006; no preview step); the JSON says which
driver ran. The lab is left running.
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/.." && pwd)
out=$project/bench-results/lab.json
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
need_root
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"

t0=$(date +%s.%N)
"$here/lab-up.sh" >&2
lab_up=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
# shellcheck source=/dev/null
source "$project/.lab/env"
# shellcheck source=tools/pulumi-env.sh
source "$project/tools/pulumi-env.sh"
export PULUMI_CONFIG_PASSPHRASE=lab PULUMI_BACKEND_URL="file://$project/.pulumi-state"
cd "$project"
driver=engine
if ! bash "$project/tools/toolchain.sh" --check >/dev/null 2>&1; then
  driver=run-program.py
  warn "the Pulumi toolchain is incomplete here: measuring lab/run-program.py (no engine)"
fi
runner() { "$project/.venv/bin/python" "$here/run-program.py" "$@" >/dev/null; }

# counters: "ssh pct exec starts api" right now.
counters() {
  local api
  api=$(curl -skf -H "Authorization: Lab $(cat "$LAB_PVE_PASSWORD_FILE")" "${LAB_ENDPOINT}lab/state" | jq .requests)
  printf '%s %s %s %s %s\n' \
    "$(wc -l <"$LAB_SSH_LOG")" \
    "$(grep -c ' pct ' "$LAB_PCT_LOG" || true)" \
    "$(grep -c ' pct exec ' "$LAB_PCT_LOG" || true)" \
    "$(grep -c ' start pid=' "$LAB_EVENTS_LOG" || true)" \
    "$api"
}

results="{}"
# measure NAME CMD...: run CMD and record the step.
measure() {
  local name=$1 a b t s
  shift
  step "$name: $*"
  read -r -a a <<<"$(counters)"
  t=$(date +%s.%N)
  "$@" >&2
  s=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  read -r -a b <<<"$(counters)"
  results=$(jq -c --arg n "$name" --argjson s "$s" \
    --argjson ssh $((b[0] - a[0])) --argjson pct $((b[1] - a[1])) --argjson ex $((b[2] - a[2])) \
    --argjson st $((b[3] - a[3])) --argjson api $((b[4] - a[4])) \
    '.[$n] = {seconds: ($s * 10 | round / 10), ssh_commands: $ssh, pct_calls: $pct, pct_exec: $ex,
              container_starts: $st, api_requests: $api}' <<<"$results")
  ok "$name: ${s%.*}s, $((b[0] - a[0])) SSH commands, $((b[2] - a[2])) pct exec"
}

step "One container: boot to is-system-running, idle memory"
ct_probe=$("$project/.venv/bin/python" - "$LAB_ENDPOINT" "$LAB_PVE_PASSWORD_FILE" "$LAB_NODE" "$LAB_CGROUP" \
  "$LAB_SSH_KEY" "$LAB_SSH_PORT" <<'PY'
import json, os, ssl, subprocess, sys, time, urllib.parse, urllib.request
endpoint, pwfile, node, cgroup, key, port = sys.argv[1:7]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def req(method, path, data=None, ticket=None):
    body = urllib.parse.urlencode(data or {}).encode() if method != "GET" else None
    r = urllib.request.Request(endpoint.rstrip("/") + "/api2/json" + path, data=body, method=method)
    if ticket:
        r.add_header("Cookie", "PVEAuthCookie=" + ticket[0]); r.add_header("CSRFPreventionToken", ticket[1])
    with urllib.request.urlopen(r, context=ctx, timeout=120) as resp:
        return json.load(resp)["data"]
t = req("POST", "/access/ticket", {"username": "root@pam", "password": open(pwfile).read().strip()})
ticket = (t["ticket"], t["CSRFPreventionToken"])
def task(upid):
    st = req("GET", f"/nodes/{node}/tasks/{upid}/status", ticket=ticket)
    if st.get("exitstatus") != "OK":
        sys.exit(f"task {upid}: {st.get('exitstatus')}")
def ssh(cmd):
    return subprocess.run(["ssh", "-i", key, "-p", port, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1", cmd],
                          capture_output=True, text=True, timeout=300)
def mem(group):
    pss = rss = n = 0
    for root, _dirs, files in os.walk(group):
        for pid in open(os.path.join(root, "cgroup.procs")).read().split():
            try:
                for line in open(f"/proc/{pid}/smaps_rollup"):
                    if line.startswith("Pss:"): pss += int(line.split()[1])
                    if line.startswith("Rss:"): rss += int(line.split()[1])
                n += 1
            except OSError:
                pass
    return {"processes": n, "pss_mb": round(pss / 1024, 1), "rss_mb": round(rss / 1024, 1)}
vmid = 298
if any(int(c["vmid"]) == vmid for c in req("GET", f"/nodes/{node}/lxc", ticket=ticket)):
    sys.exit(f"CT {vmid} exists in the lab; remove it first")
task(req("POST", f"/nodes/{node}/lxc", {"vmid": vmid, "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
     "hostname": "bench", "rootfs": "local-lvm:4", "memory": 512, "unprivileged": 0,
     "net0": "name=eth0,bridge=vmbr0,ip=10.99.0.98/24,gw=10.99.0.1"}, ticket=ticket))
try:
    out = {}
    for run in range(3):
        t0 = time.monotonic()
        task(req("POST", f"/nodes/{node}/lxc/{vmid}/status/start", ticket=ticket))
        t1 = time.monotonic()
        r = ssh(f"pct exec {vmid} -- systemctl is-system-running --wait")
        t2 = time.monotonic()
        if r.stdout.strip() != "running":
            sys.exit(f"CT {vmid}: is-system-running said {r.stdout.strip()!r} {r.stderr.strip()}")
        out.setdefault("start_task_seconds", []).append(round(t1 - t0, 2))
        out.setdefault("boot_to_running_seconds", []).append(round(t2 - t0, 2))
        if run == 0:
            time.sleep(5)
            out["idle_container"] = mem(os.path.join(cgroup, "lxc", str(vmid)))
            out["idle_monitor"] = mem(os.path.join(cgroup, "lxc.monitor", str(vmid)))
        task(req("POST", f"/nodes/{node}/lxc/{vmid}/status/stop", ticket=ticket))
    print(json.dumps(out))
finally:
    req("DELETE", f"/nodes/{node}/lxc/{vmid}", ticket=ticket)
PY
)
ok "container: $ct_probe"

step "Emptying the lab stack"
if [[ $driver == engine ]]; then
  if [[ $(pulumi stack export --stack lab | jq '[.deployment.resources // [] | .[] | select(.type != "pulumi:pulumi:Stack")] | length') -gt 0 ]]; then
    if [[ -n $(curl -skf -H "Authorization: Lab $(cat "$LAB_PVE_PASSWORD_FILE")" "${LAB_ENDPOINT}lab/state" | jq '.containers[]') ]]; then
      pulumi destroy --stack lab --yes --skip-preview --non-interactive >&2
    else
      # state from an earlier lab: fakepve forgot it all
      pulumi stack rm --stack lab --yes --force --preserve-config >&2
      "$here/lab-up.sh" >&2
    fi
  fi
  measure up_from_empty pulumi up --stack lab --yes --skip-preview --non-interactive
  measure noop_up pulumi up --stack lab --yes --skip-preview --non-interactive
  measure preview pulumi preview --stack lab --non-interactive
  measure destroy pulumi destroy --stack lab --yes --skip-preview --non-interactive
else
  runner destroy
  measure up_from_empty runner up --stack lab
  measure noop_up runner up --stack lab
  measure destroy runner destroy --stack lab
fi

mkdir -p "$(dirname "$out")"
jq -n --argjson steps "$results" --argjson lab_up "$lab_up" \
  --arg date "$(date -u +%FT%TZ)" --arg cpus "$(nproc)" --arg kernel "$(uname -r)" \
  --arg pulumi "$(pulumi version 2>/dev/null || echo none)" --arg driver "$driver" --argjson ct "$ct_probe" \
  '{date: $date, machine: {cpus: ($cpus | tonumber), kernel: $kernel}, pulumi: $pulumi, driver: $driver,
    lab_up_seconds: ($lab_up * 10 | round / 10), container: $ct, steps: $steps}' >"$out"
ok "results in $out"
cat "$out"
