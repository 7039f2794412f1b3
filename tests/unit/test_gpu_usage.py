"""GPU engine utilization from DRM fdinfo (media_pipeline/gpu_usage.py), on a fake /proc tree.

The fdinfo samples are the kernel documentation's examples:
- I915_EXAMPLE: Documentation/gpu/i915.rst, "i915 DRM client usage stats implementation" (the
  driver page that Documentation/gpu/drm-usage-stats.rst links as :ref:`i915-usage-stats`);
  memory lines added in the generic form of drm-usage-stats.rst's "Memory" section.
- XE_EXAMPLE: Documentation/gpu/xe/xe-drm-usage-stats.rst, i.e. the "DRM Client usage stats"
  DOC block of drivers/gpu/drm/xe/xe_drm_client.c that it includes, verbatim.
Later samples change only the counters of those texts.
"""

from __future__ import annotations

import os
import re

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from media_pipeline import gpu_usage
from media_pipeline.gpu_usage import GpuSampler, parse_fdinfo
from media_pipeline.metrics import PipelineCollector, Snapshot, new_registry

I915_EXAMPLE = """\
pos:    0
flags:  0100002
mnt_id: 21
drm-driver: i915
drm-pdev:   0000:00:02.0
drm-client-id:      7
drm-engine-render:  9288864723 ns
drm-engine-copy:    2035071108 ns
drm-engine-video:   0 ns
drm-engine-capacity-video:   2
drm-engine-video-enhance:   0 ns
"""
I915_MEMORY = """\
drm-total-system0:\t4 MiB
drm-resident-system0:\t3 MiB
drm-total-local0:\t20480 KiB
drm-resident-local0:\t10240 KiB
"""
XE_EXAMPLE = """\
pos:    0
flags:  0100002
mnt_id: 26
ino:    685
drm-driver:     xe
drm-client-id:  3
drm-pdev:       0000:03:00.0
drm-total-system:       0
drm-shared-system:      0
drm-active-system:      0
drm-resident-system:    0
drm-purgeable-system:   0
drm-total-gtt:  192 KiB
drm-shared-gtt: 0
drm-active-gtt: 0
drm-resident-gtt:       192 KiB
drm-total-vram0:        23992 KiB
drm-shared-vram0:       16 MiB
drm-active-vram0:       0
drm-resident-vram0:     23992 KiB
drm-total-stolen:       0
drm-shared-stolen:      0
drm-active-stolen:      0
drm-resident-stolen:    0
drm-cycles-rcs: 28257900
drm-total-cycles-rcs:   7655183225
drm-cycles-bcs: 0
drm-total-cycles-bcs:   7655183225
drm-cycles-vcs: 0
drm-total-cycles-vcs:   7655183225
drm-engine-capacity-vcs:        2
drm-cycles-vecs:        0
drm-total-cycles-vecs:  7655183225
drm-engine-capacity-vecs:       2
drm-cycles-ccs: 0
drm-total-cycles-ccs:   7655183225
drm-engine-capacity-ccs:        4
"""
XE_RESIDENT = (192 + 23992) * 1024  # gtt + vram0; system and stolen are 0
# what else an ffmpeg has open: its input and output, pipes to the service, /dev/null, an eventfd
PLAIN = {
    "0": "pos:\t0\nflags:\t0100000\nmnt_id:\t24\nino:\t5\n",
    "1": "pos:\t0\nflags:\t01\nmnt_id:\t14\nino:\t88123\n",
    "2": "pos:\t0\nflags:\t01\nmnt_id:\t14\nino:\t88124\n",
    "3": "pos:\t1048576\nflags:\t0100000\nmnt_id:\t31\nino:\t1837\n",
    "4": "pos:\t0\nflags:\t0102001\nmnt_id:\t31\nino:\t1840\n",
    "5": "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\neventfd-count:                0\neventfd-id: 3\n",
}


