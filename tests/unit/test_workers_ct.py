"""homelab-media:workers, :nodes and :queue under Pulumi's mocks (docs/adr/0017), and their config rules.

What runs for real is in tests/lab/test_workers_on_lab.py (real LXC, real PostgreSQL, real ffmpeg)
and tests/queue (the queue layer with real PostgreSQL and real worker processes)."""

from __future__ import annotations

import json

import pulumi
import pytest
import yaml

from components import monitoring_render as mr
from components.config import ConfigError, Secrets, parse
from tests.unit.test_program import NS, SECRET_SIG, SSH_CHECKS, _call_line, homelab_config, program  # noqa: F401

STATIC = {"transcoder": "192.168.1.201/24", "ripper": "192.168.1.202/24"}
WORKERS = [
    {"name": "worker-2", "vmId": 211, "ipv4": "192.168.1.211/24", "cores": 4, "gpu": "none", "crf": 22},
    {"name": "worker-3", "vmId": 212, "node": "pve2", "ipv4": "192.168.1.212/24", "encoder": "hevc_qsv",
     "gpu": "/dev/dri/renderD129", "preset": "veryslow"},
]
NODES = [{"name": "pve2", "ssh": {"host": "192.168.1.11"}}]
QUEUE = {"ipv4": "192.168.1.205/24"}


def stack(workers=WORKERS, nodes=NODES, queue=QUEUE, **extra) -> dict[str, str]:
    doc = yaml.safe_load(open("Pulumi.homelab.yaml"))["config"]
    over = {f"{NS}:network": json.dumps({**doc.get(f"{NS}:network", {}), "gateway": "192.168.1.1"})}
    for key, ip in STATIC.items():
        over[f"{NS}:{key}"] = json.dumps({**doc[f"{NS}:{key}"], "ipv4": ip})
    if workers is not None:
        over[f"{NS}:workers"] = json.dumps(workers)
    if nodes is not None:
        over[f"{NS}:nodes"] = json.dumps(nodes)
    if queue is not None:
        over[f"{NS}:queue"] = json.dumps(queue)
    return homelab_config(**over, **extra)


def cfg_of(config: dict[str, str], **secrets):
    raw = {k.split(":", 1)[1]: json.loads(v) for k, v in config.items()
           if k.startswith(NS + ":") and k.split(":", 1)[1] not in (
               "proxmoxPassword", "sshPrivateKey", "makemkvKey", "statusPassword", "queuePassword")}
    return parse(raw, Secrets(proxmox_password=True, ssh_private_key=True, **secrets), require_secrets=True)


def settle(g):
    outs = [g["transcoder"].gpu, g["ripper"].rip]
    outs += [w.summary for w in g.get("workers") or []]
    if g.get("queue") is not None:
        outs.append(g["queue"].summary)
    return pulumi.Output.all(*outs)


def line(mocks, name: str) -> str:
    return _call_line(mocks.resources[name].inputs["stdin"])


@pulumi.runtime.test
def test_no_workers_deploys_what_one_worker_had(program):
    mocks, g = program(homelab_config())

    def check(_):
        assert not [n for n in mocks.resources if n.startswith(("queue", "worker-", "media-host-pve"))]
        pipeline = line(mocks, "transcoder-pipeline")
        assert "--db" not in pipeline and "--worker-name" not in pipeline
        assert "transcoder-queue-password" not in mocks.resources

    return settle(g).apply(check)


@pulumi.runtime.test
def test_queue_is_an_unprivileged_container_with_only_its_backup_folder(program):
    mocks, g = program(stack())

    def check(_):
        ct = mocks.resources["queue"].inputs
        assert ct["unprivileged"] is True and ct["vmId"] == 205 and ct["nodeName"] == "pve"
        assert ct["mountPoints"] == [{"volume": "/mnt/storage/backups/queue", "path": "/var/backups/media-queue",
                                      "readOnly": False}]
        assert not ct.get("hookScriptFileId")
        d = line(mocks, "queue-backup-dir")
        assert "host-ct-dir.sh" in d and "--dir backups/queue" in d and "--not movies" in d
        assert mocks.resources["queue-backup-dir"].inputs["create"] == "bash -s"  # on the node
        pg = line(mocks, "queue-postgresql")
        # pg_hba: worker 1 and both extra workers, nobody else
        for ip in ("192.168.1.201", "192.168.1.211", "192.168.1.212"):
            assert f"--allow {ip}" in pg
        assert pg.count("--allow") == 3 and "--listen 192.168.1.205" in pg and "192.168.1.202" not in pg
        # the guard covers it by its backup mount
        guard = line(mocks, "media-host-recreate-guard")
        assert "205:queue:queue:local-lvm:8:0" in guard and "205:mp0:/mnt/storage/backups/queue:/var/backups/media-queue:0" in guard

    return settle(g).apply(check)


