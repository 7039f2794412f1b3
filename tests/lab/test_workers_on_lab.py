"""Many workers, one queue, in the lab (issue 16, docs/adr/0017): the lab stack plus
homelab-media:queue, homelab-media:nodes (the lab's second node, pve2) and two extra workers,
worker-3 on pve2, deployed by the program (the engine-less runner); Debian's PostgreSQL 15 as a
systemd service in the unprivileged queue container, three media-pipeline workers (the
transcoder and worker-2 on pve1, worker-3 on pve2) as systemd services in real LXC containers,
real ffmpeg on real files on the pool both nodes mount.

What the lab cannot show: real PVE nodes in a real cluster (pve2 is a second sshd, tree and set
of namespaces beside pve1, under the same fakepve; /etc/pve/nodes is a bind mount, not
pmxcfs/corosync), and a pool shared across machines (NFS/SMB, mergerfs on each node): here both
nodes bind the same directory of one machine, so a network filesystem's locking, caching and
latency are not exercised.
"""

from __future__ import annotations

import json
import os
import shlex
import time

import pytest
import yaml

from tests.e2e.lab import ROOT, wait_for
from tests.lab.test_program_on_lab import NS, digest, lab, program, sentinels  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

QUEUE_VMID = 205
WORKERS = [
    {"name": "worker-2", "vmId": 211, "hostname": "worker-2", "cores": 1, "memory": 512, "swap": 256, "diskGb": 4,
     "ipv4": "10.99.0.211/24", "datastore": "local-lvm", "gpu": "auto"},
    {"name": "worker-3", "vmId": 212, "hostname": "worker-3", "node": "pve2", "cores": 1, "memory": 512, "swap": 256,
     "diskGb": 4, "ipv4": "10.99.0.212/24", "datastore": "local-lvm", "gpu": "none", "crf": 28},
]
NODES = [{"name": "pve2", "ssh": {"host": "127.0.0.1", "port": 12223}}]
QUEUE = {"vmId": QUEUE_VMID, "ipv4": "10.99.0.205/24", "diskGb": 4, "datastore": "local-lvm", "leaseSeconds": 15}
ALL = {"transcoder": 201, "worker-2": 211, "worker-3": 212}


def workers_stack(tmp_path) -> str:
    doc = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())
    doc["config"][f"{NS}:queue"] = QUEUE
    doc["config"][f"{NS}:workers"] = WORKERS
    doc["config"][f"{NS}:nodes"] = NODES
    path = tmp_path / "Pulumi.lab.workers.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def stack_path(tmp_path_factory):
    return workers_stack(tmp_path_factory.mktemp("workers"))


@pytest.fixture(scope="module")
def up(lab, sentinels, stack_path):
    out, proc = program("up", "--config-file", stack_path, timeout=3000)
    return out


def ct(lab, vmid: int, command: str, timeout: float = 120, check: bool = True):
    """command in a container, through pct on the node that has it."""
    return lab.pct(vmid, f"exec {vmid} -- bash -c {shlex.quote(command)}", timeout=timeout, check=check)


def jobs(lab, via: int = 201) -> list[dict]:
    """The queue's jobs, as `media-pipeline status --json` reads them in a worker (the transcoder
    unless that one is down)."""
    return json.loads(ct(lab, via, "runuser -u media -- media-pipeline status --json").stdout)