def i915(video_ns=0, render_ns=9288864723, client="7", memory=True) -> str:
    text = (I915_EXAMPLE.replace("drm-client-id:      7", f"drm-client-id:      {client}")
            .replace("drm-engine-video:   0 ns", f"drm-engine-video:   {video_ns} ns")
            .replace("drm-engine-render:  9288864723 ns", f"drm-engine-render:  {render_ns} ns"))
    return text + (I915_MEMORY if memory else "")


def xe(vcs=0, rcs=28257900, total=7655183225, client="3") -> str:
    text = XE_EXAMPLE.replace("drm-client-id:  3", f"drm-client-id:  {client}")
    text = text.replace("drm-cycles-vcs: 0", f"drm-cycles-vcs: {vcs}").replace(
        "drm-cycles-rcs: 28257900", f"drm-cycles-rcs: {rcs}")
    return text.replace("7655183225", str(total))


class FakeProc:
    """/proc/<pid>/fdinfo/<fd> files under tmp_path, and a clock the test moves (monotonic ns)."""

    def __init__(self, root):
        self.root, self.now = root, 0
        self.dev = root / "dev-dri"
        self.dev.mkdir()

    def clock(self) -> int:
        return self.now

    def process(self, pid: int, drm: dict[str, str], plain: bool = True) -> None:
        d = self.root / "proc" / str(pid) / "fdinfo"
        d.mkdir(parents=True, exist_ok=True)
        for fd, text in ({**PLAIN, **drm} if plain else drm).items():
            (d / fd).write_text(text)

    def exit(self, pid: int) -> None:
        import shutil

        shutil.rmtree(self.root / "proc" / str(pid))

    def sampler(self, encoder="hevc_qsv", **kw) -> GpuSampler:
        return GpuSampler(encoder=encoder, proc_root=str(self.root / "proc"), dev_dir=str(self.dev),
                          min_interval=kw.pop("min_interval", 0), clock=self.clock, **kw)


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path)


# --- the parser ---------------------------------------------------------------------------

def test_parse_i915_documentation_example():
    rec = parse_fdinfo(I915_EXAMPLE + I915_MEMORY)
    assert (rec.driver, rec.pdev, rec.client_id) == ("i915", "0000:00:02.0", "7")
    assert rec.busy_ns == {"render": 9288864723, "copy": 2035071108, "video": 0, "video-enhance": 0}
    assert rec.capacity == {"video": 2}  # not an engine called "capacity-video"
    assert rec.cycles == {} and rec.total_cycles == {}
    assert rec.resident == {"system0": 3 << 20, "local0": 10240 << 10}
    assert rec.total == {"system0": 4 << 20, "local0": 20480 << 10}
    assert rec.engines() == {"render", "copy", "video", "video-enhance"}


def test_parse_xe_documentation_example():
    rec = parse_fdinfo(XE_EXAMPLE)
    assert (rec.driver, rec.pdev, rec.client_id) == ("xe", "0000:03:00.0", "3")
    assert rec.cycles == {"render": 28257900, "copy": 0, "video": 0, "video-enhance": 0, "compute": 0}
    assert set(rec.total_cycles.values()) == {7655183225} and set(rec.total_cycles) == set(rec.cycles)
    assert rec.capacity == {"video": 2, "video-enhance": 2, "compute": 4}
    assert rec.busy_ns == {}  # xe prints cycles, not ns
    assert rec.resident == {"system": 0, "gtt": 192 * 1024, "vram0": 23992 * 1024, "stolen": 0}
    assert rec.resident_bytes() == XE_RESIDENT
    assert rec.total["vram0"] == 23992 * 1024 and "cycles-rcs" not in rec.total  # drm-total-cycles- is not memory


def test_files_without_drm_keys_are_not_clients():
    for text in PLAIN.values():
        assert parse_fdinfo(text) is None
    assert parse_fdinfo("") is None
    assert parse_fdinfo("drm-client-id: 3\ndrm-engine-video: 5 ns\n") is None  # drm-driver is mandatory