@pulumi.runtime.test
def test_generated_password_is_a_secret_that_reaches_every_worker_by_stdin_only(program):
    mocks, g = program(stack())

    def check(_):
        step = mocks.resources["queue-password"]
        assert "--from-stdin" not in line(mocks, "queue-password")
        from tests.unit.test_program import OPTS
        assert "stdout" in (OPTS["queue-password"].additional_secret_outputs or [])
        for name in ("transcoder-queue-password", "worker-worker-2-queue-password", "worker-worker-3-queue-password",
                     "queue-postgresql"):
            raw = mocks.raw_inputs[name]["stdin"]
            assert isinstance(raw, dict) and raw.get(SECRET_SIG), f"{name}: stdin is not a secret"
        sf = line(mocks, "worker-worker-2-queue-password")
        assert "ct-secret-file.sh" in sf and "--path /etc/media-pipeline/db-password" in sf and "--make-dir" in sf
        assert step.inputs["create"] == "pct exec 205 -- bash -s"

    return settle(g).apply(check)


@pulumi.runtime.test
def test_queue_password_from_the_stack_is_used(program):
    mocks, g = program(stack(**{f"{NS}:queuePassword": "a-long-queue-password"}))

    def check(_):
        assert "--from-stdin" in line(mocks, "queue-password")
        raw = mocks.raw_inputs["queue-password"]["stdin"]
        assert isinstance(raw, dict) and raw.get(SECRET_SIG)
        assert "a-long-queue-password" not in json.dumps(mocks.resources["queue-password"].inputs["create"])
        assert all("a-long-queue-password" not in _call_line(r.inputs["stdin"])
                   for r in mocks.resources.values() if r.typ == "command:remote:Command")

    return settle(g).apply(check)


@pulumi.runtime.test
def test_workers_share_the_queue_with_their_own_settings(program):
    mocks, g = program(stack())

    def check(_):
        url = "postgresql://media_pipeline@192.168.1.205:5432/media_pipeline"
        t = line(mocks, "transcoder-pipeline")
        assert f"--db {url}" in t and "--worker-name transcoder" in t and "--web-port 8480" in t
        w2 = line(mocks, "worker-worker-2-pipeline")
        assert f"--db {url}" in w2 and "--db-password-file /etc/media-pipeline/db-password" in w2
        assert "--worker-name worker-2" in w2 and "--web-port 0" in w2 and "--lease-seconds 60" in w2
        assert "--encoder libx265" in w2 and "--crf 22" in w2 and "--preset slow" in w2  # preset inherited
        w3 = line(mocks, "worker-worker-3-pipeline")
        assert "--encoder hevc_qsv" in w3 and "--preset veryslow" in w3 and "--qsv-device /dev/dri/renderD129" in w3
        # the password file is there before the service starts
        from tests.unit.test_program import DEPENDS_ON
        assert any(getattr(d, "_name", None) == "worker-worker-2-queue-password" or
                   "queue-password" in str(getattr(d, "_name", "")) for d in DEPENDS_ON["worker-worker-2-pipeline"])

    return settle(g).apply(check)


@pulumi.runtime.test
def test_worker_containers_on_their_nodes_privileged_with_the_pool(program):
    mocks, g = program(stack())

    def check(_):
        w2, w3 = mocks.resources["worker-worker-2"].inputs, mocks.resources["worker-worker-3"].inputs
        assert w2["nodeName"] == "pve" and w3["nodeName"] == "pve2"
        for w in (w2, w3):
            assert w["unprivileged"] is False
            assert w["mountPoints"] == [{"volume": "/mnt/storage", "path": "/mnt/storage"}]
        assert w2["cpu"]["cores"] == 4 and w2["initialization"]["hostname"] == "worker-2"
        # gpu none: no device lines and no GPU proof; the GPU worker gets the node's DRI lines
        assert "lxc.cgroup2.devices.allow: c 226" not in mocks.resources["worker-worker-2-raw-lines"].inputs["stdin"]
        assert "lxc.cgroup2.devices.allow: c 226" in mocks.resources["worker-worker-3-raw-lines"].inputs["stdin"]
        assert "worker-worker-2-verify-gpu" not in mocks.resources and "worker-worker-3-verify-gpu" in mocks.resources
        # pve2 gets what the stack's node gets, for its own worker only, over its own ssh
        for step in ("recreate-guard", "pool-check", "media-user", "discover", "hookscript", "template"):
            assert f"media-host-pve2-{step}" in mocks.resources, step
        hook2 = line(mocks, "media-host-pve2-hookscript")
        assert "--ct 212:gpu" in hook2 and "201:" not in hook2 and "202:" not in hook2
        assert "--ct 211:none" in line(mocks, "media-host-hookscript")
        assert mocks.resources["media-host-pve2-discover"].inputs["connection"]["host"] == "192.168.1.11"
        assert mocks.resources["media-host-pve2-template"].inputs["nodeName"] == "pve2"
        assert "212:workers[1]:worker-3" in line(mocks, "media-host-pve2-recreate-guard")
        assert "--node pve2" in line(mocks, "media-host-pve2-recreate-guard")
        assert mocks.resources["worker-worker-3-pipeline"].inputs["connection"]["host"] == "192.168.1.11"

    return settle(g).apply(check)


