"""Stage `clip_video`: a video becomes its clips, each a child sample.

Where the clips are. `method: scenes` finds shot boundaries with PySceneDetect's
HistogramDetector (over PyAV): a frame starts a new shot when the correlation of its
luma histogram (128 bins) with the previous frame's falls by more than
`scene_threshold` (0.2), at least `min_scene_seconds` after the previous cut.
bench/bench_video.py --scenes measures the candidates on generated videos of five
known shots each (8 videos, 32 cuts, ffmpeg's moving test sources; a cut found within
2 frames): ffmpeg's scene score at 0.3 found 28 with 2 false cuts (at 0.2, 28 with 14);
PySceneDetect's ContentDetector (27, what video2dataset uses) 27 with 3, its
AdaptiveDetector 22 with 1, its HashDetector 30 with 14, its HistogramDetector 30 with
1, hence the histogram. (ffmpeg's score is the mean pixel difference less the previous
one: between two busy patterns it stays low.)
`method: fixed` cuts windows of `max_seconds`. Shots shorter than `min_seconds` are
dropped; longer than `max_seconds` are cut into windows of `max_seconds` every
`stride` seconds.

How a clip is cut. Without `exact` (the default) a clip is a stream copy from keyframe
to keyframe (found from packet flags, nothing decoded; all copies of a source in one
ffmpeg pass of the segment muxer): its start moves forward to the first keyframe in
its span, its end back to the last one before the span's end, so nothing of a
neighbouring shot leaks in. A span without such keyframes (it would lose more than
half its length), or a source whose streams MP4 cannot carry, is re-encoded instead. With `exact`, or a
target `fps` or `resolution`, every clip is re-encoded (libx264 at `crf`, padded or
cropped to the resolution, AAC audio). `audio: drop` leaves the sound out. Every clip
file is probed before it is stored: a clip that is not there or does not read is a
reject of its own (`clip_failed`), never a path to nothing.

Identity. A clip's id is a hash of its source's content (`content_sha256`) and its span
`t=START-END`: the same in every run and every refresh, wherever the file lies. Two
byte-identical sources would give their clips the same ids, so run dedup_exact before
clip_video. A timed caption (subtitles) is cut to each clip; an untimed one goes with
every clip (`text_scope: video`).

Bounds. ffmpeg runs with an argument list and `clip_timeout` per call; one source takes
at most `video_timeout` seconds in all (then it is a `decode_timeout` reject), so a
straggler cannot hold up its batch. The video streams through ffmpeg's own process:
this stage holds a list of cut times, never frames.
"""
from __future__ import annotations

import bisect
import json
import os
import re
import tempfile
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from pipeline import fs, ledger, media
from pipeline.stage import Column, Resources, RowParams, Stage
from schemas.video_text import PROBE
from stages.ingest import video
from stages.ingest.transcripts import text_within