def test_parse_units_and_malformed_values():
    rec = parse_fdinfo("drm-driver: i915\ndrm-resident-system0: 7\ndrm-resident-local0: 2 KiB\n"
                       "drm-engine-render: lots ns\ndrm-engine-video: 12\ndrm-engine-copy: 5 ns\n"
                       "drm-engine-capacity-copy: 0\ndrm-memory-vram: 9 MiB\n")
    assert rec.resident == {"system0": 7, "local0": 2048}  # drm-memory is read only without drm-resident
    assert rec.busy_ns == {"copy": 5}  # "lots" is no number, and drm-engine- values carry "ns"
    assert rec.capacity == {}  # "Zero capacity is not allowed"
    assert parse_fdinfo("drm-driver: amdgpu\ndrm-memory-vram: 9 MiB\n").resident == {"vram": 9 << 20}


# --- two samples -------------------------------------------------------------------------

def test_i915_busy_ratio_is_delta_ns_over_wall_time_and_capacity(proc):
    proc.process(100, {"7": i915(video_ns=0, render_ns=1_000_000_000)})
    s = proc.sampler()
    first = s.sample([100])
    assert first.engines == {} and "first sample" in first.reason
    assert first.memory_bytes == (3 << 20) + (10240 << 10) and first.clients == 1
    proc.now += 2_000_000_000  # 2 s later
    proc.process(100, {"7": i915(video_ns=3_000_000_000, render_ns=1_500_000_000)})
    usage = s.sample([100])
    # video: 3 s busy over 2 s of wall time on 2 engines = 0.75; render: 0.5 s / 2 s = 0.25
    assert usage.engines == {"video": 0.75, "video-enhance": 0.0, "render": 0.25, "copy": 0.0}
    assert usage.reason == "" and usage.drivers == ["i915 0000:00:02.0"] and usage.pids == [100]


def test_xe_busy_ratio_is_delta_cycles_over_delta_total_cycles(proc):
    proc.process(200, {"9": xe(vcs=0, rcs=0, total=1_000_000)})
    s = proc.sampler()
    s.sample([200])
    proc.now += 10_000_000_000  # the wall clock is not used for xe: the GPU's timestamp is
    proc.process(200, {"9": xe(vcs=1_000, rcs=2_000, total=1_004_000)})
    usage = s.sample([200])
    # vcs: 1000 / 4000 / capacity 2 = 0.125; rcs: 2000 / 4000 = 0.5
    assert usage.engines["video"] == pytest.approx(0.125)
    assert usage.engines["render"] == pytest.approx(0.5)
    assert usage.engines["video-enhance"] == 0.0 and usage.engines["compute"] == 0.0
    assert usage.memory_bytes == XE_RESIDENT


def test_counter_that_goes_down_skips_that_interval_then_counts_from_the_new_value(proc):
    proc.process(100, {"7": i915(video_ns=8_000_000_000)})
    s = proc.sampler()
    s.sample([100])
    proc.now += 1_000_000_000
    proc.process(100, {"7": i915(video_ns=5_000, render_ns=9288864723 + 500_000_000)})  # video wrapped/reset
    usage = s.sample([100])
    assert "video" not in usage.engines  # neither negative nor made up
    assert usage.engines["render"] == pytest.approx(0.5)
    proc.now += 1_000_000_000
    proc.process(100, {"7": i915(video_ns=5_000 + 1_000_000_000, render_ns=9288864723 + 500_000_000)})
    usage = s.sample([100])
    assert usage.engines["video"] == pytest.approx(0.5)  # 1 s over 1 s on capacity 2, from the new baseline


def test_xe_timestamp_reset_skips_the_interval_and_says_so(proc):
    proc.process(200, {"9": xe(vcs=5_000, total=9_000_000)})
    s = proc.sampler()
    s.sample([200])
    proc.process(200, {"9": xe(vcs=6_000, total=1_000)})  # the GPU timestamp restarted
    usage = s.sample([200])
    assert usage.engines == {} and "went down" in usage.reason


