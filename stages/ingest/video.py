"""Probe, sample, cut and measure video: Debian's `ffmpeg`/`ffprobe` and PyAV.

ffprobe reads the header (streams, codecs, duration, rotation); ffmpeg cuts and
encodes clips; PyAV (`av`) reads frames where Python needs pixels (keyframes, motion,
blank checks) and packets where it needs keyframe times, without decoding. Every
external program runs with an argument list, a time limit and bounded output
(`run`); every PyAV container is opened in a `with` block (closed on every path) and
every frame loop watches a deadline, so neither a hostile file nor a long one holds a
worker past its time limit. Frames are taken a few at a time and shrunk on decode: a
2-hour video never sits in memory.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

from pipeline.ledger import Rejected

from .programs import MESSAGE_CAP, OUTPUT_CAP, last_line, run  # noqa: F401 - part of this module's interface

# Inputs are local files only: a hostile file cannot make ffmpeg or PyAV open anything else
# (a playlist's segments, a URL, another file by a protocol prefix).
LOCAL_ONLY = ["-protocol_whitelist", "file"]


@dataclass
class Probe:
    """What the header says about a video, before anything is decoded."""

    duration: float
    width: int  # as displayed: a portrait phone video (rotation 90) is taller than wide
    height: int
    rotation: int  # degrees clockwise the player turns the stored frames
    fps: float
    video_codec: str
    audio_codec: str | None
    bit_rate: int | None
    container: str
    stream_index: int  # of the video stream in the container


def sniff(head: bytes) -> str | None:
    """The container by its first bytes (the file name is not trusted); None = not video."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return None  # an audio-only MPEG-4 brand
        return "mov" if brand == b"qt  " else "mp4"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "webm" if b"webm" in head[:64] else "mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "ts"
    if head[:4] == b"OggS":
        return "ogg"
    return None


@functools.cache
def decoders() -> frozenset[str]:
    """The codecs this machine's ffmpeg build decodes: each decoder's name and, for a
    library's decoder (libdav1d), the codec it names ("(codec av1)")."""
    code, out, _ = run(["ffmpeg", "-hide_banner", "-decoders"], 30.0)
    names = set()
    for line in out.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VA":
            names.add(parts[1])
            if "(codec " in line:
                names.add(line.rsplit("(codec ", 1)[1].split(")")[0])
    return frozenset(names)


def has_decoder(codec: str) -> bool:
    """Whether ffmpeg (for cutting) and PyAV (for frames) can both decode `codec`."""
    import av

    if codec in ("none", "", None):
        return False
    try:
        av.Codec(codec, "r")
    except Exception:  # noqa: BLE001 - UnknownCodecError and friends: PyAV cannot decode it
        return False
    return codec in decoders()


def _fps(rate: str | None) -> float:
    try:
        value = float(Fraction(rate or "0/1"))
    except (ValueError, ZeroDivisionError):
        return 0.0
    return value if 0 < value < 1000 else 0.0


