"""Stage `segment_audio`: a recording becomes its segments, each a child sample.

Where the segments are: voice activity by frame energy (30 ms frames; a frame is voice
when it is `energy_db` above the recording's noise floor, the 10th percentile of frame
levels, and above -50 dBFS), or by Silero VAD (the model the `silero-vad` package
ships; nothing is downloaded), or fixed windows. Then gaps shorter than `merge_gap`
are bridged, stretches longer than `max_seconds` cut into equal parts, shorter than
`min_seconds` dropped, and each padded by `padding` (never into its neighbour).

Each segment is read by seeking in the stored recording (the whole recording is never
decoded at once), encoded once to FLAC and measured; its id derives from the
recording's and `t=START-END`. A timed transcript is cut to each segment's span; an
untimed one stays with the whole recording unless `allow_untimed` lets every segment
carry it (`text_scope: recording` says so).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import ledger, media
from pipeline.stage import Column, Resources, RowParams, Stage
from stages.ingest import audio
from stages.ingest.transcripts import text_within

FRAME = 0.03  # seconds per VAD frame
SILERO_RATE = 16_000
SILERO_WINDOW = 600.0  # seconds of audio Silero looks at in one call


class SegmentAudioParams(RowParams):
    method: Literal["energy", "silero", "fixed"] = Field("energy", description="voice activity by frame energy, by "
                                                                               "Silero VAD, or fixed windows")
    min_seconds: float = Field(1.0, ge=0.05, description="shorter segments are dropped")
    max_seconds: float = Field(30.0, gt=0, description="longer stretches are cut into equal parts (and the window "
                                                       "length for method=fixed)")
    merge_gap: float = Field(0.3, ge=0, description="pauses shorter than this join their neighbours")
    padding: float = Field(0.1, ge=0, description="seconds added before and after each segment")
    energy_db: float = Field(12.0, gt=0, description="energy method: dB above the noise floor that counts as voice")
    allow_untimed: bool = Field(False, description="segment a recording whose transcript has no timing; every "
                                                   "segment then carries the whole recording's text")
    audio_column: str = Field("audio", description="audio column")


class SegmentAudio(Stage):
    """Recordings into segments by voice activity or fixed windows; each segment a child sample."""

    name = "segment_audio"
    Params = SegmentAudioParams
    resources = Resources(num_cpus=1, batch_size=4)
    reason_hints = {"no_speech": "method, energy_db and min_seconds decide what counts as a segment"}

    def reads(self) -> list[str]:
        return [self.params.audio_column, "text", "transcript_segments"]

    def streams(self) -> list[str]:
        return [self.params.audio_column]

    def adds(self) -> list[Column]:
        from stages.ingest.audio_text import excerpt, waveform

        return [Column(self.params.audio_column, "media", format="@audio_format", preview=waveform, excerpt=excerpt),
                Column("segment_start", "metric", label="segment start (s)"),
                Column("segment_end"), Column("text_scope")]

    def process(self, batch: pa.Table) -> pa.Table:
        if self.media_store is None:
            raise RuntimeError("segment_audio stores each segment: run it in a job, or give it a media_store")
        return ledger.fan_out(batch, self.split, [("segment_start", pa.float64()), ("segment_end", pa.float64()),
                                                  ("text_scope", pa.string())])

    def split(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        p = self.params
        timed = json.loads(row["transcript_segments"]) if row.get("transcript_segments") else None
        if row.get("text") and timed is None and not p.allow_untimed:
            return [row]  # an untimed transcript stays with its whole recording
        ref = row[p.audio_column]
        if ref is None:
            raise ledger.Rejected("no_audio", "the row has no audio")
        with media.local_path(ref) as path:
            info = audio.probe(path, 60.0)
            spans = self.spans(path, info)
            if not spans:
                raise ledger.Rejected("no_speech", f"no segment of at least {p.min_seconds:g}s "
                                                   f"({p.method} method)")
            children = [self.child(row, path, info, start, end, timed) for start, end in spans]
        return children

    def child(self, row: dict[str, Any], path: str, info: audio.Probe, start: float, end: float,
              timed: list | None) -> dict[str, Any]:
        samples, rate = audio.read_range(path, start, end)
        meter = audio.Meter(rate, samples.shape[1])
        meter.add(samples)
        encoded = audio.encode_flac(samples, rate)
        stored = self.media_store.put(encoded)[0]
        fields = {k: v for k, v in row.items() if k not in ("reject", "sample_id", "parent_id")}
        text, scope = row.get("text"), "recording"
        cues = None
        if timed is not None:
            text, scope = text_within(timed, start, end) or None, "segment"
            cues = [{**c, "start": round(c["start"] - start, 3), "end": round(c["end"] - start, 3)} for c in timed
                    if start <= (c["start"] + c["end"]) / 2 < end]
        return ledger.child(row, f"t={start:.2f}-{end:.2f}", **{
            # the segment's own identity: its bytes and samples, not its recording's
            **fields, "content_sha256": hashlib.sha256(encoded).hexdigest(), "pcm_sha256": audio.pcm_sha256(samples),
            "original_bytes": len(encoded),
            **meter.metrics(), self.params.audio_column: stored, "audio_format": "flac",
            "sample_rate": rate, "channels": samples.shape[1], "segment_start": round(start, 3),
            "segment_end": round(end, 3), "text": text, "text_scope": scope if text else None,
            "transcript_segments": json.dumps(cues) if cues is not None else None})

    # -- where the segments are ------------------------------------------------------------
    def spans(self, path: str, info: audio.Probe) -> list[tuple[float, float]]:
        p = self.params
        duration = info.duration or 0.0
        if p.method == "fixed":
            edges = np.arange(0.0, duration, p.max_seconds).tolist() + [duration]
            return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b - a >= p.min_seconds]
        voiced = self._silero(path, info) if p.method == "silero" else self._energy(path, info)
        return self._tidy(voiced, duration)

    def _energy(self, path: str, info: audio.Probe) -> list[tuple[float, float]]:
        levels = []
        n = max(1, int(FRAME * info.sample_rate))
        carry = np.zeros(0, np.float32)
        for block in audio.blocks(path, info, 600.0):
            mono = np.concatenate([carry, block.mean(axis=1)])
            whole = len(mono) // n * n
            if whole:
                power = (mono[:whole].reshape(-1, n).astype(np.float64) ** 2).mean(axis=1)
                levels.append(10 * np.log10(np.maximum(power, 1e-12)))
            carry = mono[whole:]
        if not levels:
            return []
        db = np.concatenate(levels)
        floor = np.percentile(db, 10)
        voice = db > max(floor + self.params.energy_db, -50.0)
        return _runs(voice, FRAME)

    def _silero(self, path: str, info: audio.Probe) -> list[tuple[float, float]]:
        import soxr
        import torch
        from silero_vad import get_speech_timestamps, load_silero_vad

        model = load_silero_vad()
        out, offset = [], 0.0
        window: list[np.ndarray] = []
        resampler = soxr.ResampleStream(info.sample_rate, SILERO_RATE, 1, dtype="float32")

        def flush(samples: np.ndarray, start: float) -> None:
            stamps = get_speech_timestamps(torch.from_numpy(samples), model, sampling_rate=SILERO_RATE,
                                           return_seconds=True)
            out.extend((start + s["start"], start + s["end"]) for s in stamps)

        size = 0
        for block in audio.blocks(path, info, 600.0):
            chunk = resampler.resample_chunk(block.mean(axis=1, keepdims=True, dtype=np.float32))[:, 0]
            window.append(chunk)
            size += len(chunk)
            if size >= SILERO_WINDOW * SILERO_RATE:
                flush(np.concatenate(window), offset)
                offset += size / SILERO_RATE
                window, size = [], 0
        tail = resampler.resample_chunk(np.zeros((0, 1), np.float32), last=True)[:, 0]
        if size or len(tail):
            flush(np.concatenate(window + [tail]), offset)
        return out

    def _tidy(self, voiced: list[tuple[float, float]], duration: float) -> list[tuple[float, float]]:
        p = self.params
        merged: list[list[float]] = []
        for start, end in sorted(voiced):
            if merged and start - merged[-1][1] < p.merge_gap:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        cut = []
        for start, end in merged:
            parts = max(1, int(np.ceil((end - start) / p.max_seconds)))
            step = (end - start) / parts
            cut += [(start + i * step, start + (i + 1) * step) for i in range(parts)]
        kept = [(a, b) for a, b in cut if b - a >= p.min_seconds]
        padded = []
        for i, (a, b) in enumerate(kept):
            lo = max(0.0, a - p.padding, (kept[i - 1][1] + a) / 2 if i else 0.0)
            hi = min(duration or b + p.padding, b + p.padding, (b + kept[i + 1][0]) / 2 if i + 1 < len(kept) else 1e18)
            padded.append((round(lo, 3), round(hi, 3)))
        return padded


def _runs(flags: np.ndarray, step: float) -> list[tuple[float, float]]:
    """(start, end) seconds of the runs of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, flags.astype(np.int8), 0]))
    return [(a * step, b * step) for a, b in zip(edges[::2], edges[1::2])]
