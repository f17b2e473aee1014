"""Stage `measure_video`: what a clip looks and sounds like, in one decoding pass.

Pictures. The clip is decoded once, forward (PyAV; the container closed on every path,
the loop bounded by `decode_timeout`). From it come
- keyframes: `keyframes` frames evenly spaced over the clip (at (i + 0.5) / N of its
  length), `keyframe_height` pixels high, stored side by side as one JPEG strip
  (`<key>.keyframes.jpg` in the shards: one member per clip whatever N is, one JPEG
  header and quantisation table for all, and a reader cuts it by `keyframe_count`);
  embed_clip embeds each and pools them into `clip_video_emb`;
- frame_phash: the 64-bit pHash (dedup_phash's hashing) of a frame every 1/`hash_fps`
  seconds (0.25 s), the sequence dedup_video matches;
- motion_score: frame differences, not optical flow: the mean absolute difference of
  consecutive frames sampled at `motion_fps` (grayscale, 64x64), over 255. A still
  shot reads 0, a slow zoom on a photograph 0.007, moving test patterns 0.03-0.08, a
  strobe 1 (filter_video_quality lists the measurements). Cheap, and what filtering
  near-static clips needs (NeMo Curator uses codec motion vectors to the same end);
- luma_std: the largest luma standard deviation (of 255) of the sampled frames: under
  2 every frame is one flat colour (a blank clip).

Sound. When the clip has an audio track and `audio` is not `skip`, the track is decoded
in blocks (ffmpeg, time-limited) and measured by the audio stages' meter (loudness,
silence, SNR, band edge, ...: the same columns as ingest_audio, so
filter_audio_quality applies); `audio: extract` also stores it as FLAC in `audio`, for
embed_clap. Silent, music-only and speech clips can then be told apart.
"""
from __future__ import annotations

import io
import json
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import ledger, media
from pipeline.stage import Column, Resources, RowParams, Stage
from schemas.audio_text import METRICS
from stages.ingest import audio, video

GRAY = 64  # side of the grayscale frames motion and hashes are computed on
AUDIO_METRICS = [f for f in METRICS if f.name != "duration"]  # a clip's duration is the video's


class MeasureVideoParams(RowParams):
    keyframes: int = Field(8, ge=1, le=64, description="frames kept per clip (a JPEG strip) and embedded by embed_clip")
    keyframe_height: int = Field(224, ge=32, le=1080, description="height of each kept frame in pixels")
    motion_fps: float = Field(4.0, gt=0, le=30, description="frames a second compared for motion_score")
    hash_fps: float = Field(4.0, gt=0, le=30, description="frames a second hashed for dedup_video")
    audio: Literal["measure", "extract", "skip"] = Field(
        "measure", description="measure the sound track; extract = also store it as FLAC in `audio` (for "
                               "embed_clap); skip = neither")
    audio_rate: int = Field(48_000, ge=8000, le=192_000, description="rate of the extracted FLAC (CLAP hears 48 kHz)")
    decode_timeout: float = Field(300.0, gt=0, le=86_400, description="seconds one clip's decoding may take")
    video_column: str = Field("video", description="video column")


