"""Helpers for the end-to-end tests: the local lab (lab/) and the Pulumi CLI of .tools/.

Lab: reads .lab/env; talks to the node over SSH (the lab key), to fakepve over its API and
its control API (/lab/...), and reads the node tree's logs:
  /var/log/pct.log           `<time> <pid> pct <args>` / `<time> <pid> exit <rc> <secs>s`
  /var/log/ssh-commands.log  `<time> <pid> <command>`, one line per SSH command
  /var/log/lxc-events.log    `<time> <vmid> create|start pid=N|stop|destroy`
Pulumi: runs the CLI with the project's toolchain, the local file backend and the lab's
passphrase; every call has a timeout and returns a CompletedProcess with text output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB_DIR = ROOT / ".lab"
TOOLS = ROOT / ".tools"
PULUMI = TOOLS / "bin" / "pulumi"
STACK = "lab"
STACK_FILE = ROOT / "Pulumi.lab.yaml"
NS = "homelab-media"


def run(cmd, *, timeout=600, check=True, input=None, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, input=input, text=True, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(map(str, cmd))} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-6000:]}\n"
            f"--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


@dataclass(frozen=True)
class PctCall:
    pid: str
    args: list[str]


class Lab:
    """The running lab (after lab/lab-up.sh)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.node_root = Path(env["LAB_NODE_ROOT"])
        self.pool = Path(env["LAB_POOL"])
        self.conf_dir = Path(env["LAB_CONF_DIR"])
        self.ct_dir = Path(env["LAB_CT_DIR"])
        self.node = env["LAB_NODE"]
        self.endpoint = env["LAB_ENDPOINT"].rstrip("/")
        self.password = Path(env["LAB_PVE_PASSWORD_FILE"]).read_text().strip()
        self.ssh_port = int(env["LAB_SSH_PORT"])
        # the second node of the cluster (lab-up.sh): its own sshd and tree, the same API
        self.node2 = env.get("LAB_NODE2", "")
        self.node2_root = Path(env["LAB_NODE2_ROOT"]) if env.get("LAB_NODE2_ROOT") else None
        self.ssh_ports = {self.node: self.ssh_port}
        if self.node2:
            self.ssh_ports[self.node2] = int(env["LAB_SSH2_PORT"])
        self.key = env["LAB_SSH_KEY"]
        self._ctx = ssl.create_default_context()
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE
        self._ticket = None

    @classmethod
    def up(cls) -> "Lab":
        run(["bash", str(ROOT / "lab/lab-up.sh")], timeout=1800)
        return cls(read_env(LAB_DIR / "env"))

    # ----------------------------------------------------------------- ssh

    def ssh(self, command: str, *, input: str | None = None, timeout: float = 120, check: bool = True,
            node: str | None = None):
        """command on a node (the first one unless named) over its sshd."""
        return run(
            ["ssh", "-i", self.key, "-p", str(self.ssh_ports[node or self.node]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{self.env['LAB_SSH_HOST']}", command],
            input=input, timeout=timeout, check=check,
        )

    # ----------------------------------------------------------------- API

    def _request(self, method, url, data=None, headers=None, json_body=None):
        body = None
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None and method != "GET":
            body = urllib.parse.urlencode(data).encode()
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req, context=self._ctx, timeout=30) as resp:
            return json.load(resp)

    def api(self, method: str, path: str, data: dict | None = None):
        if self._ticket is None:
            got = self._request("POST", f"{self.endpoint}/api2/json/access/ticket",
                                {"username": "root@pam", "password": self.password})["data"]
            self._ticket = (got["ticket"], got["CSRFPreventionToken"])
        headers = {"Cookie": f"PVEAuthCookie={self._ticket[0]}"}
        if method != "GET":
            headers["CSRFPreventionToken"] = self._ticket[1]
        url = f"{self.endpoint}/api2/json{path}"
        if method == "GET" and data:
            url += "?" + urllib.parse.urlencode(data)
        return self._request(method, url, data, headers)["data"]

    def control(self, method: str, path: str, body: dict | None = None):
        """The lab's own control API of fakepve (lab/pve-lab.py)."""
        try:
            return self._request(method, f"{self.endpoint}{path}", headers={"Authorization": f"Lab {self.password}"},
                                 json_body=body if method != "GET" else None)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path} {body}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None

    def containers(self) -> dict[int, dict]:
        """Every container of the cluster, each with its "node"."""
        out = {}
        for node in self.ssh_ports:
            for c in self.api("GET", f"/nodes/{node}/lxc"):
                out[int(c["vmid"])] = dict(c, node=node)
        return out

    def node_of(self, vmid: int) -> str:
        """The node a container is on (the first node when the cluster has none by that id)."""
        return self.containers().get(vmid, {}).get("node", self.node)

    def pct(self, vmid: int, args: str, **kw):
        """`pct <args>` for a container, on the node that has it."""
        return self.ssh(f"pct {args}", node=self.node_of(vmid), **kw)

    def remove_all_containers(self) -> None:
        """Stop and destroy every container fakepve has (left by an earlier run)."""
        for vmid, ct in self.containers().items():
            if ct["status"] == "running":
                self.api("POST", f"/nodes/{ct['node']}/lxc/{vmid}/status/stop")
            self.api("DELETE", f"/nodes/{ct['node']}/lxc/{vmid}")

    def ct_config(self, vmid: int) -> dict:
        return self.api("GET", f"/nodes/{self.node_of(vmid)}/lxc/{vmid}/config")

    # ---------------------------------------------------------------- logs

    def _lines(self, rel: str) -> list[str]:
        p = self.node_root / rel
        return p.read_text().splitlines() if p.exists() else []

    def pct_calls(self) -> list[PctCall]:
        out = []
        for line in self._lines("var/log/pct.log"):
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[2] == "pct":
                out.append(PctCall(parts[1], shlex.split(parts[3])))
        return out

    def ssh_commands(self) -> list[str]:
        return [line.split(" ", 2)[2] for line in self._lines("var/log/ssh-commands.log") if line.count(" ") >= 2]

    def events(self, vmid: int | None = None) -> list[tuple[int, str]]:
        """lxc-events.log of every node (each node's lines in their order, the first node's first)."""
        out = []
        lines = self._lines("var/log/lxc-events.log")
        if self.node2_root is not None:
            p = self.node2_root / "var/log/lxc-events.log"
            lines += p.read_text().splitlines() if p.exists() else []
        for line in lines:
            parts = line.split(" ", 2)
            if len(parts) == 3 and (vmid is None or int(parts[1]) == vmid):
                out.append((int(parts[1]), parts[2]))
        return out

    def starts(self, vmid: int) -> int:
        return sum(1 for _, what in self.events(vmid) if what.startswith("start"))

    def counters(self) -> dict:
        """A snapshot to diff: SSH commands, pct calls, container starts, API requests."""
        return {
            "ssh": len(self.ssh_commands()),
            "pct": len(self.pct_calls()),
            "events": len(self.events()),
            "api": self.control("GET", "/lab/state")["requests"],
        }

    # --------------------------------------------------------------- node

    def conf(self, vmid: int) -> str:
        return (self.conf_dir / f"{vmid}.conf").read_text()

    def add_device(self, rel: str, kind: str, major: int, minor: int, group_gid: int, sysfs: dict | None = None):
        """A new fake device node on the node (e.g. dri/renderD129), plus optional sysfs files."""
        path = self.node_root / "dev" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        mode = (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | 0o660
        os.mknod(path, mode, os.makedev(major, minor))
        os.chown(path, 0, group_gid)
        os.chmod(path, 0o660)
        for rel_file, text in (sysfs or {}).items():
            f = self.node_root / "opt/lab/sysfs" / rel_file
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)

    def remove_device(self, rel: str):
        p = self.node_root / "dev" / rel
        if p.exists():
            p.unlink()

    def open_errors(self, vmid: int, *paths: str) -> dict[str, str]:
        """What open(O_RDWR) of each path gives inside the container: "OK" or the errno's name
        (LXC's device cgroup answers EPERM; an allowed stand-in node with no driver, ENXIO)."""
        code = ("import errno, os, sys\n"
                "for p in sys.argv[1:]:\n"
                "    try:\n"
                "        os.close(os.open(p, os.O_RDWR)); print(p, 'OK')\n"
                "    except OSError as e:\n"
                "        print(p, errno.errorcode[e.errno])\n")
        got = self.ssh(f"pct exec {vmid} -- python3 -c {shlex.quote(code)} {' '.join(paths)}").stdout
        return dict(line.split(" ", 1) for line in got.splitlines())

    def set_pool_mounted(self, mounted: bool):
        cmd = "mountpoint -q /mnt/storage || mount --bind /mnt/storage /mnt/storage" if mounted else \
            "! mountpoint -q /mnt/storage || umount /mnt/storage"
        self.ssh(cmd)