def test_ratio_is_clamped_to_one(proc):
    # two clients of one encoder, each 80% busy on render: 1.6 summed, reported as 1
    proc.process(100, {"7": i915(render_ns=0), "8": i915(render_ns=0, client="8")})
    s = proc.sampler()
    s.sample([100])
    proc.now += 1_000_000_000
    proc.process(100, {"7": i915(render_ns=800_000_000), "8": i915(render_ns=800_000_000, client="8")})
    assert s.sample([100]).engines["render"] == 1.0
    proc.now += 1_000_000_000  # a driver that reports more busy time than wall time: still at most 1
    proc.process(100, {"7": i915(render_ns=5_000_000_000), "8": i915(render_ns=800_000_000, client="8")})
    assert s.sample([100]).engines["render"] == 1.0


def test_a_process_that_exits_between_reads_just_disappears(proc):
    proc.process(100, {"7": i915(video_ns=0)})
    proc.process(101, {"7": i915(video_ns=0, client="11")})
    s = proc.sampler()
    assert s.sample([100, 101]).clients == 2
    proc.now += 1_000_000_000
    proc.process(100, {"7": i915(video_ns=400_000_000)})
    proc.exit(101)
    usage = s.sample([100, 101])
    assert usage.clients == 1 and usage.engines["video"] == pytest.approx(0.2)
    proc.exit(100)
    gone = s.sample([100, 101])
    assert gone.engines == {} and gone.clients == 0 and gone.memory_bytes is None and gone.reason


def test_an_fd_closed_between_listdir_and_open_is_skipped(proc):
    proc.process(100, {"7": i915()})
    os.symlink(proc.root / "nowhere", proc.root / "proc" / "100" / "fdinfo" / "9")  # open() fails: ENOENT
    assert proc.sampler().sample([100]).clients == 1


def test_one_client_on_two_fds_and_two_processes_is_counted_once(proc):
    # fd 7 and its dup() fd 8 in one ffmpeg, and the same drm_file passed to a second process
    proc.process(100, {"7": i915(video_ns=0), "8": i915(video_ns=0)})
    proc.process(101, {"4": i915(video_ns=0)})
    s = proc.sampler()
    first = s.sample([100, 101])
    assert first.clients == 1 and first.memory_bytes == (3 << 20) + (10240 << 10)  # not 3x
    proc.now += 1_000_000_000
    for pid, fds in ((100, ("7", "8")), (101, ("4",))):
        proc.process(pid, {fd: i915(video_ns=600_000_000) for fd in fds})
    assert s.sample([100, 101]).engines["video"] == pytest.approx(0.3)  # not 0.9
    # the same client id on another GPU is another client
    proc.process(101, {"4": i915(video_ns=600_000_000).replace("0000:00:02.0", "0000:03:00.0")})
    assert s.sample([100, 101]).clients == 2


def test_two_clients_of_one_encoder_are_summed(proc):
    proc.process(100, {"7": xe(vcs=0, total=0), "8": xe(vcs=0, total=0, client="4")})
    s = proc.sampler()
    s.sample([100])
    proc.process(100, {"7": xe(vcs=1_000, total=10_000), "8": xe(vcs=3_000, total=10_000, client="4")})
    usage = s.sample([100])
    assert usage.engines["video"] == pytest.approx((1_000 + 3_000) / 10_000 / 2)
    assert usage.memory_bytes == 2 * XE_RESIDENT


# --- when nothing can be measured --------------------------------------------------------

def test_no_gpu_gives_a_reason_and_no_metric(proc):
    proc.process(100, {})  # an ffmpeg with only files and pipes open, and no render node here
    usage = proc.sampler().sample([100])
    assert usage.engines == {} and usage.memory_bytes is None and usage.clients == 0
    assert usage.reason == f"no GPU: no render node in {proc.dev}"
    (proc.dev / "renderD128").write_text("")
    assert "have no DRM file open" in proc.sampler().sample([100]).reason
    assert "run on the CPU (encoder libx265)" in proc.sampler(encoder="libx265").sample([100]).reason
    assert proc.sampler().sample([]).reason == "no encode is running"


def test_a_driver_without_engine_stats_is_named(proc):
    proc.process(100, {"7": "drm-driver:\ti915\ndrm-pdev:\t0000:00:02.0\ndrm-client-id:\t7\n"})
    usage = proc.sampler().sample([100])
    assert usage.clients == 1 and usage.engines == {}
    assert usage.reason.startswith("the i915 driver prints no engine usage")