class MeasureVideo(Stage):
    """Keyframes (a JPEG strip), frame hashes, motion and the sound's measurements of each clip."""

    name = "measure_video"
    Params = MeasureVideoParams
    resources = Resources(num_cpus=1, batch_size=4)
    placement = frozenset({"decode_timeout"})
    reason_hints = {"decode_timeout": "decode_timeout bounds each clip"}

    def reads(self) -> list[str]:
        return [self.params.video_column]

    def streams(self) -> list[str]:
        return [self.params.video_column]

    def adds(self) -> list[Column]:
        out = []
        if self.params.audio != "skip":
            from stages.ingest.audio_text import excerpt, waveform

            labels = {"rms_dbfs": "sound RMS (dBFS)", "peak_dbfs": "sound peak (dBFS)",
                      "true_peak_dbtp": "sound true peak (dBTP)", "loudness_lufs": "sound loudness (LUFS)",
                      "clipping_ratio": "clipped sound samples (share)", "dc_offset": "sound DC offset",
                      "silence_ratio": "silent 20 ms frames (share)", "snr_db": "sound SNR (dB)",
                      "bandwidth_hz": "sound band edge (Hz)"}
            out += [Column(f.name, "metric", label=labels[f.name]) for f in AUDIO_METRICS]
            if self.params.audio == "extract":
                out += [Column("audio", "media", format="@audio_format", preview=waveform, excerpt=excerpt),
                        Column("audio_format"), Column("sample_rate"), Column("channels")]
        # the strip last: the report shows the last previewable media a row has
        return out + [Column("keyframes", "media", format="keyframes.jpg", preview=strip_preview),
                      Column("keyframe_count"), Column("keyframe_times"), Column("frame_phash"),
                      Column("motion_score", "metric", label="motion (mean frame difference, of 1)"),
                      Column("luma_std", "metric", label="largest frame luma std (of 255)")]

    def process(self, batch: pa.Table) -> pa.Table:
        rows, rejects = [], []
        for row in batch.to_pylist():
            try:
                rows.append(self.measure(row))
                rejects.append(None)
            except ledger.Rejected as e:
                rows.append({})
                rejects.append(ledger.reject(e.reason, f"{row.get('source_uri')}: {e.detail}"))
        types: dict[str, pa.DataType] = {
            "keyframes": pa.large_binary(), "keyframe_count": pa.int32(), "keyframe_times": pa.string(),
            "frame_phash": pa.list_(pa.uint64()), "motion_score": pa.float64(), "luma_std": pa.float64()}
        if self.params.audio != "skip":
            types |= {f.name: f.type for f in AUDIO_METRICS}
            if self.params.audio == "extract":
                types |= {"audio": pa.large_binary(), "audio_format": pa.string(), "sample_rate": pa.int32(),
                          "channels": pa.int32()}
        for name, kind in types.items():
            values = [r.get(name) for r in rows]
            if name == "audio" and any(isinstance(v, dict) for v in values):
                from schemas import MEDIA_REF

                kind = MEDIA_REF
            batch = ledger.set_column(batch, name, pa.array(values, kind))
        return ledger.with_rejects(batch, rejects)

    def measure(self, row: dict[str, Any]) -> dict[str, Any]:
        p = self.params
        ref = row[p.video_column]
        if ref is None:
            raise ledger.Rejected("no_video", "the row has no video")
        deadline = video.Deadline(p.decode_timeout, "measuring this clip")
        if isinstance(ref, dict):
            with media.local_path(ref) as path:
                return self._measure_file(path, deadline)
        import tempfile

        with tempfile.NamedTemporaryFile(prefix="mmcurate-measure-", suffix=".mp4") as f:
            f.write(ref)
            f.flush()
            return self._measure_file(f.name, deadline)

    def _measure_file(self, path: str, deadline: video.Deadline) -> dict[str, Any]:
        p = self.params
        pictures = self.pictures(path, deadline)
        if p.audio != "skip":
            pictures |= self.sound(path, deadline)
        return pictures

    def pictures(self, path: str, deadline: video.Deadline) -> dict[str, Any]:
        """One forward pass: kept frames (RGB), hashed frames and motion frames (gray)."""
        import av

        from stages.dedup.phash import gray_hashes

        p = self.params
        try:
            with video.open_local(path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base \
                    else float(container.duration or 0) / av.time_base
                keep_at = [duration * (i + 0.5) / p.keyframes for i in range(p.keyframes)]
                kept, kept_times, hashes, motion = [], [], [], []
                next_hash, next_motion, k, last = 0.0, 0.0, 0, None
                for frame in container.decode(stream):
                    deadline.check()
                    last = frame
                    t = frame.time if frame.time is not None else 0.0
                    small = None
                    if t + 1e-3 >= next_hash or t + 1e-3 >= next_motion:
                        small = upright(frame, GRAY, GRAY, "gray")
                    if t + 1e-3 >= next_hash:
                        hashes.append(int(gray_hashes(small, boxes=[(0.0, 0.0, 0.0, 0.0)])[0]))
                        next_hash += 1.0 / p.hash_fps
                    if t + 1e-3 >= next_motion:
                        motion.append(small.astype(np.float32))
                        next_motion += 1.0 / p.motion_fps
                    while k < len(keep_at) and t + 1e-3 >= keep_at[k]:
                        if not kept_times or kept_times[-1] != round(t, 3):
                            kept.append(upright(frame, None, p.keyframe_height, "rgb24"))
                            kept_times.append(round(t, 3))
                        k += 1
                if not kept and last is not None:  # the header claims more than the frames hold: the last stands in
                    kept, kept_times = [upright(last, None, p.keyframe_height, "rgb24")], [round(last.time or 0.0, 3)]
        except av.error.FFmpegError as e:
            raise ledger.Rejected("corrupt", f"the clip does not decode ({type(e).__name__}: "
                                             f"{ledger.without_bytes(str(e))[:200]})") from None
        if not motion:
            raise ledger.Rejected("corrupt", "no frame decodes")
        diffs = [float(np.abs(a - b).mean()) / 255.0 for a, b in zip(motion[:-1], motion[1:])]
        return {"keyframes": strip_jpeg(kept), "keyframe_count": len(kept), "keyframe_times": json.dumps(kept_times),
                "frame_phash": hashes, "motion_score": float(np.mean(diffs)) if diffs else 0.0,
                "luma_std": max(float(m.std()) for m in motion)}

    def sound(self, path: str, deadline: video.Deadline) -> dict[str, Any]:
        """The audio track measured (and, for `extract`, encoded to FLAC); nulls without one."""
        import os
        import time

        p = self.params
        try:
            found = audio.ffprobe(path, max(0.1, deadline.end - time.monotonic()))
        except ledger.Rejected as e:
            if e.reason == "decode_timeout":
                raise
            return {}  # no audio track
        found.sample_rate = found.sample_rate or p.audio_rate
        rate = p.audio_rate if p.audio == "extract" else found.sample_rate
        meter = audio.Meter(rate, 1)
        writer = audio.Writer(rate, 1) if p.audio == "extract" else None
        resampler = None
        if rate != found.sample_rate:
            import soxr

            resampler = soxr.ResampleStream(found.sample_rate, rate, 1, dtype="float32")
        try:
            for block in audio.blocks(path, found, max(0.1, deadline.end - time.monotonic())):
                mono = audio.mix(block, "mono")
                if resampler is not None:
                    mono = resampler.resample_chunk(mono)
                if len(mono):
                    meter.add(mono)
                    if writer is not None:
                        writer.add(mono)
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros((0, 1), np.float32), last=True)
                if len(tail):
                    meter.add(tail)
                    if writer is not None:
                        writer.add(tail)
            encoded = writer.close() if writer is not None else None
        except BaseException:
            if writer is not None:
                writer.file.close()
                os.unlink(writer.path)
            raise
        metrics = meter.metrics()
        if not metrics["duration"]:
            if encoded:
                os.unlink(encoded)
            return {}
        out = {f.name: metrics.get(f.name) for f in AUDIO_METRICS}
        if encoded:
            try:
                if self.media_store is not None:
                    out["audio"] = self.media_store.put_file(encoded)[0]
                else:
                    with open(encoded, "rb") as f:
                        out["audio"] = f.read()
            finally:
                os.unlink(encoded)
            out |= {"audio_format": "flac", "sample_rate": rate, "channels": 1}
        return out