def test_the_queue_and_every_worker_come_up_and_prove_it(lab, up):
    outs = up["outputs"]
    q = outs["queue"]
    assert q["reachable"] is True and q["workers"] == 3 and q["workersReaching"] == 3, q
    assert q["version"].startswith("15."), q
    assert q["address"] == "10.99.0.205:5432"
    assert sorted(q["allowed"]) == ["10.99.0.201", "10.99.0.211", "10.99.0.212"]
    names = {w["name"]: w for w in outs["workers"]}
    assert set(names) == set(ALL)
    for name, w in names.items():
        assert w["queue"]["reachable"] is True and w["queue"]["state"] == "healthy", (name, w)
        assert w["vmId"] == ALL[name] and w["node"] == ("pve2" if name == "worker-3" else "pve1")
    assert names["worker-3"]["gpu"]["reason"].startswith("gpu none")
    assert "render_node" in names["worker-2"]["gpu"]  # verify-gpu.sh ran in it
    # PostgreSQL is Debian's, a systemd unit of the unprivileged container
    assert ct(lab, QUEUE_VMID, "systemctl is-active postgresql@15-main").stdout.strip() == "active"
    assert ct(lab, QUEUE_VMID, "cat /proc/self/uid_map").stdout.split() == ["0", "100000", "65536"]
    for vmid in ALL.values():
        assert ct(lab, vmid, "systemctl is-active media-pipeline").stdout.strip() == "active"


def test_pg_hba_admits_the_workers_only_and_the_password_is_nowhere_in_clear(lab, up):
    hba = ct(lab, QUEUE_VMID, "cat /etc/postgresql/15/main/pg_hba.conf").stdout
    ours = [line.split() for line in hba.splitlines() if line.startswith("host media_pipeline")]
    assert sorted(x[3] for x in ours) == ["10.99.0.201/32", "10.99.0.211/32", "10.99.0.212/32"]
    # the ripper is not a worker: PostgreSQL refuses it by pg_hba (a startup packet from its address)
    probe = ("import socket,struct\n"
             "s=socket.create_connection(('10.99.0.205',5432),5)\n"
             "p=b'user\\0media_pipeline\\0database\\0media_pipeline\\0\\0'\n"
             "s.sendall(struct.pack('!II',8+len(p),196608)+p)\n"
             "print(s.recv(4096).decode('latin1'))\n")
    answer = ct(lab, 202, f"python3 -c {shlex.quote(probe)}").stdout
    assert "no pg_hba.conf entry" in answer and "10.99.0.202" in answer, answer
    # each worker's password file: 0600 media; never in a unit, a config or an argv
    for vmid in ALL.values():
        assert ct(lab, vmid, "stat -c '%a %U' /etc/media-pipeline/db-password").stdout.strip() == "600 media"
        pw = ct(lab, vmid, "cat /etc/media-pipeline/db-password").stdout.strip()
        assert len(pw) == 32
        # the pattern comes from the file (-f), so grep's own argv does not hold it
        leaked = ct(lab, vmid, "grep -rlF -f /etc/media-pipeline/db-password /etc/media-pipeline/config.json "
                               "/etc/systemd/system /proc/[0-9]*/cmdline 2>/dev/null || true").stdout.split()
        assert leaked == [], leaked
    state = (ROOT / ".lab" / "run-program-state.json").read_text()
    assert '"queue-password"' in state  # the runner keeps it like the engine keeps a secret output


def wait_encoding(lab, rip: str) -> dict:
    """The job of rip once a worker is encoding it (progress above 0)."""
    def running():
        js = [j for j in jobs(lab) if j["source"] == rip and j["state"] == "running" and j.get("progress", 0) > 0]
        return js[0] if js else None
    return wait_for(running, 300, every=2, what=f"a worker encoding {rip}")


def wait_done(lab, rip: str, via: int = 201, *, timeout: float = 900, what: str = "") -> dict:
    """The job of rip once it is done (read through the worker via)."""
    def done():
        js = [j for j in jobs(lab, via) if j["source"] == rip]
        return js[0] if js and js[0]["state"] == "done" else None
    return wait_for(done, timeout, every=3, what=what or f"{rip} done")


