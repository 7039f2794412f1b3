"""The whole life cycle against the local lab, in order: up from empty, no-op, in-place change,
raw-line change, destroy. Real sshd, bash, apt and Debian 12 trees; the Proxmox API (fakepve)
and LXC (the pct shim) are stand-ins. The deployer is the Pulumi engine, or the program under
the SDK's mock runtime where the engine cannot be built (see conftest). docs/adr/0005.
"""

from __future__ import annotations

import os

import pytest

from .lab import pve_options, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

TRANSCODER, RIPPER, JELLYFIN, MONITORING = 201, 202, 203, 204


def raw(conf: str) -> list[str]:
    """The raw lxc lines of a conf's main section."""
    main = conf.split("\n[", 1)[0]
    return [line for line in main.splitlines() if line.startswith("lxc.")]


def test_up_from_empty(lab, deployer, pool_sentinels):
    assert lab.containers() == {}, "the lab must start without containers"
    deployer.up()
    out = deployer.outputs()

    # the node's side
    assert out["pool"]["pool"] == "/mnt/storage"
    assert out["pool"]["mounted"] is True
    assert out["mediaUser"]["user"] == "media"
    assert (out["mediaUser"]["uid"], out["mediaUser"]["gid"]) == (1000, 1000)
    for sub in ("staging", "movies", "tv"):
        st = (lab.pool / sub).stat()
        assert (st.st_uid, st.st_gid) == (1000, 1000), f"{sub} is not the media user's"
    gpu = {n["path"]: (n["type"], n["major"], n["minor"]) for n in out["devices"]["gpu"]["nodes"]}
    assert gpu == {"/dev/dri/card0": ("card", 226, 0), "/dev/dri/renderD128": ("render", 226, 128)}
    optical = out["devices"]["optical"]
    assert (optical["sr"]["path"], optical["sr"]["major"], optical["sr"]["minor"]) == ("/dev/sr0", 11, 0)
    assert (optical["sg"]["path"], optical["sg"]["major"], optical["sg"]["minor"]) == ("/dev/sg1", 21, 1)

    # the containers, as PVE sees them
    cts = lab.containers()
    assert set(cts) == {TRANSCODER, RIPPER, JELLYFIN, MONITORING}  # enabled in Pulumi.lab.yaml
    assert all(c["status"] == "running" for c in cts.values())
    for vmid, ip in ((TRANSCODER, "10.99.0.201/24"), (RIPPER, "10.99.0.202/24")):
        cfg = lab.ct_config(vmid)
        assert cfg["mp0"].split(",")[0] == "/mnt/storage" and "mp=/mnt/storage" in cfg["mp0"]
        assert "nesting=1" in cfg["features"]
        # the firewall is off: PVE's default when net0 has no firewall= (bpg leaves it out), or firewall=0
        assert "firewall=1" not in cfg["net0"] and f"ip={ip}" in cfg["net0"]
        assert str(cfg.get("unprivileged", 0)) == "0"
    assert out["transcoder"]["vmId"] == TRANSCODER and out["ripper"]["vmId"] == RIPPER
    # monitoring: unprivileged, nothing of the pool, Prometheus and Alertmanager answer, all targets up
    mon_cfg = lab.ct_config(MONITORING)
    assert str(mon_cfg.get("unprivileged")) == "1" and "mp0" not in mon_cfg and "ip=10.99.0.204/24" in mon_cfg["net0"]
    mon = out["monitoring"]
    assert mon["prometheus"]["answers"] and mon["alertmanager"]["answers"], mon
    assert mon["targetsUp"] == mon["targetsTotal"] == 5 and mon["ok"], mon
    assert mon["grafana"]["answers"] and mon["grafana"]["version"] == "0.1+standin1"  # the lab's stand-in
    # Jellyfin: unprivileged, PVE's devN with the container's render gid, movies and tv read-only
    jf_cfg = lab.ct_config(JELLYFIN)
    assert str(jf_cfg.get("unprivileged")) == "1"
    dev0 = pve_options(jf_cfg["dev0"], "path")
    gid = lab.ssh(f"pct exec {JELLYFIN} -- getent group render").stdout.split(":")[2]
    assert (dev0["path"], dev0["gid"], dev0.get("mode", "0660")) == ("/dev/dri/renderD128", gid, "0660"), dev0
    assert dev0.get("deny-write", "0") == "0" and dev0.get("uid", "0") == "0", dev0
    for key, src, dst in (("mp0", "/mnt/storage/movies", "/media/movies"), ("mp1", "/mnt/storage/tv", "/media/tv")):
        mp = pve_options(jf_cfg[key], "volume")
        assert (mp["volume"], mp["mp"], mp.get("ro")) == (src, dst, "1"), (key, mp)
    jf = out["jellyfinVerification"]
    assert jf["read_only"] is True and jf["render_access"] is True and len(jf["libraries"]) == 2, jf

    # raw lines: in the conf files (pmxcfs) and in the outputs
    t_raw, r_raw = raw(lab.conf(TRANSCODER)), raw(lab.conf(RIPPER))
    assert "lxc.cgroup2.devices.allow: c 226:0 rwm" in t_raw
    assert "lxc.cgroup2.devices.allow: c 226:128 rwm" in t_raw
    assert any(line.startswith("lxc.mount.entry: /dev/dri dev/dri ") for line in t_raw)
    assert "lxc.cgroup2.devices.allow: b 11:0 rwm" in r_raw, "sr0 is a block device: needs a b rule"
    assert "lxc.cgroup2.devices.allow: c 21:1 rwm" in r_raw
    assert any(line.startswith("lxc.mount.entry: /dev/sg1 dev/sg1") for line in r_raw)
    assert set(out["transcoder"]["rawLines"]) == set(t_raw)
    assert set(out["ripper"]["rawLines"]) == set(r_raw)

    # inside the containers: the pool, the devices, the media user, the tools
    lab.ssh(f"pct exec {TRANSCODER} -- test -c /dev/dri/renderD128")
    lab.ssh(f"pct exec {RIPPER} -- test -b /dev/sr0")
    lab.ssh(f"pct exec {RIPPER} -- test -c /dev/sg1")
    ids = lab.ssh(f"pct exec {TRANSCODER} -- id media").stdout
    assert "uid=1000(media)" in ids and ",44(" in ids and ",104(" in ids, ids
    lab.ssh(f"pct exec {TRANSCODER} -- ffmpeg -hide_banner -version")
    lab.ssh(f"pct exec {TRANSCODER} -- test -d /mnt/storage/staging")
    gpu_v, drive_v = out["gpuVerification"], out["driveVerification"]
    assert isinstance(gpu_v, dict) and "ok" in gpu_v and gpu_v.get("render_node") == "/dev/dri/renderD128"
    assert isinstance(drive_v, dict) and (drive_v.get("sr"), drive_v.get("sg")) == ("/dev/sr0", "/dev/sg1")