class ClipVideoParams(RowParams):
    method: Literal["scenes", "fixed"] = Field("scenes", description="shot boundaries by PySceneDetect's "
                                                                     "HistogramDetector, or fixed windows of max_seconds")
    scene_threshold: float = Field(0.2, gt=0, lt=1, description="luma histogram difference (1 - correlation, 0..1) "
                                                                "above which a frame starts a new shot")
    min_scene_seconds: float = Field(0.6, ge=0, description="a shot is at least this long (a cut closer after the "
                                                            "previous one is ignored)")
    min_seconds: float = Field(2.0, gt=0, description="shorter shots (and window remainders) are dropped")
    max_seconds: float = Field(10.0, gt=0, description="longer shots are cut into windows this long")
    stride: float | None = Field(None, gt=0, description="seconds between the starts of a long shot's windows; "
                                                         "None = max_seconds (back to back)")
    exact: bool = Field(False, description="re-encode every clip to cut exactly at its span (else stream copy from "
                                           "the first keyframe of the shot)")
    fps: float | None = Field(None, gt=0, le=240, description="re-encode to this frame rate")
    resolution: str | None = Field(None, description="re-encode to WIDTHxHEIGHT (e.g. 640x360)")
    fit: Literal["pad", "crop"] = Field("pad", description="how a frame of another aspect ratio fits the resolution")
    crf: int = Field(23, ge=0, le=51, description="libx264 quality of re-encoded clips (lower = better, larger)")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = Field(
        "veryfast", description="libx264 speed preset of re-encoded clips")
    audio: Literal["keep", "drop"] = Field("keep", description="keep the sound in each clip, or drop it")
    clip_timeout: float = Field(300.0, gt=0, le=86_400, description="seconds one ffmpeg call may take")
    video_timeout: float = Field(1800.0, gt=0, le=86_400, description="seconds one source may take in all")
    video_column: str = Field("video", description="video column")

    @field_validator("resolution")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[1-9]\d{1,4}x[1-9]\d{1,4}", v):
            raise ValueError(f"resolution must be WIDTHxHEIGHT, e.g. 640x360 (got {v!r})")
        if v is not None and any(int(x) % 2 for x in v.split("x")):
            raise ValueError(f"resolution {v}: width and height must be even (H.264 4:2:0)")
        return v