def test_twelve_rips_each_become_one_library_file_across_the_workers(lab, up):
    batch = f"Queue Batch {os.getpid()}"
    make = " && ".join(
        f"ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=d=2:s=160x90:r=24 -f lavfi -i sine=d=2 "
        f"-map 0:v -map 1:a -c:v libx264 -preset ultrafast -c:a aac -metadata:s:a:0 language=eng "
        f"'/tmp/{batch} {i:02d} (2024).mkv'" for i in range(12))
    ct(lab, 201, f"cd /tmp && {make} && chown media: /tmp/'{batch}'* && for f in /tmp/'{batch}'*.mkv; do "
                 "mv \"$f\" /mnt/storage/staging/ && touch \"/mnt/storage/staging/$(basename \"$f\").done\"; done",
       timeout=300)

    def ours():
        return [j for j in jobs(lab) if batch in j["source"]]
    wait_for(lambda: len(ours()) == 12 and all(j["state"] == "done" for j in ours()), 900,
             every=3, what="12 rips transcoded by the three workers")
    done = ours()
    assert all(j["attempts"] == 1 for j in done), [(j["id"], j["attempts"]) for j in done]  # none ran twice
    by = {j["worker"] for j in done}
    assert len(by) >= 2 and by <= set(ALL), by
    files = [p for p in (lab.pool / "movies").rglob("*.mkv") if batch in p.name]
    assert len(files) == 12, files
    assert len({p.name for p in files}) == 12
    assert not [p for p in (lab.pool / "movies").rglob("*partial*") if batch in p.name]
    workers = json.loads(ct(lab, 201, "runuser -u media -- media-pipeline workers --json").stdout)
    assert {w["name"] for w in workers if w["state"] == "healthy"} == set(ALL)


def test_a_stopped_worker_loses_its_job_to_another_after_the_lease(lab, up):
    title = f"Long Queue {os.getpid()} (2024)"
    rip = f"/mnt/storage/staging/{title}.mkv"
    ct(lab, 201, f"ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=d=40:s=320x180:r=24 -f lavfi "
                 f"-i sine=d=40 -map 0:v -map 1:a -c:v libx264 -preset ultrafast -c:a aac "
                 f"-metadata:s:a:0 language=eng '/tmp/{title}.mkv' && chown media: '/tmp/{title}.mkv' && "
                 f"mv '/tmp/{title}.mkv' '{rip}' && touch '{rip}.done'", timeout=180)

    job = wait_encoding(lab, rip)
    victim = job["worker"]
    stopped_at = time.monotonic()
    lab.pct(ALL[victim], f"stop {ALL[victim]}", timeout=120)  # the container dies mid-encode: no goodbye
    via = ALL["worker-2"] if victim == "transcoder" else ALL["transcoder"]  # a worker still up
    try:
        finished = wait_done(lab, rip, via, timeout=900, what=f"{rip} finished by another worker")
        assert finished["worker"] != victim, (victim, finished)
        files = [p for p in (lab.pool / "movies").rglob("*.mkv") if title in p.name]
        assert len(files) == 1, files
        assert not [p for p in (lab.pool / "movies").rglob("*partial*") if title in p.name]
        assert time.monotonic() - stopped_at > QUEUE["leaseSeconds"]  # taken back only after the lease
    finally:
        lab.pct(ALL[victim], f"start {ALL[victim]}", timeout=300)


def make_rips(lab, names: list[str], seconds: int, size: str = "320x180") -> list[str]:
    """Finished rips in staging (made in the transcoder by real ffmpeg, marked done), by name."""
    made = []
    for name in names:
        rip = f"/mnt/storage/staging/{name}.mkv"
        ct(lab, 201, f"ffmpeg -hide_banner -loglevel error -y -f lavfi -i testsrc=d={seconds}:s={size}:r=24 -f lavfi "
                     f"-i sine=d={seconds} -map 0:v -map 1:a -c:v libx264 -preset ultrafast -c:a aac "
                     f"-metadata:s:a:0 language=eng '/tmp/{name}.mkv' && chown media: '/tmp/{name}.mkv' && "
                     f"mv '/tmp/{name}.mkv' '{rip}' && touch '{rip}.done'", timeout=180)
        made.append(rip)
    return made


