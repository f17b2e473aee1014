"""Stage `ingest_video`: videos with their captions or subtitles.

Sources as for audio (a manifest with `path` or `url`, folders with sidecar `.txt`,
`.srt`, `.vtt` or `.json`, WebDataset tars with video members). A video never sits in
memory: a download streams to a temporary file, a tar member is copied out in chunks,
and the file goes to the media store whole. Each video is sniffed by its bytes,
probed by ffprobe (duration, displayed size and rotation, frame rate, codecs, bit
rate, audio present), then `sample_frames` frames spread over its length are
decoded (PyAV, seeking: the cost does not grow with the length) to find a video
that is blank (every frame one flat colour) or that stops before its header says.
Every way a file can be bad is a reject with its own reason; a codec without a
decoder on this machine is one (`missing_decoder`), never a silent 0 clips.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import ledger, media
from pipeline.stage import Column, Resources
from schemas.video_text import PROBE, VIDEO_TEXT

from . import video
from .audio_text import _printable
from .caption import normalize_caption
from .download import Spooled
from .listed import IngestParams, ListedIngest

BLANK_STD = 2.0  # luma standard deviation (of 255) under which a frame is one flat colour
TEXT_LIKE = (b"<", b"{", b"[", b"#", b"WEBVTT")


class IngestVideoParams(IngestParams):
    text_column: str = Field("text", description="manifest column with the caption (written as `text`)")
    min_seconds: float = Field(1.0, ge=0, le=60, description="shorter videos are rejected as too_short")
    max_seconds: float = Field(4 * 3600, gt=0, description="longer videos are rejected as too_long (from the header)")
    max_bytes: int = Field(8 << 30, ge=1024, description="larger files and downloads are rejected as too_large "
                                                         "(downloads while streaming)")
    max_frame_pixels: int = Field(7680 * 4320 * 2, ge=1, description="larger frames (width x height) are rejected "
                                                                      "as too_large before any is decoded")
    sample_frames: int = Field(12, ge=2, le=200, description="frames decoded across each video to find blank "
                                                             "and truncated ones")
    probe_timeout: float = Field(60.0, gt=0, le=3600, description="seconds ffprobe may take per file")
    decode_timeout: float = Field(300.0, gt=0, le=86_400, description="seconds the sampled frames may take")
    total_timeout: float = Field(600.0, gt=0, le=86_400, description="seconds per download attempt, connect to "
                                                                     "last byte")
    allow_untimed: bool = Field(True, description="keep a video whose caption has no timing")


class IngestVideo(ListedIngest):
    """Videos with captions or subtitles: probed, sampled for blank and truncated files, stored once."""

    name = "ingest_video"
    Params = IngestVideoParams
    media_kind = "video"
    modality = "video"
    reserved = frozenset(VIDEO_TEXT.names)
    spool_downloads = True
    resources = Resources(num_cpus=1, batch_size=4)
    reason_hints = {**ListedIngest.reason_hints,
                    "too_short": "min_seconds", "too_long": "max_seconds", "too_large": "max_bytes and max_frame_pixels",
                    "probe_timeout": "probe_timeout", "decode_timeout": "decode_timeout",
                    "missing_decoder": "the machine's ffmpeg/PyAV builds decide which codecs decode"}

    def adds(self) -> list[Column]:
        labels = {"duration": "duration (s)", "width": "width (px)", "height": "height (px)", "fps": "frame rate",
                  "bit_rate": "bit rate (bit/s)"}
        return [Column("video", "media", format="@video_format", preview=poster), Column("video_format"),
                Column("text", "text", format="txt"), Column("content_sha256"), Column("original_bytes"),
                Column("transcript_segments"),
                *(Column(f.name, "metric", label=labels[f.name]) if f.name in labels else Column(f.name)
                  for f in PROBE)]

    def process(self, batch: pa.Table) -> pa.Table:
        values, rejects = self.each_row(batch, self._load)
        return self.with_values(batch, values, rejects, VIDEO_TEXT, "video")

    # -- one video ----------------------------------------------------------------------
    def _load(self, row: dict[str, Any], fetched: bytes | None) -> dict[str, Any]:
        p = self.params
        try:
            raw_text = self.text(row)
            if row.get("_timed") is None and not p.allow_untimed:
                raise ledger.Rejected("untimed_transcript", "the subtitles have no timing (allow_untimed: false)")
            with self._local(row, fetched) as path:
                out = self.examine(path)
        finally:
            if isinstance(fetched, Spooled):
                fetched.discard()
        out["text"] = normalize_caption(raw_text, p.invalid_utf8) if raw_text is not None else None
        out["transcript_segments"] = row.get("_timed")
        if out["text"] is None and row.get("_timed"):  # subtitles alone: the video's text is all of them
            out["text"] = " ".join(c["text"] for c in json.loads(row["_timed"]) if c.get("text")) or None
        return out

    def _local(self, row: dict[str, Any], fetched: bytes | None) -> contextlib.AbstractContextManager[str]:
        """The video as a local file, never as bytes in memory: itself, the spooled
        download, or its tar member (or remote file) copied out in chunks."""
        @contextlib.contextmanager
        def local() -> Iterator[str]:
            path = row["path"]
            if isinstance(fetched, Spooled):
                yield str(fetched)
                return
            if fetched is not None:  # not expected (downloads spool); kept correct anyway
                with media.local_path(fetched) as tmp:
                    yield tmp
                return
            if row["_tar_offset"] is not None:
                if row["_tar_size"] > self.params.max_bytes:
                    raise ledger.Rejected("too_large", f"{row['_tar_size']} bytes > max_bytes={self.params.max_bytes}")
                with media.local_path({"uri": path, "offset": row["_tar_offset"], "size": row["_tar_size"]}) as tmp:
                    yield tmp
                return
            if "://" not in path:
                if os.path.realpath(path) != path:
                    raise ledger.Rejected("path_outside_root", "the path became a symbolic link after listing")
                if not os.path.exists(path):
                    raise ledger.Rejected("missing_file", "file not found")
                yield path
                return
            from pipeline import fs

            try:
                size = fs.resolve(path)[0].get_file_info(fs.resolve(path)[1]).size
            except OSError as e:
                raise ledger.Rejected("unreadable_file", f"cannot read: {e}") from None
            if size is None:
                raise ledger.Rejected("missing_file", "file not found")
            with media.local_path({"uri": path, "offset": 0, "size": size}) as tmp:
                yield tmp
        return local()

    def examine(self, path: str) -> dict[str, Any]:
        """Sniff, probe and sample one local video; store it. Raises Rejected."""
        p = self.params
        size = os.path.getsize(path)
        if size == 0:
            raise ledger.Rejected("empty_file", "the file is empty (0 bytes)")
        if size > p.max_bytes:
            raise ledger.Rejected("too_large", f"{size} bytes > max_bytes={p.max_bytes}")
        with open(path, "rb") as f:
            head = f.read(512)
        container = video.sniff(head)
        if container is None:
            from .audio import sniff as sniff_audio

            what = ("text or markup" if head.lstrip().startswith(TEXT_LIKE) or _printable(head[:64]) else
                    "audio only" if sniff_audio(head[:64]) else "unrecognised binary data")
            raise ledger.Rejected("not_video", f"not a video: {what} ({size} bytes)")
        found = video.probe(path, p.probe_timeout, container)
        if found.duration > p.max_seconds:
            raise ledger.Rejected("too_long", f"{found.duration:.1f}s > max_seconds={p.max_seconds:g} (from the header)")
        if found.width * found.height > p.max_frame_pixels:  # one decoded frame would take gigabytes
            raise ledger.Rejected("too_large", f"frames of {found.width}x{found.height} > max_frame_pixels="
                                               f"{p.max_frame_pixels}")
        if found.duration and found.duration < p.min_seconds:
            raise ledger.Rejected("too_short", f"{found.duration:.2f}s < min_seconds={p.min_seconds:g}")
        self._sample(path, found)
        store = self.media_store
        if store is not None:
            stored, _ = store.put_file(path)
            content = stored["uri"].rsplit("/", 1)[1]  # the store is addressed by the bytes' sha256: read once
        else:
            with open(path, "rb") as f:
                stored = f.read()
            content = hashlib.sha256(stored).hexdigest()
        return {"content_sha256": content, "video": stored, "video_format": container, "original_bytes": size,
                "duration": found.duration, "width": found.width, "height": found.height,
                "rotation": found.rotation, "fps": found.fps, "video_codec": found.video_codec,
                "audio_codec": found.audio_codec, "has_audio": found.audio_codec is not None,
                "bit_rate": found.bit_rate}

    def _sample(self, path: str, found: video.Probe) -> None:
        """Decode sample_frames frames across the video: none, or too few toward its end,
        is a truncated or corrupt file; all of one flat colour is a blank video."""
        import av

        p = self.params
        n = p.sample_frames
        duration = found.duration
        times = [duration * (i + 0.5) / n for i in range(n)] if duration else [0.0]
        deadline = video.Deadline(p.decode_timeout, "decoding the sampled frames")
        got: list[tuple[float, np.ndarray]] = []
        try:
            got = list(video.frames_at(path, times, deadline))
        except ledger.Rejected:
            raise
        except av.error.FFmpegError as e:
            if not got:
                raise ledger.Rejected("corrupt", f"no frame decodes ({type(e).__name__}: "
                                                 f"{ledger.without_bytes(str(e))[:200]})") from None
        if not got:
            raise ledger.Rejected("truncated" if found.duration else "corrupt",  # a duration announces frames
                                  f"no frame decodes of the {duration:.2f}s the header announces")
        last = max(t for t, _ in got)
        if duration and len(got) < len(times) and last < times[-1] - max(1.0, 2 * duration / n):
            raise ledger.Rejected("truncated", f"frames stop at {last:.2f}s of the {duration:.2f}s the header "
                                               "announces")
        spread = [float(frame.std()) for _, frame in got]
        if max(spread) < BLANK_STD:
            level = float(np.mean([frame.mean() for _, frame in got]))
            raise ledger.Rejected("blank_video", f"all {len(got)} sampled frames are one flat colour "
                                                 f"(mean luma {level:.0f} of 255)")


def poster(data: bytes, width: int = 192) -> bytes | None:
    """A JPEG of a video's middle frame, for the report (best effort)."""
    import io

    from PIL import Image

    try:
        with media.local_path(data) as name:
            with video.open_local(name) as c:
                s = c.streams.video[0]
                middle = float(s.duration * s.time_base) / 2 if s.duration and s.time_base else 0.0
            frames = list(video.frames_at(name, [middle], video.Deadline(20.0), width, width * 9 // 16, "rgb24"))
        if not frames:
            return None
        buf = io.BytesIO()
        Image.fromarray(frames[0][1]).save(buf, format="JPEG", quality=80)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - a preview is best effort
        return None
