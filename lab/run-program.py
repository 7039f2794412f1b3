#!/usr/bin/env python3
"""Run the Pulumi program against the lab without the engine: `up` or `destroy`.

Why: on machines where the Pulumi engine's plugins cannot be had (the Go module proxy
refuses the Python language host and both providers: docs/adr/0002), the program's own
code still runs for real. The Pulumi SDK's mock runtime stands in for the engine and each
declared resource is *performed* against the lab, like the providers would:

  proxmoxve Provider          ticket login as root@pam (password from the lab)
  proxmoxve download.File     POST /nodes/{n}/storage/{s}/download-url (skipped if present)
  proxmoxve ContainerLegacy   POST /nodes/{n}/lxc with the same parameters bpg's provider
                              sends; an existing container gets PUT .../config for changed
                              cores/memory/swap (in place), like the provider's update
  command remote.Command      `create` over real OpenSSH to the node, stdin = the bundle;
                              skipped when create, stdin and triggers equal the last run
                              (pulumi-command's rule: no input change, no run)

What the engine would add (diffs from provider Check/Diff, replace planning, state
encryption) is not proven by this; docs/adr/0006 says what is and is not.

Usage: lab/run-program.py up|destroy [--stack lab] [--config-file F] [--outputs FILE]
Exit codes: 0 done, 1 a resource failed (its message is printed), 2 usage or config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / ".lab"
STATE = LAB / "run-program-state.json"
NS = "homelab-media"


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def read_env() -> dict[str, str]:
    env_file = LAB / "env"
    if not env_file.exists():
        raise SystemExit("✗ the lab is not up (.lab/env missing): run lab/lab-up.sh or make demo")
    out = {}
    for line in env_file.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


class Pve:
    """Minimal PVE API client: ticket auth, JSON answers, task waiting."""

    def __init__(self, endpoint: str, username: str, password: str, insecure: bool):
        self.base = endpoint.rstrip("/") + "/api2/json"
        self.ctx = ssl.create_default_context()
        if insecure:
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        self.username, self.password = username, password
        self.ticket: tuple[str, str] | None = None

    def _do(self, method: str, path: str, data: dict | None = None):
        headers = {}
        if self.ticket:
            headers["Cookie"] = f"PVEAuthCookie={self.ticket[0]}"
            if method != "GET":
                headers["CSRFPreventionToken"] = self.ticket[1]
        url = self.base + path
        body = None
        if data and method == "GET":
            url += "?" + urllib.parse.urlencode(data)
        elif data:
            body = urllib.parse.urlencode(data).encode()
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=60) as resp:
                return json.load(resp).get("data")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"PVE API {method} {path}: {exc.code} {exc.reason}: {detail}") from None

    def call(self, method: str, path: str, data: dict | None = None):
        if self.ticket is None:
            got = self._do("POST", "/access/ticket", {"username": self.username, "password": self.password})
            self.ticket = (got["ticket"], got["CSRFPreventionToken"])
        return self._do(method, path, data)

    def wait_task(self, node: str, upid: str, timeout: float = 600) -> None:
        if not isinstance(upid, str) or not upid.startswith("UPID:"):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.call("GET", f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe='')}/status")
            if st.get("status") == "stopped":
                if st.get("exitstatus") != "OK":
                    log_text = self.call("GET", f"/nodes/{node}/tasks/{urllib.parse.quote(upid, safe='')}/log")
                    lines = " / ".join(str(x.get("t", "")) for x in (log_text or [])[-5:])
                    raise RuntimeError(f"PVE task {upid} failed: {st.get('exitstatus')} ({lines})")
                return
            time.sleep(0.2)
        raise RuntimeError(f"PVE task {upid} did not finish in {timeout}s")


def sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def plain(v):
    """Secret-wrapped inputs as values (the mock runtime passes secrets wrapped)."""
    sig = "4dabf18193072939515e22adb298388d"
    if isinstance(v, dict):
        if sig in v:
            return plain(v.get("value"))
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


class Performer:
    """A pulumi.runtime.Mocks whose new_resource performs the resource against the lab."""

    def __init__(self, env: dict[str, str], state: dict):
        self.env = env
        self.state = state
        self.pve: Pve | None = None
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.declared_containers: dict[str, str] = {}  # vmid -> node, this run
        self.declared_commands: set[str] = set()

    # --- mocks interface ----------------------------------------------------------------
    def new_resource(self, args):
        inputs = plain(args.inputs)
        handler = {
            "pulumi:providers:proxmoxve": self.provider,
            "proxmoxve:download/file:File": self.template,
            "proxmoxve:index/containerLegacy:ContainerLegacy": self.container,
            "command:remote:Command": self.command,
        }.get(args.typ)
        if handler is None:
            return [f"{args.name}-id", inputs]
        try:
            return handler(args.name, inputs)
        except Exception as exc:  # surfaced by the SDK as the program's failure
            print(f"✗ {args.typ} {args.name}: {exc}", file=sys.stderr, flush=True)
            raise

    def call(self, args):
        """The provider's data sources the program reads, answered by the lab's API as the bpg
        provider answers them; any other is refused, so a new one shows up here."""
        if args.token == "proxmoxve:index/getVersion:getVersion":  # bpg: GET /version
            pve = self.pve or Pve(self.env["LAB_ENDPOINT"], self.env.get("LAB_PVE_USER", "root@pam"),
                                  Path(self.env["LAB_PVE_PASSWORD_FILE"]).read_text().strip(), True)
            v = pve.call("GET", "/version") or {}
            return {"id": "version", "release": v.get("release"), "version": v.get("version"),
                    "repositoryId": v.get("repoid")}
        raise RuntimeError(f"lab/run-program.py does not perform the data source {args.token}")

    # --- resources ----------------------------------------------------------------------
    def provider(self, name, inputs):
        self.pve = Pve(inputs["endpoint"], inputs.get("username", "root@pam"), inputs["password"],
                       str(inputs.get("insecure", "false")).lower() == "true")
        return [f"{name}-id", inputs]

    def template(self, name, inputs):
        node, ds, fname = inputs["nodeName"], inputs["datastoreId"], inputs["fileName"]
        volid = f"{ds}:vztmpl/{fname}"
        content = self.pve.call("GET", f"/nodes/{node}/storage/{ds}/content", {"content": "vztmpl"}) or []
        if any(c.get("volid") == volid for c in content):
            log(f"template {volid} present")
        else:
            log(f"downloading template {fname}")
            upid = self.pve.call("POST", f"/nodes/{node}/storage/{ds}/download-url",
                                 {"content": "vztmpl", "filename": fname, "url": inputs["url"]})
            self.pve.wait_task(node, upid)
        return [volid, {**inputs, "id": volid}]

    @staticmethod
    def ct_params(i: dict) -> dict:
        init = i.get("initialization") or {}
        ipv4 = ((init.get("ipConfigs") or [{}])[0].get("ipv4")) or {}
        nic = (i.get("networkInterfaces") or [{}])[0]
        net = f"name={nic.get('name', 'eth0')},bridge={nic.get('bridge', 'vmbr0')}"
        if nic.get("firewall"):  # bpg's provider leaves firewall out when false (PVE's default: off)
            net += ",firewall=1"
        if ipv4.get("address"):
            net += f",ip={ipv4['address']}"
        if ipv4.get("gateway"):
            net += f",gw={ipv4['gateway']}"
        params = {
            "vmid": int(i["vmId"]),
            "ostemplate": i["operatingSystem"]["templateFileId"],
            "ostype": i["operatingSystem"].get("type", "debian"),
            "hostname": init.get("hostname"),
            "cores": int(i["cpu"]["cores"]),
            "memory": int(i["memory"]["dedicated"]),
            "swap": int(i["memory"].get("swap", 0)),
            "rootfs": f"{i['disk']['datastoreId']}:{int(i['disk']['size'])}",
            "net0": net,
            "unprivileged": 1 if i.get("unprivileged") else 0,
            "onboot": 1 if i.get("startOnBoot", True) else 0,
            "description": i.get("description", ""),
        }
        if i.get("hookScriptFileId"):
            params["hookscript"] = i["hookScriptFileId"]
        feats = i.get("features") or {}
        if feats:
            params["features"] = ",".join(f"{k}={1 if v else 0}" for k, v in sorted(feats.items()))
        # bpg (proxmox/nodes/containers/containers_types.go): CustomMountPoint's ReadOnly is
        # `url:"ro,omitempty,int"`; CustomDevicePassthrough is path, deny-write, gid, mode, uid
        for n, mp in enumerate(i.get("mountPoints") or []):
            params[f"mp{n}"] = f"{mp['volume']},mp={mp['path']}" + (",ro=1" if mp.get("readOnly") else "")
        for n, dev in enumerate(i.get("devicePassthroughs") or []):
            opts = [dev["path"]]
            if dev.get("denyWrite"):
                opts.append("deny-write=1")
            # numbers reach the mock runtime as floats (997.0): PVE's schema wants integers
            opts += [f"{k}={int(dev[k]) if isinstance(dev[k], float) else dev[k]}"
                     for k in ("gid", "mode", "uid") if dev.get(k) is not None]
            params[f"dev{n}"] = ",".join(str(o) for o in opts)
        return params

    def container(self, name, inputs):
        node = inputs["nodeName"]
        params = self.ct_params(inputs)
        vmid = params["vmid"]
        existing = {int(c["vmid"]) for c in self.pve.call("GET", f"/nodes/{node}/lxc") or []}
        if vmid in existing:
            conf = self.pve.call("GET", f"/nodes/{node}/lxc/{vmid}/config")
            changes = {k: params[k] for k in ("cores", "memory", "swap", "hostname", "onboot", "hookscript")
                       if k in params and str(conf.get(k)) != str(params[k])}
            if changes:
                log(f"container {vmid}: updating {', '.join(sorted(changes))} in place")
                self.pve.call("PUT", f"/nodes/{node}/lxc/{vmid}/config", changes)
            else:
                log(f"container {vmid}: unchanged")
        else:
            log(f"container {vmid}: creating ({params['hostname']})")
            upid = self.pve.call("POST", f"/nodes/{node}/lxc", {**params, "start": 1 if inputs.get("started", True) else 0})
            self.pve.wait_task(node, upid)
        self.state.setdefault("containers", {})[str(vmid)] = node
        self.declared_containers[str(vmid)] = node
        return [str(vmid), {**inputs, "vmId": vmid}]

    def command(self, name, inputs):
        conn = inputs["connection"]
        self.declared_commands.add(name)
        key = sha([inputs.get("create"), inputs.get("stdin"), inputs.get("triggers")])
        prev = self.state.setdefault("commands", {}).get(name)
        if prev and prev["key"] == key:
            self.skipped.append(name)
            return [f"{name}-id", {**inputs, "stdout": prev["stdout"], "stderr": ""}]
        log(f"{name}: {inputs['create']}")
        keyfile = private_key_file(conn["privateKey"])
        ssh = [
            "ssh", "-i", str(keyfile), "-p", str(int(conn.get("port", 22))),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={int(conn.get('perDialTimeout', 10))}",
            "-o", f"ConnectionAttempts={int(conn.get('dialErrorLimit', 5))}",
            # a node that goes silent mid-step: pulumi-command's ssh.Dial gets Go's default TCP
            # keepalive (net.Dialer: 15 s idle, 15 s interval, 9 probes), so the engine fails the
            # step after ~150 s (measured: 148 s, "remote command exited without exit status or
            # exit signal"); OpenSSH's own keepalive gives the same bound here instead of a hang
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=9",
            f"{conn.get('user', 'root')}@{conn['host']}", inputs["create"],
        ]
        started = time.monotonic()
        proc = subprocess.run(ssh, input=inputs.get("stdin", ""), capture_output=True, text=True)
        for line in proc.stderr.splitlines():
            print(f"    {line}", file=sys.stderr)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            # connected (the step printed something, or ssh says the link dropped) vs never reached
            if proc.returncode == 255 and (proc.stdout.strip() or any(m in proc.stderr for m in ("closed by remote host", "==>"))):
                raise RuntimeError(f"lost the SSH connection to {conn['host']}:{int(conn.get('port', 22))} during the step: {tail}")
            if proc.returncode == 255:
                raise RuntimeError(f"cannot reach {conn['host']}:{int(conn.get('port', 22))} over SSH: {tail}")
            raise RuntimeError(f"`{inputs['create']}` exited {proc.returncode}: {tail}")
        self.ran.append(name)
        log(f"{name}: done in {time.monotonic() - started:.1f}s")
        with _STATE_LOCK:
            self.state["commands"][name] = {"key": key, "stdout": proc.stdout}
        save_state(self.state)
        return [f"{name}-id", {**inputs, "stdout": proc.stdout, "stderr": proc.stderr}]


def private_key_file(private_key: str) -> Path:
    """The connection's key as a file for ssh -i, written once and atomically.

    Steps run concurrently; rewriting one shared file in place let an ssh read a
    half-written key ("Load key ...: error in libcrypto"). The file is named by
    the key's hash, so every step reads a complete file and a new key gets its own.
    """
    text = private_key if private_key.endswith("\n") else private_key + "\n"
    keyfile = LAB / "run" / f"program-ssh-key-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if not keyfile.exists():
        keyfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = keyfile.with_name(f"{keyfile.name}.tmp{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, keyfile)
    return keyfile


def load_state() -> dict:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


_STATE_LOCK = threading.Lock()


def save_state(state: dict) -> None:
    # steps run concurrently (the SDK registers independent resources in parallel)
    with _STATE_LOCK:
        tmp = STATE.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(STATE)


def stack_config(stack: str, env: dict[str, str], config_file: Path | None = None) -> dict[str, str]:
    import yaml

    doc = yaml.safe_load((config_file or ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    cfg = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in doc.items() if not (isinstance(v, dict) and "secure" in v)}
    cfg[f"{NS}:proxmoxPassword"] = Path(env["LAB_PVE_PASSWORD_FILE"]).read_text().strip()
    cfg[f"{NS}:sshPrivateKey"] = Path(env["LAB_SSH_KEY"]).read_text()
    # the lab's other secrets (lab/lab-up.sh): one file per config key under .lab/secrets
    secrets = Path(env["LAB_PVE_PASSWORD_FILE"]).parent.parent / "secrets"
    for f in sorted(secrets.glob("*")) if secrets.is_dir() else []:
        cfg[f"{NS}:{f.name}"] = f.read_text().strip()
    return cfg


def up(stack: str, outputs_file: Path | None, config_file: Path | None = None) -> int:
    import pulumi

    env = read_env()
    state = load_state()
    performer = Performer(env, state)

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            return performer.new_resource(args)

        def call(self, args):
            return performer.call(args)

    exports: dict = {}
    pulumi.runtime.set_mocks(Mocks(), project="homelab-media", stack=stack, preview=False)
    cfg = stack_config(stack, env, config_file)
    secret_keys = [f"{NS}:{k}" for k in ("proxmoxPassword", "sshPrivateKey", "grafanaAdminPassword",
                                            "jellyfinAdminPassword") if f"{NS}:{k}" in cfg]
    pulumi.runtime.set_all_config(cfg, secret_keys)
    real_export = pulumi.export
    pulumi.export = lambda name, value: exports.__setitem__(name, value)  # collect the stack outputs
    result: dict = {}
    started = time.monotonic()

    @pulumi.runtime.test
    def program():
        os.chdir(ROOT)
        sys.path.insert(0, str(ROOT))
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        names = sorted(exports)
        return pulumi.Output.all(*[exports[n] for n in names]).apply(
            lambda values: result.update(dict(zip(names, values)))
        )

    try:
        program()
        removed = remove_undeclared(performer, state)
    except SystemExit as exc:  # config refused: the program already named every problem
        return 2 if exc.code else 0
    except Exception as exc:
        print(f"✗ up failed: {exc}", file=sys.stderr)
        return 1
    finally:
        pulumi.export = real_export
        save_state(state)
    summary = {
        "outputs": plain(result),
        "commands_ran": performer.ran,
        "commands_unchanged": performer.skipped,
        "containers_removed": removed,
        "seconds": round(time.monotonic() - started, 1),
    }
    text = json.dumps(summary, indent=2, default=str)
    if outputs_file:
        outputs_file.write_text(text)
    print(text)
    return 0


def remove_undeclared(performer: "Performer", state: dict) -> list[str]:
    """What the engine does after a successful update for resources the program no longer declares
    (e.g. homelab-media:workers emptied): their deletes. A container is stopped and deleted through
    the API; a Command has no delete (the program declares none), it is only forgotten, so declaring
    it again runs it again, as the engine would create it anew."""
    removed = []
    for vmid, node in sorted((state.get("containers") or {}).items()):
        if vmid in performer.declared_containers:
            continue
        pve = performer.pve
        present = {str(c["vmid"]) for c in pve.call("GET", f"/nodes/{node}/lxc") or []}
        if vmid in present:
            if (pve.call("GET", f"/nodes/{node}/lxc/{vmid}/status/current") or {}).get("status") == "running":
                log(f"container {vmid}: no longer declared: stopping")
                pve.wait_task(node, pve.call("POST", f"/nodes/{node}/lxc/{vmid}/status/stop"))
            log(f"container {vmid}: no longer declared: destroying (its bind mounts are never deleted)")
            pve.wait_task(node, pve.call("DELETE", f"/nodes/{node}/lxc/{vmid}"))
        del state["containers"][vmid]
        removed.append(vmid)
    for name in [n for n in (state.get("commands") or {}) if n not in performer.declared_commands]:
        del state["commands"][name]
    return removed


def destroy(stack: str) -> int:
    env = read_env()
    state = load_state()
    pve = Pve(env["LAB_ENDPOINT"], env.get("LAB_PVE_USER", "root@pam"),
              Path(env["LAB_PVE_PASSWORD_FILE"]).read_text().strip(), True)
    for vmid, node in sorted((state.get("containers") or {}).items()):
        present = {int(c["vmid"]) for c in pve.call("GET", f"/nodes/{node}/lxc") or []}
        if int(vmid) not in present:
            log(f"container {vmid}: already gone")
            continue
        st = pve.call("GET", f"/nodes/{node}/lxc/{vmid}/status/current")
        if st.get("status") == "running":
            log(f"container {vmid}: stopping")
            pve.wait_task(node, pve.call("POST", f"/nodes/{node}/lxc/{vmid}/status/stop"))
        log(f"container {vmid}: destroying (the pool is a bind mount: PVE never deletes it)")
        pve.wait_task(node, pve.call("DELETE", f"/nodes/{node}/lxc/{vmid}"))
    # like the program: the template is retained, node-side steps have no delete
    STATE.unlink(missing_ok=True)
    print(json.dumps({"destroyed": sorted((state.get("containers") or {}).keys())}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("action", choices=["up", "destroy"])
    p.add_argument("--stack", default="lab")
    p.add_argument("--outputs", type=Path, help="also write the JSON summary to this file")
    p.add_argument("--config-file", type=Path, help="stack file to use instead of Pulumi.<stack>.yaml")
    a = p.parse_args(argv)
    return up(a.stack, a.outputs, a.config_file) if a.action == "up" else destroy(a.stack)


if __name__ == "__main__":
    sys.exit(main())