def test_a_worker_killed_mid_encode_loses_its_job_to_another_after_the_lease(lab, up):
    """kill -9 of every process of a worker's service (media-pipeline and its ffmpeg) mid-encode, the
    unit then kept down: the job runs again on another worker once the lease has run out, the dead
    worker's partial output is removed, and one library file comes out."""
    title = f"Killed {os.getpid()} (2024)"
    (rip,) = make_rips(lab, [title], 40)

    victim = wait_encoding(lab, rip)["worker"]
    vmid = ALL[victim]
    partials = [p for p in (lab.pool / "movies").rglob("*partial*") if title in p.name]
    # no restart in between (systemd would restart it after 10 s): the kill, then the unit stopped
    ct(lab, vmid, "systemctl kill -s SIGKILL media-pipeline.service; systemctl stop media-pipeline.service")
    killed_at = time.monotonic()
    via = ALL["worker-2"] if victim == "transcoder" else ALL["transcoder"]
    try:
        finished = wait_done(lab, rip, via, timeout=900, what=f"{rip} finished by another worker")
        took = time.monotonic() - killed_at
        print(f"{victim} killed mid-encode -> done by {finished['worker']} {took:.1f} s later "
              f"(lease {QUEUE['leaseSeconds']} s)")
        assert finished["worker"] != victim, (victim, finished)
        assert took > QUEUE["leaseSeconds"]  # taken back only after the lease
    finally:
        ct(lab, vmid, "systemctl start media-pipeline.service")
    files = [p for p in (lab.pool / "movies").rglob("*.mkv") if title in p.name]
    assert len(files) == 1, files
    assert not [p for p in (lab.pool / "movies").rglob("*partial*") if title in p.name], partials
    wait_for(lambda: victim in healthy_workers(lab), 120, every=2, what=f"{victim} back")


