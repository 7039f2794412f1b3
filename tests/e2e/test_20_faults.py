"""Faults against the local lab: an unreachable node, a PVE task that fails, an `up` killed halfway,
an unmounted pool. Each starts from an empty stack and destroys what it made.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from .lab import LAB_DIR, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]


class SilentListener:
    """Accepts TCP connections on loopback and never says a word: an SSH dial that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


def test_ssh_unreachable_fails_within_bounded_time(lab, empty_stack):
    deployer = empty_stack
    listener = SilentListener()
    try:
        deployer.set_config("ssh.port", str(listener.port))
        started = time.monotonic()
        result = deployer.up(check=False, timeout=600)
        took = time.monotonic() - started
    finally:
        listener.close()
    text = result.text
    assert result.returncode != 0, "up must fail when the node does not answer SSH"
    # the program's pre-flight check: one banner wait of perDialTimeout (5 s in Pulumi.lab.yaml),
    # before any resource; pulumi-command alone would hang here (its timeout is the TCP dial's)
    assert took < 45, f"took {took:.0f}s to give up on SSH"
    assert f"127.0.0.1:{listener.port}" in text, text[-3000:]
    assert "no SSH banner" in text and "homelab-media:ssh.host" in text and "homelab-media:ssh.port" in text, \
        text[-3000:]
    assert lab.containers() == {}, "no container may be created before the node's checks passed"


def test_pve_task_failure_surfaces_pves_message(lab, empty_stack):
    deployer = empty_stack
    message = ("unable to create CT {vmid} - lvcreate 'pve/vm-{vmid}-disk-0' error:   Volume group \"pve\" has "
               "insufficient free space (0 extents): 2048 required.")
    lab.control("POST", "/lab/fail-task", {"type": "vzcreate", "id": "201", "message": message, "times": 1})
    result = deployer.up(check=False)
    assert result.returncode != 0
    assert "insufficient free space" in result.text and "unable to create CT 201" in result.text, result.text[-3000:]
    assert 201 not in lab.containers()
    assert not (lab.conf_dir / "201.conf").exists()
    # the failure was one-off: the next up converges
    deployer.up()
    assert lab.containers()[201]["status"] == "running"
    deployer.check_no_changes()


def test_up_killed_mid_bootstrap_then_up_converges(lab, empty_stack):
    deployer = empty_stack
    log = LAB_DIR / "log" / "killed-up.log"
    before = len(lab.pct_calls())
    proc = deployer.popen_up(log)
    try:
        # wait until a container's bootstrap runs (a pct exec still going), then kill the CLI hard
        wait_for(lambda: proc.poll() is not None or
                 any(c.args[:2] == ["exec", "201"] for c in lab.pct_calls()[before:]), 900,
                 what="a pct exec in container 201")
        assert proc.poll() is None, f"up ended before it could be killed:\n{log.read_text()[-3000:]}"
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if deployer.engine:
        # the killed CLI left its lock: a plain up is refused until the README's recovery command ran
        refused = deployer.up(check=False, timeout=300)
        assert refused.returncode != 0 and "locked" in refused.text, refused.text[-3000:]
        recovered = deployer.recover()
        assert "stale lock" in recovered.text, recovered.text[-3000:]
    result = deployer.up(check=False)
    assert result.returncode == 0, result.text[-6000:]
    out = deployer.outputs()
    assert out["transcoder"]["vmId"] == 201 and out["ripper"]["vmId"] == 202
    assert set(lab.containers()) == {201, 202, 203, 204}
    deployer.check_no_changes()


def test_unmounted_pool_stops_before_any_container(lab, empty_stack):
    deployer = empty_stack
    lab.set_pool_mounted(False)
    try:
        result = deployer.up(check=False)
    finally:
        lab.set_pool_mounted(True)
    assert result.returncode != 0
    assert "/mnt/storage" in result.text and "mount" in result.text.lower(), result.text[-3000:]
    assert lab.containers() == {}


def test_recover_after_a_container_create_the_engine_never_recorded(lab, empty_stack, needs_engine):
    """An up killed after PVE created CT 202 but before the engine wrote it down leaves a pending
    create (made here deterministically in the file backend's checkpoint, as a killed CLI leaves
    it). `make recover` clears it; the next up takes the container back (the vm id guard knows
    the program's description) instead of failing or recreating it, and converges."""
    import json

    deployer = empty_stack
    deployer.up()
    events = len(lab.events())
    checkpoint = deployer.root / ".pulumi-state/.pulumi/stacks/homelab-media/lab.json"
    doc = json.loads(checkpoint.read_text())
    dep = doc["checkpoint"]["latest"]
    ripper = next(r for r in dep["resources"] if r["urn"].endswith("ContainerLegacy::ripper"))
    gone = {ripper["urn"]}
    while True:  # and whatever was recorded after it (its steps)
        more = {r["urn"] for r in dep["resources"] if r["urn"] not in gone and
                ({r.get("parent")} | set(r.get("dependencies") or [])) & gone}
        if not more:
            break
        gone |= more
    dep["resources"] = [r for r in dep["resources"] if r["urn"] not in gone]
    keep = ("urn", "custom", "type", "inputs", "parent", "provider", "dependencies", "propertyDependencies")
    dep["pending_operations"] = [{"resource": {k: v for k, v in ripper.items() if k in keep}, "type": "creating"}]
    checkpoint.write_text(json.dumps(doc))

    recovered = deployer.recover()
    assert "Clear ripper" in recovered.text, recovered.text[-3000:]
    deployer.up()
    assert not [e for e in lab.events()[events:] if e[1] in ("create", "destroy")], "CT 202 was recreated"
    assert 202 in lab.containers()
    deployer.check_no_changes()