@dataclass
class Result:
    returncode: int
    text: str  # stdout and stderr, without colours


def toolchain_gap() -> str | None:
    """What the engine lacks on this machine (tools/toolchain.sh --check), or None."""
    if not PULUMI.exists():
        return ".tools/bin/pulumi is missing (make toolchain)"
    res = subprocess.run(["bash", "tools/toolchain.sh", "--check"], cwd=ROOT, capture_output=True, text=True)
    if res.returncode == 0:
        return None
    missing = [line.split()[0] for line in res.stdout.splitlines() if "MISSING" in line]
    if missing:
        return "missing: " + ", ".join(missing)
    return (res.stdout + res.stderr).strip()[-300:]


class Pulumi:
    """The real engine: the Pulumi CLI of .tools/ against the local backend, stack `lab`."""

    engine = True

    def __init__(self, root: Path = ROOT):
        self.root = root
        env = dict(os.environ)
        env.update(
            PULUMI_HOME=str(TOOLS / "pulumi"),
            PATH=f"{TOOLS / 'bin'}:{root / '.venv' / 'bin'}:{env.get('PATH', '')}",
            PULUMI_SKIP_UPDATE_CHECK="true",
            PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
            PULUMI_IGNORE_AMBIENT_PLUGINS="true",
            PULUMI_CONFIG_PASSPHRASE="lab",
            PULUMI_BACKEND_URL=f"file://{root / '.pulumi-state'}",
        )
        env.pop("PULUMI_ACCESS_TOKEN", None)
        self.env = env
        self.stack_file = StackFile()

    def __call__(self, *args, timeout: float = 1800, check: bool = True, input: str | None = None):
        return run([str(PULUMI), *args, "--non-interactive"], timeout=timeout, check=check, input=input, env=self.env)

    def _result(self, proc) -> Result:
        return Result(proc.returncode, strip_ansi(proc.stdout + "\n" + proc.stderr))

    def popen_up(self, log: Path):
        fh = open(log, "w")
        return subprocess.Popen([str(PULUMI), "up", "--stack", STACK, "--yes", "--skip-preview", "--non-interactive"],
                                cwd=self.root, env=self.env, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def up(self, *, expect_no_changes: bool = False, check: bool = True, timeout: float = 3000) -> Result:
        extra = ["--expect-no-changes"] if expect_no_changes else []
        return self._result(self("up", "--stack", STACK, "--yes", "--skip-preview", "--diff", *extra,
                                 timeout=timeout, check=check))

    def check_no_changes(self) -> Result:
        """`pulumi preview --expect-no-changes`: nothing to do, and (a preview) nothing run."""
        return self._result(self("preview", "--stack", STACK, "--diff", "--expect-no-changes"))

    def recover(self) -> Result:
        """The README's command after an interrupted update: tools/recover.sh (stale lock,
        pending creates)."""
        return self._result(run(["bash", str(self.root / "tools" / "recover.sh"), "--stack", STACK],
                                env=self.env, timeout=600))

    def adopt(self) -> Result:
        """The README's command for containers that exist before the stack: tools/adopt-containers.sh."""
        return self._result(run(["bash", str(self.root / "tools" / "adopt-containers.sh"), "--stack", STACK],
                                env=self.env, timeout=900, check=False))

    def destroy(self, *, check: bool = True, timeout: float = 1800) -> Result:
        return self._result(self("destroy", "--stack", STACK, "--yes", "--skip-preview", timeout=timeout,
                                 check=check))

    def outputs(self) -> dict:
        return json.loads(self("stack", "output", "--stack", STACK, "--json", "--show-secrets").stdout)

    def leftover(self) -> list[str]:
        """Resources still in the state (not the stack itself)."""
        state = json.loads(self("stack", "export", "--stack", STACK).stdout)
        return [r["urn"] for r in (state.get("deployment", {}).get("resources") or [])
                if r.get("type") != "pulumi:pulumi:Stack"]

    def set_config(self, key: str, value: str) -> None:
        self("config", "set", "--stack", STACK, "--path", f"{NS}:{key}", value)

    def set_section(self, section: str, value) -> None:
        """A whole section (a mapping, or a list like workers), one `config set --path` per leaf,
        as a person would type them (Pulumi stores leaves as strings; the program's pydantic
        reads "211" as 211)."""
        for path, leaf in _leaves(section, value):
            self.set_config(path, str(leaf).lower() if isinstance(leaf, bool) else str(leaf))

    def reset_config(self) -> None:
        self.stack_file.restore()

    def start_empty(self) -> None:
        """State from an earlier lab refers to containers fakepve forgot: recreate the stack
        (its config file kept); lab-up.sh then sets the secrets again."""
        if f'"name": "{STACK}"' in self("stack", "ls", "--json").stdout and self.leftover():
            self("stack", "rm", "--stack", STACK, "--yes", "--force", "--preserve-config")
        Lab.up()
        self.stack_file = StackFile()


class ProgramRunner:
    """No engine: lab/run-program.py runs the program's own code under the SDK's mock
    runtime and performs each resource against the lab (docs/adr/0006). Same interface as
    Pulumi; "no changes" means the run performed nothing."""

    engine = False
    SCRIPT = ROOT / "lab" / "run-program.py"

    def __init__(self):
        self.config_file: Path | None = None
        self.summary: dict = {}
        self.out = LAB_DIR / "run" / "e2e-run-program.json"

    def _run(self, action: str, *, check: bool, timeout: float, extra=()) -> Result:
        args = [str(ROOT / ".venv" / "bin" / "python"), str(self.SCRIPT), action, "--stack", STACK, *extra]
        if self.config_file and action == "up":
            args += ["--config-file", str(self.config_file)]
        proc = run(args, check=check, timeout=timeout)
        return Result(proc.returncode, strip_ansi(proc.stdout + "\n" + proc.stderr))

    def popen_up(self, log: Path):
        fh = open(log, "w")
        args = [str(ROOT / ".venv" / "bin" / "python"), str(self.SCRIPT), "up", "--stack", STACK]
        if self.config_file:
            args += ["--config-file", str(self.config_file)]
        return subprocess.Popen(args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def up(self, *, expect_no_changes: bool = False, check: bool = True, timeout: float = 3000) -> Result:
        self.out.unlink(missing_ok=True)
        res = self._run("up", check=check, timeout=timeout, extra=["--outputs", str(self.out)])
        if res.returncode == 0:
            self.summary = json.loads(self.out.read_text())
            if expect_no_changes:
                changed = [line for line in res.text.splitlines()
                           if "creating" in line or "updating" in line or "downloading" in line]
                if self.summary["commands_ran"] or changed:
                    raise AssertionError(f"expected no changes, but ran {self.summary['commands_ran']} {changed}")
        return res

    def check_no_changes(self) -> Result:
        return self.up(expect_no_changes=True)

    def recover(self) -> Result:
        """The runner keeps no lock and no pending operations: nothing to recover."""
        return Result(0, "")

    def destroy(self, *, check: bool = True, timeout: float = 1800) -> Result:
        return self._run("destroy", check=check, timeout=timeout)

    def outputs(self) -> dict:
        return self.summary["outputs"]

    def leftover(self) -> list[str]:
        state = LAB_DIR / "run-program-state.json"
        if not state.exists():
            return []
        return [f"container {vmid}" for vmid in (json.loads(state.read_text()).get("containers") or {})]

    def set_config(self, key: str, value: str) -> None:
        import yaml

        doc = yaml.safe_load((self.config_file or STACK_FILE).read_text())
        section, _, rest = key.partition(".")
        doc["config"].setdefault(f"{NS}:{section}", {})[rest] = yaml.safe_load(value)
        self.config_file = LAB_DIR / "run" / "Pulumi.lab.e2e.yaml"
        self.config_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    def set_section(self, section: str, value) -> None:
        import yaml

        doc = yaml.safe_load((self.config_file or STACK_FILE).read_text())
        doc["config"][f"{NS}:{section}"] = value
        self.config_file = LAB_DIR / "run" / "Pulumi.lab.e2e.yaml"
        self.config_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    def reset_config(self) -> None:
        self.config_file = None

    def start_empty(self) -> None:
        if self.leftover():
            self.destroy()


class StackFile:
    """Pulumi.lab.yaml as it was: tests that change the stack config put it back byte for byte."""

    def __init__(self, path: Path = STACK_FILE):
        self.path = path
        self.saved = path.read_bytes()

    def restore(self):
        if self.path.read_bytes() != self.saved:
            self.path.write_bytes(self.saved)


def pve_options(value: str, default_key: str) -> dict[str, str]:
    """A PVE property string (`/dev/dri/renderD128,gid=997,mode=0660`) as what it means: its
    options by name, the key-less one under `default_key` (pve-container's `default_key` of the
    format: `path` for devN, `volume` for mpN). Order and defaults spelled out by one client
    (bpg writes `deny-write=0,path=...,uid=0`) do not matter, as they do not to PVE."""
    out = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if sep:
            out[key] = val
        else:
            out[default_key] = key
    return out


def _leaves(path: str, value):
    """(config path, leaf) pairs of a nested value: workers[0].name, queue.ipv4, ..."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(f"{path}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(f"{path}[{i}]", v)
    else:
        yield path, value


def wait_for(predicate, timeout: float, every: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0
