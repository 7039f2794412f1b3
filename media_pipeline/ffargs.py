"""Pure: ffprobe JSON + options -> the ffmpeg argv and notes for a person. No I/O here.

Mapping rules (docs/adr/0003-media-pipeline.md):
- the first real video stream (cover art, i.e. attached pictures, is skipped) is re-encoded;
- every audio and subtitle stream in the wanted languages is copied, in the input's order;
- when no audio matches, the first audio stream is kept (a film without sound is worse
  than a film in the wrong language) and a note says so; no subtitles is fine;
- chapters and global/stream metadata (titles, languages, dispositions) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import languages as lang

ENCODERS = ("libx265", "hevc_qsv")
PRESETS = {
    "libx265": (
        "ultrafast", "superfast", "veryfast", "faster", "fast",
        "medium", "slow", "slower", "veryslow", "placebo",
    ),
    "hevc_qsv": ("veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"),
}
QUALITY_RANGE = {"libx265": (0, 51), "hevc_qsv": (1, 51)}
DEFAULT_QSV_DEVICE = "/dev/dri/renderD128"

# MKV statistics tags written by mkvmerge/MakeMKV; wrong once the video is re-encoded.
_STALE_VIDEO_TAGS = ("BPS", "NUMBER_OF_BYTES", "NUMBER_OF_FRAMES", "_STATISTICS_")
# Subtitle codecs Matroska cannot hold as they are, and what to turn them into.
_SUBTITLE_CONVERT = {"mov_text": "srt"}


class InputError(Exception):
    """The input is not something we can transcode (no video, no duration, ...)."""


@dataclass(frozen=True)
class EncodeOptions:
    languages: tuple[str, ...] = ("eng",)
    encoder: str = "libx265"
    crf: int = 18
    preset: str = "slow"
    qsv_device: str = DEFAULT_QSV_DEVICE
    ffmpeg: str = "ffmpeg"
    x265_params: str = ""  # extra libx265 parameters (e.g. "pools=1:frame-threads=1"), after log-level

    def problems(self) -> list[str]:
        """Human-readable reasons these options are unusable (empty when fine)."""
        return [msg for _field, msg in self.field_problems()]

    def field_problems(self) -> list[tuple[str, str]]:
        """(field, reason) for each unusable option: the one set of encoder/preset/quality rules,
        used by media-transcode, the pipeline's config and the Pulumi program's settings."""
        out = []
        if self.encoder not in ENCODERS:
            out.append(("encoder", f"encoder must be one of {', '.join(ENCODERS)} (got {self.encoder!r})"))
            return out
        if self.preset not in PRESETS[self.encoder]:
            out.append((
                "preset",
                f"preset {self.preset!r} is not a {self.encoder} preset; "
                f"use one of {', '.join(PRESETS[self.encoder])}",
            ))
        lo, hi = QUALITY_RANGE[self.encoder]
        if isinstance(self.crf, bool) or not isinstance(self.crf, int) or not lo <= self.crf <= hi:
            out.append(("crf", f"crf must be an integer {lo}-{hi} for {self.encoder} (got {self.crf!r})"))
        if not self.languages:
            out.append(("languages", "languages must name at least one language, e.g. eng"))
        for code in self.languages:
            if not lang.is_known(code):
                out.append(("languages", f"language {code!r} is not an ISO 639 code (use e.g. en/eng, bg/bul)"))
        return out


@dataclass
class Selection:
    video: dict
    audio: list[dict]
    subtitles: list[dict]
    attachments: list[dict]
    duration: float
    start: float
    notes: list[str] = field(default_factory=list)


def _tags(stream: dict) -> dict:
    return {str(k).lower(): v for k, v in (stream.get("tags") or {}).items()}


def describe(stream: dict) -> str:
    """'#2 bul ac3 "Commentary"' — how a stream is named in notes and errors."""
    tags = _tags(stream)
    parts = [f"#{stream.get('index')}", lang.canonical(tags.get("language")), stream.get("codec_name", "?")]
    if tags.get("title"):
        parts.append(f'"{tags["title"]}"')
    return " ".join(parts)


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out else None  # NaN -> None


def select_streams(probe: dict, wanted: list[str] | tuple[str, ...]) -> Selection:
    """Choose the streams to keep. Raises InputError when there is nothing to transcode."""
    streams = probe.get("streams") or []
    fmt = probe.get("format") or {}
    videos = [
        s for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({s.get("codec_type", "?") for s in streams}) or ["none"]
        raise InputError(f"no video stream (found: {', '.join(kinds)}); not a video rip")
    video = videos[0]

    duration = _float(fmt.get("duration")) or _float(video.get("duration"))
    if not duration or duration <= 0:
        raise InputError("the container declares no duration; an unfinished or damaged rip?")
    start = _float(fmt.get("start_time")) or 0.0

    wanted_list = ",".join(wanted)
    notes = [f"video: {describe(video)} {video.get('width', '?')}x{video.get('height', '?')}"]
    audio_all = [s for s in streams if s.get("codec_type") == "audio"]
    subs_all = [s for s in streams if s.get("codec_type") == "subtitle"]
    audio = [s for s in audio_all if lang.matches(_tags(s).get("language"), list(wanted))]
    subs = [s for s in subs_all if lang.matches(_tags(s).get("language"), list(wanted))]

    if audio:
        notes.append("audio: keeping " + ", ".join(describe(s) for s in audio))
    elif audio_all:
        audio = [audio_all[0]]
        notes.append(
            f"audio: no track in {wanted_list}; keeping the first audio track ({describe(audio_all[0])})"
        )
    else:
        notes.append("audio: the input has no audio")
    if subs:
        notes.append("subtitles: keeping " + ", ".join(describe(s) for s in subs))
    else:
        notes.append(f"subtitles: none in {wanted_list}")
    dropped = [s for s in audio_all + subs_all if s not in audio and s not in subs]
    if dropped:
        notes.append("dropped: " + ", ".join(describe(s) for s in dropped))

    # Styled subtitles (ASS/SSA) need the fonts attached to the file.
    attachments: list[dict] = []
    if any(s.get("codec_name") in ("ass", "ssa") for s in subs):
        attachments = [s for s in streams if s.get("codec_type") == "attachment"]
        if attachments:
            notes.append(f"attachments: keeping {len(attachments)} (fonts for styled subtitles)")
    return Selection(video, audio, subs, attachments, duration, start, notes)


def _video_codec_args(video: dict, opts: EncodeOptions) -> list[str]:
    if opts.encoder == "hevc_qsv":
        ten_bit = "10" in str(video.get("pix_fmt", ""))
        upload = f"format={'p010le' if ten_bit else 'nv12'},hwupload=extra_hw_frames=64,format=qsv"
        return ["-vf", upload, "-c:v", "hevc_qsv", "-preset", opts.preset,
                "-global_quality", str(opts.crf)]
    params = "log-level=error" + (f":{opts.x265_params}" if opts.x265_params else "")
    return ["-c:v", "libx265", "-preset", opts.preset, "-crf", str(opts.crf), "-x265-params", params]


def build_args(probe: dict, opts: EncodeOptions, src: str, dst: str) -> tuple[list[str], list[str]]:
    """The complete ffmpeg argv (writing Matroska to dst) and notes. Raises InputError."""
    sel = select_streams(probe, opts.languages)
    notes = list(sel.notes)
    argv = [opts.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
            "-progress", "pipe:1"]
    if opts.encoder == "hevc_qsv":
        # "" (auto) and by-path names are resolved by the caller (media_pipeline.gpu); unresolved, "" is auto's fallback
        device = opts.qsv_device or DEFAULT_QSV_DEVICE
        argv += ["-init_hw_device", f"qsv=hw:{device}", "-filter_hw_device", "hw"]
    argv += ["-i", src]
    for stream in [sel.video, *sel.audio, *sel.subtitles, *sel.attachments]:
        argv += ["-map", f"0:{stream['index']}"]
    argv += ["-map_metadata", "0", "-map_chapters", "0"]
    argv += _video_codec_args(sel.video, opts)
    stale = sorted(
        key for key in (sel.video.get("tags") or {})
        if key.upper().startswith(_STALE_VIDEO_TAGS)
    )
    for key in stale:
        argv += ["-metadata:s:v:0", f"{key}="]
    argv += ["-c:a", "copy", "-c:s", "copy"]
    for n, sub in enumerate(sel.subtitles):
        target = _SUBTITLE_CONVERT.get(sub.get("codec_name", ""))
        if target:
            argv += [f"-c:s:{n}", target]
            notes.append(f"subtitles: {describe(sub)} converted to {target} (Matroska cannot hold it)")
    argv += ["-max_muxing_queue_size", "4096", "-f", "matroska", "-y", dst]
    return argv, notes