def test_a_frozen_worker_is_fenced_and_discards_its_output(lab, up):
    """SIGSTOP past the lease, then SIGCONT: another worker finishes the job, the frozen one finds
    it no longer owns it and discards its output; one library file."""
    title = f"Frozen {os.getpid()} (2024)"
    (rip,) = make_rips(lab, [title], 40)

    victim = wait_encoding(lab, rip)["worker"]
    vmid = ALL[victim]
    since = ct(lab, vmid, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    ct(lab, vmid, "systemctl kill -s SIGSTOP media-pipeline.service")
    try:
        def taken():
            js = [j for j in jobs(lab) if j["source"] == rip]
            return js and js[0]["worker"] != victim
        wait_for(taken, QUEUE["leaseSeconds"] + 60, every=2, what="another worker taking the frozen worker's job")
    finally:
        ct(lab, vmid, "systemctl kill -s SIGCONT media-pipeline.service")

    finished = wait_done(lab, rip, timeout=900, what=f"{rip} done")
    assert finished["worker"] != victim
    wait_for(lambda: "its output is discarded" in ct(lab, vmid, f"journalctl -u media-pipeline --since '{since}' "
                                                                 "--no-pager -o cat").stdout,
             120, every=2, what=f"{victim} saying it discarded its output")
    files = [p for p in (lab.pool / "movies").rglob("*.mkv") if title in p.name]
    assert len(files) == 1, files
    assert not [p for p in (lab.pool / "movies").rglob("*partial*") if title in p.name]


def test_postgresql_stopped_for_30_s_mid_run_fails_nothing(lab, up):
    names = [f"Outage {os.getpid()} {i} (2024)" for i in range(4)]
    rips = make_rips(lab, names, 12)
    wait_for(lambda: any(j["state"] == "running" for j in jobs(lab) if j["source"] in rips), 300, every=2,
             what="an encode of the outage batch running")
    ct(lab, QUEUE_VMID, "systemctl stop postgresql@15-main")
    try:
        time.sleep(30)
    finally:
        ct(lab, QUEUE_VMID, "systemctl start postgresql@15-main")

    def all_done():
        js = [j for j in jobs(lab) if j["source"] in rips]
        return len(js) == 4 and all(j["state"] == "done" for j in js) and js
    finished = wait_for(all_done, 900, every=3, what="the outage batch done after PostgreSQL came back")
    assert not [j for j in finished if j["state"] == "failed"]
    for name in names:
        files = [p for p in (lab.pool / "movies").rglob("*.mkv") if name in p.name]
        assert len(files) == 1, (name, files)
    # each worker said so once, not once a second
    for vmid in ALL.values():
        log = ct(lab, vmid, "journalctl -u media-pipeline --no-pager -o cat --since '-10 min'").stdout
        lost = [line for line in log.splitlines() if "job queue" in line and "unreachable" in line]
        assert len(lost) <= 2, lost


def test_worker_3_runs_on_the_second_node_and_shares_the_pool(lab, up):
    """worker-3 is a container of pve2: made by pve2's LXC in pve2's tree, its config where pmxcfs keeps
    pve2's (seen from pve1 too), started through pve2's hookscript; it reaches the queue on pve1 over
    the shared bridge and sees the pool as pve1's containers do."""
    assert lab.node2 == "pve2"
    assert lab.node_of(212) == "pve2" and lab.node_of(211) == "pve1" and lab.node_of(QUEUE_VMID) == "pve1"
    assert (lab.node2_root / "var/lib/lxc/212/rootfs/etc/debian_version").exists()
    assert not (lab.node_root / "var/lib/lxc/212").exists()
    # pmxcfs: pve2's configs under /etc/pve/nodes/pve2, on both nodes
    for node in ("pve1", "pve2"):
        conf = lab.ssh("cat /etc/pve/nodes/pve2/lxc/212.conf", node=node).stdout
        assert "hostname: worker-3" in conf and "hookscript:" in conf, (node, conf)
    assert lab.ssh("test -e /etc/pve/lxc/212.conf && echo here || echo elsewhere").stdout.strip() == "elsewhere"
    # pve2 ran its own MediaHost steps (pool check, media user, hookscript) and the worker's hook
    hooks = [what for _, what in lab.events(212) if what.startswith("hook pre-start")]
    assert hooks and all(h.endswith("exit=0") for h in hooks), hooks
    assert (lab.node2_root / "var/lib/vz/snippets").is_dir()
    assert any(p.name.startswith("homelab-media") for p in (lab.node2_root / "var/lib/vz/snippets").iterdir())
    # one pool: a file a pve1 container writes is the file worker-3 reads
    marker = f"pool-check-{os.getpid()}"
    ct(lab, 201, f"runuser -u media -- sh -c 'echo {marker} > /mnt/storage/staging/.{marker}'")
    try:
        assert ct(lab, 212, f"cat /mnt/storage/staging/.{marker}").stdout.strip() == marker
    finally:
        ct(lab, 201, f"rm -f /mnt/storage/staging/.{marker}")
    # and the queue across the nodes' link: worker-3's session comes from its own address
    who = ct(lab, QUEUE_VMID, "runuser -u postgres -- psql -d media_pipeline -Atc "
                               "\"SELECT DISTINCT host(client_addr) FROM pg_stat_activity WHERE usename = 'media_pipeline'\"")
    assert "10.99.0.212" in who.stdout.split(), who.stdout


def healthy_workers(lab) -> set[str]:
    """The workers `media-pipeline workers` calls healthy (read from the queue, in the transcoder)."""
    got = json.loads(ct(lab, 201, "runuser -u media -- media-pipeline workers --json").stdout)
    return {w["name"] for w in got if w["state"] == "healthy"}


def scanner_address(lab) -> str | None:
    """The address of the worker holding the scanner's advisory lock (pgstore LOCK_APP 0x6D70, LOCK_SCANNER 1)."""
    got = ct(lab, QUEUE_VMID, "runuser -u postgres -- psql -d media_pipeline -Atc \"SELECT host(a.client_addr) "
                               "FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' "
                               "AND l.classid = 28016 AND l.objid = 1 AND l.objsubid = 2 AND l.granted\"").stdout.split()
    return got[0] if got else None


def test_when_the_scanning_worker_is_killed_another_scans_within_a_poll(lab, up):
    """kill -9 of the elected scanner (kept down): another worker takes the advisory lock within a poll
    and enqueues what lands in staging next; then the killed one comes back as a plain worker."""
    by_address = {f"10.99.0.{vmid}": name for name, vmid in ALL.items()}
    first = wait_for(lambda: scanner_address(lab), 60, every=1, what="an elected scanner")
    victim = by_address[first]
    poll = json.loads(ct(lab, ALL[victim], "cat /etc/media-pipeline/config.json").stdout).get("poll_seconds", 10)
    # no restart in between: the kill, then the unit stopped (systemd would restart it after 10 s)
    ct(lab, ALL[victim], "systemctl kill -s SIGKILL media-pipeline.service; systemctl stop media-pipeline.service")
    killed_at = time.monotonic()
    try:
        second = wait_for(lambda: (lambda a: a if a not in (None, first) else None)(scanner_address(lab)),
                          float(poll) + 30, every=0.5, what="another worker taking the scanning over")
        took = time.monotonic() - killed_at
        print(f"scanner {victim} killed -> {by_address[second]} scanning after {took:.1f} s (poll {poll} s)")
        assert took <= float(poll) + 5, took
        title = f"After The Scanner {os.getpid()} (2024)"
        (rip,) = make_rips(lab, [title], 2, "160x90")

        finished = wait_done(lab, rip, timeout=600, what=f"{rip} enqueued by the new scanner and done")
        assert finished["worker"] != victim
    finally:
        ct(lab, ALL[victim], "systemctl start media-pipeline.service")
    wait_for(lambda: victim in healthy_workers(lab), 120, every=2, what=f"{victim} back")
    assert scanner_address(lab) == second  # it came back as a plain worker


def test_migrate_a_sqlite_store_of_1000_jobs_into_the_queue(lab, up):
    """`media-pipeline migrate` in the transcoder, from a SQLite store of 1,000 jobs into Debian's
    PostgreSQL in the queue container (a scratch schema of the queue's database, so that the workers
    do not take its jobs): every job is there, and a second run copies nothing."""
    from tests.queue.test_workers_real import _sqlite_with_jobs

    src = lab.node_root / "var/lib/lxc/201/rootfs/tmp/migrate-1000.sqlite3"
    src.unlink(missing_ok=True)
    _sqlite_with_jobs(src, 1000)
    os.chmod(src, 0o644)
    schema = "migrate_check"
    psql = "runuser -u postgres -- psql -d media_pipeline -v ON_ERROR_STOP=1 -Atc"
    ct(lab, QUEUE_VMID, f"{psql} 'DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema} AUTHORIZATION media_pipeline'")
    url = f"postgresql://media_pipeline@10.99.0.205:5432/media_pipeline?options=-csearch_path%3D{schema}"
    try:
        first = ct(lab, 201, f"runuser -u media -- media-pipeline migrate --from /tmp/migrate-1000.sqlite3 --to '{url}'",
                   timeout=300)
        assert "1000 job(s) copied" in first.stdout, first.stdout
        counts = dict(line.split("|") for line in ct(lab, QUEUE_VMID, f"{psql} 'SELECT state, count(*) FROM "
                                                                      f"{schema}.jobs GROUP BY state'").stdout.split())
        # the 250 running ones are queued again (nobody runs them now)
        assert counts == {"queued": "500", "failed": "250", "done": "250"}, counts
        ids = ct(lab, QUEUE_VMID, f"{psql} 'SELECT min(id), max(id), count(DISTINCT source) FROM {schema}.jobs'").stdout
        assert ids.strip() == "1|1000|1000", ids
        again = ct(lab, 201, f"runuser -u media -- media-pipeline migrate --from /tmp/migrate-1000.sqlite3 --to '{url}'",
                   timeout=300)
        assert "0 job(s) copied" in again.stdout and "1000 already there" in again.stdout, again.stdout
        # the live queue did not get them
        assert not [j for j in jobs(lab) if "/pool/staging/Film " in j["source"]]
    finally:
        ct(lab, QUEUE_VMID, f"{psql} 'DROP SCHEMA IF EXISTS {schema} CASCADE'")
        src.unlink(missing_ok=True)


def test_a_cut_link_to_the_second_node_ends_its_session_and_it_comes_back(lab, up):
    """The link between the nodes cut (pve2's end of the veth down): worker-3 cannot close its
    session, so PostgreSQL's TCP keepalives end it (and free its advisory locks) in about 25 s,
    not the kernel's 2 hours; with the link back, worker-3 reconnects by itself."""
    # as the server applied them from the file (a session over the Unix socket reads 0 for these)
    show = ct(lab, QUEUE_VMID, "runuser -u postgres -- psql -Atc \"SELECT name || '=' || setting FROM pg_file_settings "
                               "WHERE name LIKE 'tcp%' AND applied ORDER BY name\"")
    assert show.stdout.split() == ["tcp_keepalives_count=3", "tcp_keepalives_idle=10", "tcp_keepalives_interval=5",
                                   "tcp_user_timeout=30000"], show.stdout

    def sessions_of_worker_3():
        return int(ct(lab, QUEUE_VMID, "runuser -u postgres -- psql -d media_pipeline -Atc \"SELECT count(*) FROM "
                                       "pg_stat_activity WHERE client_addr = '10.99.0.212'\"").stdout.strip())
    assert sessions_of_worker_3() >= 1
    lab.ssh("ip link set lab-to-pve1 down", node="pve2")
    cut_at = time.monotonic()
    try:
        wait_for(lambda: sessions_of_worker_3() == 0, 90, every=1, what="PostgreSQL ending worker-3's session")
        gone = time.monotonic() - cut_at
        print(f"link cut -> worker-3's session ended by the server after {gone:.1f} s")
        assert gone <= 60, gone
    finally:
        lab.ssh("ip link set lab-to-pve1 up", node="pve2")
    wait_for(lambda: sessions_of_worker_3() >= 1 and "worker-3" in healthy_workers(lab), 180, every=2,
             what="worker-3 back on the queue after the link came back")


def test_pg_dump_writes_into_the_backup_folder_on_the_pool(lab, up):
    folder = lab.pool / "backups" / "queue"
    dumps = sorted(folder.glob("media_pipeline-*.dump"))
    assert dumps and dumps[-1].stat().st_size > 0, list(folder.iterdir())
    assert (folder.stat().st_uid, folder.stat().st_gid) == (100000, 100000)  # the container's root, this folder only
    ct(lab, QUEUE_VMID, "systemctl start media-queue-backup.service", timeout=120)
    assert len(sorted(folder.glob("media_pipeline-*.dump"))) >= len(dumps)
    assert ct(lab, QUEUE_VMID, "systemctl is-enabled media-queue-backup.timer").stdout.strip() == "enabled"
    assert (lab.pool / "movies").stat().st_uid == 1000  # the pool's media folders are untouched


def test_a_second_up_changes_nothing(lab, up, stack_path):
    out, _ = program("up", "--config-file", stack_path, timeout=1800)
    assert out["commands_ran"] == [], out["commands_ran"]


def test_destroy_keeps_media_and_the_queue_backups(lab, up, sentinels):
    folder = lab.pool / "backups" / "queue"
    before = {p: digest(p) for p in folder.glob("*.dump")}
    program("destroy")
    assert lab.containers() == {}
    for p, sha in before.items():
        assert digest(p) == sha
    for p, (sha, uid, gid, mode) in sentinels.items():
        assert digest(p) == sha and (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) == (uid, gid, mode)