def test_permission_errors_are_ignored_and_said(proc, monkeypatch):
    proc.process(100, {"7": i915()})
    proc.process(101, {"7": i915(client="8")})
    real_listdir = os.listdir
    denied = str(proc.root / "proc" / "101" / "fdinfo")

    def listdir(path):
        if str(path) == denied:
            raise PermissionError(13, "Permission denied", path)
        return real_listdir(path)

    monkeypatch.setattr(gpu_usage.os, "listdir", listdir)
    assert proc.sampler().sample([100, 101]).clients == 1  # 101's clients are skipped, 100's counted
    assert proc.sampler().sample([101]).reason == f"cannot read {denied}: Permission denied"


def test_reads_closer_than_min_interval_get_the_previous_result(proc):
    proc.process(100, {"7": i915(video_ns=0)})
    s = proc.sampler(min_interval=1.0)
    first = s.sample([100])
    proc.now += 500_000_000
    proc.process(100, {"7": i915(video_ns=400_000_000)})
    assert s.sample([100]) is first  # 0.5 s: not re-read
    second = s.sample([100, 101])  # another encode started: read now
    assert second is not first and second.engines["video"] == pytest.approx(0.4 / 0.5 / 2)
    proc.now += 1_000_000_000
    proc.process(100, {"7": i915(video_ns=1_400_000_000)})
    assert s.sample([100]).engines["video"] == pytest.approx(1.0 / 1.0 / 2)  # since the previous read


def test_the_real_proc_of_this_process_reads_without_error():
    """/proc's real layout: this test process has no DRM file open (or, on a desktop, some)."""
    usage = GpuSampler(encoder="hevc_qsv", min_interval=0).sample([os.getpid(), 2 ** 22 + 1])  # + a pid that is not
    assert usage.pids == [os.getpid(), 2 ** 22 + 1]
    assert usage.clients > 0 or usage.reason


# --- metrics and the status page ----------------------------------------------------------

def _families(registry) -> tuple[str, dict]:
    text = generate_latest(registry).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_exposition_of_the_gpu_families(proc):
    proc.process(100, {"7": xe(vcs=0, rcs=0, total=0)})
    s = proc.sampler()
    snap = Snapshot({"running": 1}, encoder_pids=[100])
    registry = new_registry(PipelineCollector(lambda: snap, s))
    text, fams = _families(registry)
    # first scrape: memory is known, the ratio is not yet: declared, no sample
    assert "# TYPE media_pipeline_gpu_engine_busy_ratio gauge" in text
    assert fams["media_pipeline_gpu_engine_busy_ratio"].samples == []
    assert "media_pipeline_gpu_memory_bytes 2.4764416e+07" in text  # 24764416 bytes
    proc.process(100, {"7": xe(vcs=2_000, rcs=1_000, total=10_000)})
    text, fams = _families(registry)
    samples = {s.labels["engine"]: s.value for s in fams["media_pipeline_gpu_engine_busy_ratio"].samples}
    assert samples == {"video": 0.1, "video-enhance": 0.0, "render": 0.1}  # copy and compute are not exported
    assert 'media_pipeline_gpu_engine_busy_ratio{engine="video"} 0.1' in text
    assert re.search(r"^media_pipeline_gpu_memory_bytes 2\.4\d+e\+07$", text, re.M)


def test_metrics_without_gpu_declare_the_families_with_no_sample(proc):
    registry = new_registry(PipelineCollector(lambda: Snapshot({}), proc.sampler()))
    text, fams = _families(registry)
    assert fams["media_pipeline_gpu_engine_busy_ratio"].samples == []
    assert fams["media_pipeline_gpu_memory_bytes"].samples == []
    assert "# HELP media_pipeline_gpu_memory_bytes" in text
    # without a sampler (media-rip's style of use), no GPU family at all
    assert "gpu" not in generate_latest(new_registry(PipelineCollector(lambda: Snapshot({})))).decode()