class ClipVideo(Stage):
    """Videos into clips by shot boundaries or fixed windows; each clip a child sample with its own MP4."""

    name = "clip_video"
    Params = ClipVideoParams
    resources = Resources(num_cpus=1, batch_size=1)
    placement = frozenset({"clip_timeout", "video_timeout"})
    reason_hints = {"no_clips": "min_seconds, max_seconds and scene_threshold decide the clips",
                    "decode_timeout": "video_timeout bounds each source, clip_timeout each ffmpeg call"}

    def reads(self) -> list[str]:
        return [self.params.video_column, "text", "transcript_segments", "content_sha256"]

    def streams(self) -> list[str]:
        return [self.params.video_column]

    def adds(self) -> list[Column]:
        from stages.ingest.video_text import poster

        return [Column(self.params.video_column, "media", format="@video_format", preview=poster),
                Column("clip_start", "metric", label="clip start (s)"), Column("clip_end"), Column("clip_cut"),
                Column("text_scope")]

    def process(self, batch: pa.Table) -> pa.Table:
        if self.media_store is None:
            raise RuntimeError("clip_video stores each clip: run it in a job, or give it a media_store")
        return ledger.fan_out(batch, self.split, [("clip_start", pa.float64()), ("clip_end", pa.float64()),
                                                  ("clip_cut", pa.string()), ("text_scope", pa.string())])

    # -- one source -------------------------------------------------------------------
    def split(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        p = self.params
        ref = row[p.video_column]
        if ref is None:
            raise ledger.Rejected("no_video", "the row has no video")
        deadline = video.Deadline(p.video_timeout, "clipping this video")
        timed = json.loads(row["transcript_segments"]) if row.get("transcript_segments") else None
        # clips are written beside a local store, so that storing one is a rename, not a copy
        near = self.media_store.root if fs.is_local(self.media_store.root) else None
        if near:
            os.makedirs(near, exist_ok=True)
        with media.local_path(ref) as path, tempfile.TemporaryDirectory(prefix="tmp-clips-", dir=near) as work:
            try:
                found = video.probe(path, self.budget(deadline), row.get("video_format") or "video")
            except ledger.Rejected as e:
                if e.reason == "probe_timeout":  # within video_timeout: this source is a straggler
                    raise ledger.Rejected("decode_timeout", e.detail) from None
                raise
            spans = self.spans(path, found, deadline)
            if not spans:
                raise ledger.Rejected("no_clips", f"no shot of at least min_seconds={p.min_seconds:g} in "
                                                  f"{found.duration:.1f}s ({p.method})")
            plan = self.plan(path, spans, found.duration, deadline)
            copies = [(a, b) for a, b, how in plan if how == "copy"]
            files = self.segment(path, copies, work, deadline) if copies else {}
            children = []
            for a, b, how in plan:
                out = files.get((a, b)) or os.path.join(work, f"clip-{len(children)}.mp4")
                if (a, b) not in files:
                    how = "reencode"
                children.append(self.child(row, path, a, b, how, out, timed, deadline, found))
        return children

    def reencodes(self) -> bool:
        p = self.params
        return p.exact or p.fps is not None or p.resolution is not None

    def plan(self, path: str, spans: list[tuple[float, float]], duration: float,
             deadline: video.Deadline) -> list[tuple[float, float, str]]:
        """(start, end, how) per clip. A stream copy runs from keyframe to keyframe: its start
        moves forward to the first keyframe in the span,
        its end back to the last keyframe before the span's end (the video's end for the
        last), so that nothing of a neighbouring shot leaks in. A span that would lose
        more than half its length so is re-encoded at its own span."""
        if self.reencodes():
            return [(a, b, "reencode") for a, b in spans]
        keyframes = video.keyframe_times(path, deadline)

        def forward(t: float) -> float:
            i = bisect.bisect_left(keyframes, t - 1e-3)
            return keyframes[i] if i < len(keyframes) else duration

        def back(t: float) -> float:
            if t >= duration - 1e-3:
                return duration
            i = bisect.bisect_right(keyframes, t + 1e-3)
            return keyframes[i - 1] if i else 0.0

        out = []
        for a, b in spans:
            start, end = forward(a), back(b)
            if end - start >= max(self.params.min_seconds - 1e-6, 0.5 * (b - a)):
                out.append((round(start, 3), round(end, 3), "copy"))
            else:
                out.append((a, b, "reencode"))
        # two spans snapped onto one another (a window inside a long GOP) are one clip: the later is re-encoded
        seen: set[tuple[float, float]] = set()
        for i, (a, b, how) in enumerate(out):
            if how == "copy" and ((a, b) in seen or any(a < y and x < b for x, y in seen)):
                out[i] = (spans[i][0], spans[i][1], "reencode")
            elif how == "copy":
                seen.add((a, b))
        return out

    def segment(self, path: str, copies: list[tuple[float, float]], work: str,
                deadline: video.Deadline) -> dict[tuple[float, float], str]:
        """Stream-copy every copy span in one ffmpeg pass (the segment muxer, which cuts at
        keyframes): {span: file}. A source whose streams MP4 cannot carry gives {} (then
        every clip is re-encoded)."""
        p = self.params
        bounds = sorted({t for span in copies for t in span if t > 0})
        audio = ["-map", "0:a:0?"] if p.audio == "keep" else ["-an"]
        pattern = os.path.join(work, "seg-%06d.mp4")
        args = ["ffmpeg", "-v", "error", "-nostdin", "-y", *video.LOCAL_ONLY, "-i", path, "-map", "0:v:0", *audio,
                "-sn", "-dn",
                "-c", "copy", "-f", "segment", "-segment_format", "mp4", "-reset_timestamps", "1",
                "-segment_times", ",".join(f"{max(0.0, t - 5e-4):.4f}" for t in bounds), pattern]
        code, _, _ = video.run(args, self.budget(deadline))
        if code != 0:
            return {}
        edges = [0.0] + bounds
        files = {}
        for a, b in copies:
            k = edges.index(a) if a in edges else -1
            name = pattern % k
            if k >= 0 and (k + 1 < len(edges) and edges[k + 1] == b or k + 1 == len(edges)) and \
                    os.path.exists(name) and os.path.getsize(name):
                files[(a, b)] = name
        return files

    def child(self, row: dict[str, Any], path: str, start: float, end: float, how: str, out: str,
              timed: list | None, deadline: video.Deadline, source: video.Probe) -> dict[str, Any]:
        p = self.params
        locator = f"t={start:.3f}-{end:.3f}"
        fields = {k: v for k, v in row.items() if k not in ("reject", "sample_id", "parent_id")}
        if timed is not None:
            text, scope = text_within(timed, start, end) or None, "clip"
            cues = json.dumps([{**c, "start": round(c["start"] - start, 3), "end": round(c["end"] - start, 3)}
                               for c in timed if start <= (c["start"] + c["end"]) / 2 < end])
        else:
            text, scope, cues = row.get("text"), "video", None
        base = {**fields, "text": text, "text_scope": scope if text else None, "transcript_segments": cues,
                "clip_start": round(start, 3), "clip_end": round(end, 3), "clip_cut": how}
        key = ledger.sample_id(f"clip:{row.get('content_sha256') or row['sample_id']}", locator)
        try:
            if how == "reencode":
                self.encode(path, start, end, out, deadline)
            found = self.check(out, start, end, source if how == "copy" else None)
        except ledger.Rejected as e:
            if e.reason == "decode_timeout":
                raise
            child = ledger.child(row, locator, key=key, **base)
            child["reject"] = ledger.reject("clip_failed", f"{child['source_uri']}: {e.detail}")
            return child
        stored, _ = self.media_store.put_file(out, move=True)
        digest = stored["uri"].rsplit("/", 1)[1]  # the store is addressed by the bytes' sha256
        size = stored["size"]
        probe = {f.name: getattr(found, f.name) for f in PROBE if hasattr(found, f.name)}
        return ledger.child(row, locator, key=key, **{
            **base, **probe, "duration": round(end - start, 3), "has_audio": found.audio_codec is not None,
            p.video_column: stored, "video_format": "mp4", "content_sha256": digest, "original_bytes": size})

    def encode(self, path: str, start: float, end: float, out: str, deadline: video.Deadline) -> None:
        """One clip re-encoded exactly at [start, end) into `out` (MP4: H.264, AAC)."""
        p = self.params
        audio = ["-map", "0:a:0?", "-c:a", "aac", "-b:a", "128k"] if p.audio == "keep" else ["-an"]
        args = ["ffmpeg", "-v", "error", "-nostdin", "-y", *video.LOCAL_ONLY, "-ss", f"{start:.4f}", "-i", path,
                "-t", f"{end - start:.4f}",
                "-map", "0:v:0", *audio, "-sn", "-dn", "-vf", self.filters(), "-c:v", "libx264", "-preset", p.preset,
                "-crf", str(p.crf), "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", out]
        code, _, err = video.run(args, self.budget(deadline))
        if code != 0:
            raise ledger.Rejected("clip_failed", f"ffmpeg could not cut {start:.2f}-{end:.2f}s "
                                                 f"({video.last_line(err.replace(path, '<file>'))})")

    @staticmethod
    def check(out: str, start: float, end: float, source: video.Probe | None = None) -> video.Probe:
        """The clip file exists, reads and has a video stream (never a path to nothing); what it
        holds, read in-process by PyAV. A stream copy keeps its source's display rotation."""
        import av

        if not os.path.exists(out) or not os.path.getsize(out):
            raise ledger.Rejected("clip_failed", f"the clip {start:.2f}-{end:.2f}s came out empty")
        try:
            with video.open_local(out) as container:
                if not container.streams.video:
                    raise ledger.Rejected("clip_failed", f"the clip {start:.2f}-{end:.2f}s has no video stream")
                v = container.streams.video[0]
                a = container.streams.audio[0] if container.streams.audio else None
                rotation = source.rotation if source is not None else 0
                width, height = v.codec_context.width, v.codec_context.height
                if rotation in (90, 270):
                    width, height = height, width
                return video.Probe(float(container.duration or 0) / av.time_base, width, height, rotation,
                                   float(v.average_rate or 0), v.codec_context.name,
                                   a.codec_context.name if a is not None else None,
                                   int(container.bit_rate or 0) or None, "mp4", v.index)
        except av.error.FFmpegError as e:
            raise ledger.Rejected("clip_failed", f"the clip {start:.2f}-{end:.2f}s does not read "
                                                 f"({type(e).__name__})") from None

    def budget(self, deadline: video.Deadline) -> float:
        """Seconds the next ffmpeg call may take: clip_timeout, within what is left of video_timeout."""
        import time

        left = deadline.end - time.monotonic()
        if left <= 0:
            raise ledger.Rejected("decode_timeout", f"clipping took more than video_timeout="
                                                    f"{self.params.video_timeout:g}s")
        return max(0.1, min(self.params.clip_timeout, left))

    def filters(self) -> str:
        """The re-encode's filter chain: frame rate, then fit to the resolution (pad or crop), even sizes."""
        p = self.params
        chain = [f"fps={p.fps:g}"] if p.fps else []
        if p.resolution:
            w, h = p.resolution.split("x")
            if p.fit == "pad":
                chain += [f"scale={w}:{h}:force_original_aspect_ratio=decrease",
                          f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2"]
            else:
                chain += [f"scale={w}:{h}:force_original_aspect_ratio=increase", f"crop={w}:{h}"]
            chain.append("setsar=1")
        else:
            chain.append("scale=trunc(iw/2)*2:trunc(ih/2)*2")
        return ",".join(chain)

    # -- where the clips are ------------------------------------------------------------
    def spans(self, path: str, found: video.Probe, deadline: video.Deadline) -> list[tuple[float, float]]:
        p = self.params
        duration = found.duration
        if p.method == "fixed":
            shots = [(0.0, duration)]
        else:
            cuts = scene_cuts(path, p.scene_threshold, p.min_scene_seconds, deadline)
            edges = [0.0] + [c for c in cuts if 0 < c < duration] + [duration]
            shots = list(zip(edges[:-1], edges[1:]))
        return windows(shots, p.min_seconds, p.max_seconds, p.stride)


def windows(shots: list[tuple[float, float]], min_seconds: float, max_seconds: float,
            stride: float | None) -> list[tuple[float, float]]:
    """Clips of shots: a shot of min..max seconds whole, a longer one in windows of
    max_seconds every stride seconds (the remainder kept when at least min_seconds)."""
    step = stride or max_seconds
    out = []
    for a, b in shots:
        if b - a < min_seconds - 1e-6:
            continue
        if b - a <= max_seconds + 1e-6:
            out.append((round(a, 3), round(b, 3)))
            continue
        t = a
        while t + min_seconds <= b + 1e-6:
            out.append((round(t, 3), round(min(t + max_seconds, b), 3)))
            if t + max_seconds >= b:
                break
            t += step
    return out


def scene_cuts(path: str, threshold: float, min_gap: float, deadline: video.Deadline) -> list[float]:
    """Times where a new shot starts, by PySceneDetect's HistogramDetector over PyAV (the
    container closed when done, the detection stopped at the deadline)."""
    import threading
    import time

    from scenedetect import HistogramDetector, SceneManager
    from scenedetect.backends.pyav import VideoStreamAv

    source = open(path, "rb")  # PyAV reads through this file object: no protocol is ever opened
    stream = VideoStreamAv(source)
    try:
        rate = float(stream.frame_rate) or 25.0
        manager = SceneManager()
        manager.add_detector(HistogramDetector(threshold=threshold, min_scene_len=max(1, round(min_gap * rate))))
        timer = threading.Timer(max(0.0, deadline.end - time.monotonic()), manager.stop)
        timer.start()
        try:
            manager.detect_scenes(stream)
        finally:
            timer.cancel()
        deadline.check()  # stopped by the timer: the source took too long
        return [round(start.seconds, 3) for start, _ in manager.get_scene_list()[1:]]
    except ledger.Rejected:
        raise
    except Exception as e:  # noqa: BLE001 - a frame the detector cannot read: this source's problem only
        raise ledger.Rejected("corrupt", f"scene detection failed ({type(e).__name__}: "
                                         f"{ledger.without_bytes(str(e))[:200]})") from None
    finally:
        container = getattr(stream, "_container", None)
        if container is not None:
            container.close()  # PyAV closes on garbage collection only: not soon enough for a pool of videos
        source.close()