def test_no_op_runs_nothing(lab, deployer):
    before = lab.counters()
    if deployer.engine:
        deployer.check_no_changes()  # a preview
        assert lab.counters()["ssh"] == before["ssh"], "preview must not run remote commands"
    deployer.up(expect_no_changes=True)
    after = lab.counters()
    assert after["ssh"] == before["ssh"], f"a no-op up ran remote commands: {lab.ssh_commands()[before['ssh']:]}"
    assert after["pct"] == before["pct"]
    assert after["events"] == before["events"], "a no-op up started, stopped or created containers"


def test_cores_change_updates_in_place(lab, deployer, config_restored):
    before = lab.counters()
    t_events, r_events = len(lab.events(TRANSCODER)), len(lab.events(RIPPER))
    deployer.set_config("transcoder.cores", "3")
    deployer.up()
    assert int(lab.ct_config(TRANSCODER)["cores"]) == 3
    new_events = lab.events(TRANSCODER)[t_events:]
    assert not [e for e in new_events if e[1] in ("create", "destroy")], f"201 was replaced: {new_events}"
    assert len(lab.events(RIPPER)) == r_events, "the ripper was touched"
    execs = [c for c in lab.pct_calls()[before["pct"]:] if c.args[:1] == ["exec"]]
    assert not execs, f"a cores change re-ran container steps: {execs}"
    deployer.check_no_changes()

    deployer.reset_config()
    deployer.up()
    assert int(lab.ct_config(TRANSCODER)["cores"]) == 2
    deployer.check_no_changes()