def _rotation(stream: dict) -> int:
    """The display matrix's rotation in degrees as ffprobe reports it, in [0, 360) (an
    old `rotate` tag when there is no matrix)."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            try:
                return int(round(float(side["rotation"]))) % 360
            except (TypeError, ValueError):
                pass
    try:
        return int((stream.get("tags") or {}).get("rotate", 0)) % 360
    except (TypeError, ValueError):
        return 0


def probe(path: str, timeout: float, container: str) -> Probe:
    """The header by ffprobe. Rejects: probe_timeout, truncated/corrupt (it does not
    read), no_video_stream (audio only, or a cover picture), missing_decoder."""
    code, out, err = run(["ffprobe", "-v", "error", *LOCAL_ONLY, "-show_format", "-show_streams", "-of", "json", "-i", path],
                         timeout, "probe_timeout")
    try:
        info = json.loads(out or b"{}")
    except ValueError:
        info = {}
    if code != 0 or not info.get("format"):
        why = last_line(err.replace(path, "<file>"))
        cut = container in ("mp4", "mov") and ("moov atom not found" in err or box_shortfall(path))
        reason = "truncated" if cut else "corrupt"
        raise Rejected(reason, f"ffprobe cannot read this {container} file ({why})")
    streams = info.get("streams") or []
    video = [s for s in streams if s.get("codec_type") == "video"
             and not (s.get("disposition") or {}).get("attached_pic")]
    if not video:
        kinds = sorted({str(s.get("codec_type")) for s in streams}) or ["none"]
        raise Rejected("no_video_stream", f"no video stream (streams: {', '.join(kinds)})")
    v = video[0]
    codec = str(v.get("codec_name") or "none")
    if not has_decoder(codec):
        tag = v.get("codec_tag_string") or "?"
        raise Rejected("missing_decoder", f"no decoder for video codec {codec!r} (tag {tag}) in this machine's "
                                          "ffmpeg/PyAV: install a build that has one; nothing was clipped")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    fmt = info["format"]
    try:
        duration = float(v.get("duration") or fmt.get("duration") or 0.0)
    except ValueError:
        duration = 0.0
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if width <= 0 or height <= 0:
        raise Rejected("corrupt", f"the video stream has no frame size ({width}x{height})")
    rotation = _rotation(v)
    if rotation in (90, 270):
        width, height = height, width
    try:
        bit_rate = int(fmt.get("bit_rate") or v.get("bit_rate") or 0) or None
    except ValueError:
        bit_rate = None
    return Probe(duration, width, height, rotation, _fps(v.get("avg_frame_rate")) or _fps(v.get("r_frame_rate")),
                 codec, str(audio.get("codec_name")) if audio else None, bit_rate, container, int(v.get("index", 0)))


def box_shortfall(path: str) -> int:
    """Bytes an MP4/MOV's top-level boxes announce beyond the end of the file (0 when whole)."""
    import os
    import struct

    size = os.path.getsize(path)
    pos = 0
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            length, _ = struct.unpack(">I4s", f.read(8))
            if length == 1:
                length = struct.unpack(">Q", f.read(8))[0]
            elif length == 0:  # the box runs to the end of the file
                return 0
            if length < 8:
                return 0  # not a box structure we can judge
            pos += length
    return max(0, pos - size)


class Deadline:
    """A time limit shared by the frame loops of one file."""

    def __init__(self, seconds: float, what: str = "decoding"):
        self.seconds, self.what = seconds, what
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise Rejected("decode_timeout", f"{self.what} took more than {self.seconds:g}s")


def open_local(path: str):
    """A PyAV container for a local file, other protocols refused (close it: use `with`)."""
    import av

    return av.open(path, metadata_errors="ignore", options={"protocol_whitelist": "file"})


def frames_at(path: str, times: list[float], deadline: Deadline, width: int = 64, height: int = 64,
              fmt: str = "gray") -> Iterator[tuple[float, np.ndarray]]:
    """(time, frame) for the first frame at or after each time (sorted), shrunk to
    width x height in `fmt` ("gray" or "rgb24") by the decoder's scaler. Seeks to the
    keyframe before each time and decodes forward, so the cost is one GOP per frame
    whatever the video's length."""

    with open_local(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.time_base
        for t in sorted(times):
            deadline.check()
            container.seek(int(max(0.0, t) / base) if base else 0, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                deadline.check()
                if frame.time is None or frame.time + 1e-3 >= t:
                    yield (frame.time if frame.time is not None else t), frame.to_ndarray(
                        width=width, height=height, format=fmt)
                    break


def keyframe_times(path: str, deadline: Deadline) -> list[float]:
    """Times of the video's keyframes from its start (as `ffmpeg -ss` counts), from packet
    flags: demuxed, not decoded."""

    out = []
    with open_local(path) as container:
        stream = container.streams.video[0]
        base = stream.time_base
        origin = stream.start_time or 0
        for n, packet in enumerate(container.demux(stream)):
            if n % 256 == 0:
                deadline.check()
            if packet.is_keyframe and packet.pts is not None and base:
                out.append(round(float((packet.pts - origin) * base), 6))
    return sorted(set(out))