def test_a_sampler_bug_costs_only_the_gpu_metrics(proc, monkeypatch):
    s = proc.sampler()
    monkeypatch.setattr(s, "_sample", lambda pids: 1 / 0)
    text, fams = _families(new_registry(PipelineCollector(lambda: Snapshot({"queued": 2}, encoder_pids=[1]), s)))
    assert "media_pipeline_queue_length 2.0" in text and fams["media_pipeline_gpu_memory_bytes"].samples == []


# --- the service: which pids are sampled, and the status page -----------------------------

def _service(tmp_path):
    from media_pipeline import config as cfgmod
    from media_pipeline import service
    from media_pipeline.jobs import JobStore

    for d in ("staging", "movies", "tv", "state"):
        (tmp_path / d).mkdir(exist_ok=True)
    cfg = cfgmod.from_dict({"staging": str(tmp_path / "staging"), "movies": str(tmp_path / "movies"),
                            "tv": str(tmp_path / "tv"), "db": str(tmp_path / "state" / "jobs.sqlite3"),
                            "metrics_textfile": "", "encoder": "hevc_qsv", "gpu_proof_file": "",
                            "rip_status_file": ""})
    svc = service.Service(cfg)
    svc.store = JobStore(cfg.db)
    src = tmp_path / "staging" / "Film (2020).mkv"
    src.write_bytes(b"x" * 100)
    st = src.stat()
    svc.store.enqueue(str(src), st.st_size, st.st_mtime_ns)
    return svc, svc.store.claim()


def test_the_service_samples_its_running_encoder_and_forgets_it_when_ffmpeg_ends(tmp_path, monkeypatch):
    from media_pipeline import service
    from media_pipeline.transcode import EXIT_ENCODE, TranscodeError

    svc, job = _service(tmp_path)
    seen = {}

    def fake_transcode(src, dst, opts, *, on_start, **_kw):
        on_start(4242)  # what transcode() does right after Popen
        seen["pids"] = svc.snapshot().encoder_pids
        seen["gpu"] = svc.gpu_usage()
        seen["stored"] = svc.store.get(job.id).pid
        raise TranscodeError(EXIT_ENCODE, "ffmpeg failed")

    monkeypatch.setattr(service, "transcode", fake_transcode)
    svc.process(job)
    assert seen["pids"] == [4242] and seen["gpu"].pids == [4242]
    assert seen["stored"] == 4242  # still recorded in the job for crash recovery
    assert svc.snapshot().encoder_pids == []  # ffmpeg was waited for: its pid is not sampled any more


def test_status_page_gpu_section_and_api(tmp_path):
    from media_pipeline import web

    (tmp_path / "fake").mkdir()
    proc = FakeProc(tmp_path / "fake")
    svc, job = _service(tmp_path)
    app = web.StatusApp(svc)

    def get(path):
        status, _headers, body = app.route({"PATH_INFO": path, "REQUEST_METHOD": "GET"})
        assert status == "200 OK"
        return body.decode()

    html = get("/")
    assert "GPU engines: not measured: no encode is running" in html
    proc.process(100, {"7": i915(video_ns=0)})
    svc.gpu = proc.sampler()
    svc.running[job.id] = {"id": job.id, "source": job.source, "dest": None, "progress": 0.0, "fps": 0.0}
    svc.encoder_started(job.id, 100)
    assert "the busy ratio comes with the next one" in get("/")
    proc.now += 1_000_000_000
    proc.process(100, {"7": i915(video_ns=1_000_000_000)})
    html = get("/")
    assert 'video <span class="engine" data-engine="video">50%</span>' in html
    assert "memory 13.0 MiB" in html and "1 DRM client (i915 0000:00:02.0)" in html
    proc.now += 1_000_000_000
    proc.process(100, {"7": i915(video_ns=1_500_000_000)})
    import json

    data = json.loads(get("/api/status"))["gpu_usage"]
    assert data["engines"]["video"] == pytest.approx(0.25) and data["pids"] == [100] and data["reason"] == ""