def test_jellyfin_cores_change_updates_in_place_keeping_devN_and_ro(lab, deployer, config_restored):
    """The unprivileged container with PVE's devN and ro=1 mounts: bpg's provider sends and reads
    them back as PVE stores them, so a cores change is an update in place and then no change."""
    events = len(lab.events(JELLYFIN))
    dev0, mps = lab.ct_config(JELLYFIN)["dev0"], (lab.ct_config(JELLYFIN)["mp0"], lab.ct_config(JELLYFIN)["mp1"])
    deployer.set_config("jellyfin.cores", "2")
    deployer.up()
    cfg = lab.ct_config(JELLYFIN)
    assert int(cfg["cores"]) == 2 and cfg["dev0"] == dev0 and (cfg["mp0"], cfg["mp1"]) == mps
    assert not [e for e in lab.events(JELLYFIN)[events:] if e[1] in ("create", "destroy")]
    deployer.check_no_changes()
    deployer.reset_config()
    deployer.up()
    assert int(lab.ct_config(JELLYFIN)["cores"]) == 1
    deployer.check_no_changes()


def test_a_pool_path_change_never_deletes_a_container_without_the_opt_in(lab, deployer, config_restored):
    """bpg's provider replaces a container for any mount point change, deleting the old one first
    (its disk: the job and rip databases). The recreate guard stops that up before any container
    is touched, naming storage.pool and transcoder.allowRecreate."""
    # a second pool, really mounted on the node, so that only the guard can stop the up
    lab.ssh("mkdir -p /mnt/pool && { mountpoint -q /mnt/pool || mount --bind /mnt/pool /mnt/pool; }")
    try:
        lab.ssh(f"pct exec {TRANSCODER} -- sh -c 'echo kept > /root/on-the-root-disk'")
        events, mp0 = lab.events(), {v: lab.ct_config(v)["mp0"] for v in (TRANSCODER, RIPPER)}
        deployer.set_config("storage.pool", "/mnt/pool")
        r = deployer.up(check=False)
        assert r.returncode != 0, r.text[-3000:]
        assert "storage.pool: CT 201 binds /mnt/storage" in r.text, r.text[-3000:]
        assert "homelab-media:transcoder.allowRecreate true" in r.text
        assert "homelab-media:ripper.allowRecreate true" in r.text
        new = lab.events()[len(events):]
        assert not [e for e in new if e[1].split(" ")[0] in ("create", "destroy", "stop")], new
        assert {v: lab.ct_config(v)["mp0"] for v in (TRANSCODER, RIPPER)} == mp0
        assert lab.ssh(f"pct exec {TRANSCODER} -- cat /root/on-the-root-disk").stdout.strip() == "kept"

        deployer.reset_config()
        deployer.up()
        deployer.check_no_changes()
    finally:
        lab.ssh("umount /mnt/pool; rmdir /mnt/pool/staging /mnt/pool/movies /mnt/pool/tv /mnt/pool", check=False)


def test_new_gpu_node_rewrites_raw_lines_and_restarts_only_the_transcoder(lab, deployer, config_restored):
    lab.add_device("dri/renderD129", "c", 226, 129, 104,
                   sysfs={"devices/pci0000:00/0000:04:00.0/drm/renderD129/dev": "226:129\n"})
    try:
        t_starts, r_starts = lab.starts(TRANSCODER), lab.starts(RIPPER)
        before = lab.counters()
        deployer.set_config("devices.rediscover", "2")
        deployer.up()
        t_raw = raw(lab.conf(TRANSCODER))
        assert "lxc.cgroup2.devices.allow: c 226:129 rwm" in t_raw
        assert "lxc.cgroup2.devices.allow: c 226:128 rwm" in t_raw
        assert lab.starts(TRANSCODER) == t_starts + 1, "the transcoder must restart exactly once"
        assert lab.starts(RIPPER) == r_starts, "the ripper must not restart"
        reboots = [c.args for c in lab.pct_calls()[before["pct"]:] if c.args[:1] == ["reboot"]]
        assert reboots == [["reboot", str(TRANSCODER)]]
        lab.ssh(f"pct exec {TRANSCODER} -- test -c /dev/dri/renderD129")
        deployer.check_no_changes()
    finally:
        lab.remove_device("dri/renderD129")