def upright(frame, width: int | None, height: int, fmt: str) -> np.ndarray:
    """A decoded frame as displayed (its display matrix applied: a phone video held upright
    is portrait), `height` pixels high and `width` wide (None: the displayed aspect, even)."""
    turns = (int(getattr(frame, "rotation", 0) or 0) // 90) % 4  # counter-clockwise quarter turns
    shown_w, shown_h = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
    if width is None:
        width = max(2, round(height * shown_w / max(1, shown_h)) // 2 * 2)
    stored = (height, width) if turns % 2 else (width, height)  # the size asked of the stored frame
    array = frame.to_ndarray(width=stored[0], height=stored[1], format=fmt)
    return np.ascontiguousarray(np.rot90(array, turns)) if turns else array


def strip_jpeg(frames: list[np.ndarray], quality: int = 90) -> bytes:
    """Frames of one size side by side, as one JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.concatenate(frames, axis=1)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def split_strip(data: bytes, count: int) -> list[np.ndarray]:
    """A keyframe strip back into its `count` frames (RGB arrays)."""
    from stages.ingest.image import open_image

    strip = np.asarray(open_image(data, "RGB"))
    width = strip.shape[1] // max(1, count)
    return [strip[:, i * width:(i + 1) * width] for i in range(count)]


def strip_preview(data: bytes) -> bytes | None:
    """The strip itself, shrunk to 96 px high, for the report."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (im.width * 96 // max(1, im.height), 96))
        im = im.convert("RGB")
        if im.height > 96:
            im = im.resize((max(1, im.width * 96 // im.height), 96))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - a preview is best effort
        return None