@pulumi.runtime.test
def test_every_node_is_checked_before_anything(program):
    mocks, g = program(stack(), preview=False)

    def check(_):
        assert ("192.168.1.11", 22) in [(h, p) for h, p, *_ in SSH_CHECKS]

    return settle(g).apply(check)


def test_monitoring_scrapes_every_worker():
    cfg = cfg_of(stack(**{f"{NS}:monitoring": json.dumps(
        {"enabled": True, "ipv4": "192.168.1.204/24", "nodeAddress": "192.168.1.10", "grafana": {"enabled": False}})}))
    targets = mr.scrape_targets(cfg)["media-pipeline"]
    assert targets == ["192.168.1.201:9464", "192.168.1.211:9464", "192.168.1.212:9464"]
    ep = mr.worker_metrics_endpoint(cfg, cfg.workers[0])
    assert ep.bind == "192.168.1.211" and ep.allow == ("192.168.1.204/32",)


@pytest.mark.parametrize("change, expected", [
    (lambda w, n, q: w.append({**w[0]}), "workers[2].vmId = 211 is refused: workers[0].vmId"),
    (lambda w, n, q: w.__setitem__(1, {**w[1], "node": "pve9"}), "workers[1].node = 'pve9' is refused"),
    (lambda w, n, q: w.__setitem__(0, {**w[0], "ipv4": "dhcp"}), "workers[0].ipv4 is dhcp"),
    (lambda w, n, q: w.__setitem__(0, {**w[0], "encoder": "hevc_qsv"}), "workers[0].encoder = 'hevc_qsv' is refused with gpu 'none'"),
    (lambda w, n, q: w.__setitem__(0, {**w[0], "name": "transcoder", "hostname": "w2"}), "workers[0].name = 'transcoder' is refused"),
    (lambda w, n, q: w.__setitem__(0, {**w[0], "vmId": 205}), "workers[0].vmId = 205 is refused: queue.vmId"),
    (lambda w, n, q: w.__setitem__(0, {**w[0], "crf": 99}), "workers[0].crf"),
    (lambda w, n, q: w.__setitem__(1, {**w[1], "preset": "placebo"}), "workers[1].preset is refused with workers[1].encoder 'hevc_qsv'"),
    (lambda w, n, q: w.__setitem__(0, {**w[0], "gpu": "/dev/sr0"}), "workers[0].gpu = '/dev/sr0' is refused"),
    (lambda w, n, q: n.append({"name": "pve2", "ssh": {"host": "192.168.1.12"}}), "nodes[1].name = 'pve2' is refused"),
    (lambda w, n, q: n.append({"name": "pve3", "ssh": {"host": "192.168.1.11"}}), "nodes[1].ssh = 192.168.1.11:22 is refused"),
    (lambda w, n, q: q.update(ipv4="dhcp"), "queue.ipv4 is dhcp"),
    (lambda w, n, q: q.update(vmId=201), "queue.vmId = 201 is refused: transcoder.vmId"),
    (lambda w, n, q: q.update(backupDir="/abs"), "queue.backupDir = '/abs' is refused"),
    (lambda w, n, q: q.update(database="Media-DB"), "queue.database = 'Media-DB' is refused"),
    (lambda w, n, q: q.update(node="pve7"), "queue.node = 'pve7' is refused"),
])
def test_bad_worker_settings_are_refused_naming_the_key(change, expected):
    w, n, q = [dict(x) for x in WORKERS], [dict(x) for x in NODES], dict(QUEUE)
    change(w, n, q)
    with pytest.raises(ConfigError) as exc:
        cfg_of(stack(workers=w, nodes=n, queue=q))
    assert any(expected in m and m.startswith(f"{NS}:") for m in exc.value.messages), exc.value.messages


def test_workers_must_be_a_list():
    with pytest.raises(ConfigError) as exc:
        cfg_of({**stack(), f"{NS}:workers": json.dumps({"name": "w"})})
    assert any("homelab-media:workers must be a list" in m for m in exc.value.messages)


def test_queue_output_is_reachable_only_when_every_worker_reached_it():
    from components.queue_ct import queue_output

    cfg = cfg_of(stack())
    install = {"version": "15.20", "lastBackup": "media_pipeline-x.dump", "allowed": ["192.168.1.201"]}
    ok = {"reachable": True, "state": "healthy"}
    out = queue_output(cfg, install, [ok, ok, ok])
    assert out["reachable"] is True and out["workersReaching"] == 3 and out["address"] == "192.168.1.205:5432"
    assert out["backupDir"] == "/mnt/storage/backups/queue" and out["version"] == "15.20"
    out = queue_output(cfg, install, [ok, {"reachable": False, "reason": "no pg_hba.conf entry"}, ok])
    assert out["reachable"] is False and out["workersReaching"] == 2
    assert queue_output(cfg, install, [])["reachable"] is False