WORKERS = [
    {"name": "worker-2", "vmId": 211, "cores": 1, "memory": 512, "swap": 256, "diskGb": 4,
     "datastore": "local-lvm", "ipv4": "10.99.0.211/24", "gpu": "auto"},
    {"name": "worker-3", "vmId": 212, "node": "pve2", "cores": 1, "memory": 512, "swap": 256, "diskGb": 4,
     "datastore": "local-lvm", "ipv4": "10.99.0.212/24", "gpu": "none", "crf": 28},
]
NODES = [{"name": "pve2", "ssh": {"host": "127.0.0.1", "port": 12223}}]
QUEUE = {"vmId": 205, "ipv4": "10.99.0.205/24", "diskGb": 4, "datastore": "local-lvm", "leaseSeconds": 15}


def test_two_extra_workers_and_the_queue_come_and_go(lab, deployer, config_restored, pool_sentinels):
    """homelab-media:workers and :queue added to a running stack (issue 16, docs/adr/0017): the queue's
    container and two workers are created, worker 1 moves onto the queue, everything proves it
    reaches PostgreSQL, and `preview --expect-no-changes` holds; then the keys are removed: the
    engine deletes the three containers, worker 1 is back on its own store, the media and the
    queue's dumps stay. worker-3 is on the lab's second node (homelab-media:nodes: pve2, its own sshd)."""
    before = {v: len(lab.events(v)) for v in (TRANSCODER, RIPPER, JELLYFIN, MONITORING)}
    deployer.set_section("queue", QUEUE)
    deployer.set_section("workers", WORKERS)
    deployer.set_section("nodes", NODES)
    deployer.up()
    out = deployer.outputs()
    q = out["queue"]
    assert q["reachable"] is True and q["workersReaching"] == 3 and q["version"].startswith("15."), q
    assert sorted(w["name"] for w in out["workers"]) == ["transcoder", "worker-2", "worker-3"]
    assert all(w["queue"]["state"] == "healthy" for w in out["workers"]), out["workers"]
    assert lab.ct_config(205)["unprivileged"] in (1, "1")
    mp = pve_options(lab.ct_config(205)["mp0"], "volume")
    assert (mp["volume"], mp["mp"], mp.get("ro", "0")) == ("/mnt/storage/backups/queue", "/var/backups/media-queue", "0")
    for v in (211, 212):
        mp = pve_options(lab.ct_config(v)["mp0"], "volume")
        assert (mp["volume"], mp["mp"]) == ("/mnt/storage", "/mnt/storage")
    # worker-3 is pve2's: its node in the outputs and the API, its tree in pve2's, pve2's hook started it
    assert {w["name"]: w["node"] for w in out["workers"]} == {"transcoder": "pve1", "worker-2": "pve1",
                                                              "worker-3": "pve2"}
    assert lab.node_of(212) == "pve2" and (lab.node2_root / "var/lib/lxc/212/rootfs/etc").is_dir()
    assert [e for e in lab.events(212) if e[1].startswith("hook pre-start") and e[1].endswith("exit=0")]
    # no existing container was replaced (worker 1 changes by its steps only)
    for v, n in before.items():
        assert not [e for e in lab.events(v)[n:] if e[1] in ("create", "destroy")], (v, lab.events(v)[n:])
    dumps = sorted((lab.pool / "backups" / "queue").glob("media_pipeline-*.dump"))
    assert dumps
    deployer.check_no_changes()

    deployer.reset_config()
    deployer.up()
    present = set(lab.containers())
    assert not present & {205, 211, 212}, present
    assert {TRANSCODER, RIPPER} <= present
    assert all(p.exists() for p in dumps)  # the queue's dumps are kept
    status = lab.ssh(f"pct exec {TRANSCODER} -- grep -c jobs.sqlite3 /etc/media-pipeline/config.json").stdout.strip()
    assert status == "1"  # worker 1 is back on its own store
    deployer.check_no_changes()


def test_destroy_leaves_nothing_and_the_pool_intact(lab, deployer, pool_sentinels):
    deployer.destroy()
    assert lab.containers() == {}
    assert not list(lab.conf_dir.glob("*.conf"))
    wait_for(lambda: not any(lab.ct_dir.iterdir()), 120, what="the containers' trees to go")
    for rel, (data, uid, gid, mode) in pool_sentinels.items():
        path = lab.pool / rel
        assert path.read_bytes() == data, f"{rel} changed"
        if rel.startswith("keep/"):
            st = path.stat()
            assert (st.st_uid, st.st_gid, st.st_mode) == (uid, gid, mode), f"{rel}'s owner or mode changed"
    assert deployer.leftover() == []
    assert not os.path.ismount(lab.pool), "the node's mounts leaked onto this machine"
