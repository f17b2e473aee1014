"""Stage `ingest_audio`: recordings with their transcripts or captions.

Sources as for images (a manifest with `path` or `url`, NeMo manifests with
`audio_filepath`, folders with sidecar `.txt`/`.srt`/`.vtt`/`.json`, WebDataset
tars). Each recording is sniffed by its bytes, its header probed (duration, rate,
channels, codec) before anything is decoded, then decoded block by block: mixed
to the channel policy, resampled with soxr, measured (stages.ingest.audio.Meter)
and encoded to FLAC in a temporary file that goes to the media store whole, so a
recording of hours never sits in memory. Every way a file can be bad is a reject
with its own reason.
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import ledger, media
from pipeline.stage import Column, Resources
from schemas.audio_text import AUDIO_TEXT, METRICS

from . import audio
from .caption import normalize_caption
from .listed import IngestParams, ListedIngest


class IngestAudioParams(IngestParams):
    text_column: str = Field("text", description="manifest column with the transcript or caption (written as `text`)")
    sample_rate: int | None = Field(None, ge=1000, le=384_000, description="resample to this rate with soxr; "
                                                                            "None = keep each file's own")
    channels: Literal["mono", "keep", "first"] = Field("mono", description="mono = mix channels down; first = the "
                                                                           "first channel; keep = as they are")
    encode_format: Literal["flac", "keep"] = Field("flac", description="flac (lossless, 16-bit); keep = the original "
                                                                       "bytes when nothing was changed")
    min_seconds: float = Field(0.5, ge=0, le=60, description="shorter recordings are rejected as too_short")
    max_seconds: float = Field(4 * 3600, gt=0, description="longer recordings are rejected as too_long, from the "
                                                            "header, before decoding")
    silence_dbfs: float = Field(-60.0, le=0, description="a recording whose peak stays below this is silent")
    decode_timeout: float = Field(600.0, gt=0, le=86_400, description="seconds an ffmpeg decode or probe may take")
    max_bytes: int = Field(1 << 30, ge=1024, description="largest download, enforced while streaming")
    allow_untimed: bool = Field(True, description="keep a recording whose transcript has no timing")


TEXT_LIKE = (b"<", b"{", b"[", b"#", b"WEBVTT")


class IngestAudio(ListedIngest):
    """Recordings with transcripts or captions: probed, decoded in blocks, measured, encoded once."""

    name = "ingest_audio"
    Params = IngestAudioParams
    media_kind = "audio"
    modality = "audio"
    reserved = frozenset(AUDIO_TEXT.names)
    other_path_columns = ("audio_filepath",)  # NeMo's manifests
    resources = Resources(num_cpus=1, batch_size=8)
    reason_hints = {**ListedIngest.reason_hints,
                    "too_short": "min_seconds", "too_long": "max_seconds", "silent": "silence_dbfs",
                    "decode_timeout": "decode_timeout"}

    def adds(self) -> list[Column]:
        labels = {"duration": "duration (s)", "rms_dbfs": "RMS level (dBFS)", "peak_dbfs": "peak (dBFS)",
                  "true_peak_dbtp": "true peak (dBTP)", "loudness_lufs": "loudness (LUFS)",
                  "clipping_ratio": "clipped samples (share)", "dc_offset": "DC offset",
                  "silence_ratio": "silent 20 ms frames (share)", "snr_db": "estimated SNR (dB)",
                  "bandwidth_hz": "band edge (Hz)"}
        return [Column("audio", "media", format="@audio_format", preview=waveform, excerpt=excerpt), Column("audio_format"),
                Column("text", "text", format="txt"), Column("content_sha256"), Column("pcm_sha256"),
                Column("sample_rate"), Column("channels"), Column("codec"), Column("original_sample_rate"),
                Column("original_channels"), Column("original_bytes"), Column("transcript_segments"),
                *(Column(f.name, "metric", label=labels[f.name]) for f in METRICS)]

    def process(self, batch: pa.Table) -> pa.Table:
        values, rejects = self.each_row(batch, self._load)
        return self.with_values(batch, values, rejects, AUDIO_TEXT, "audio")

    # -- one recording ----------------------------------------------------------------
    def _load(self, row: dict[str, Any], fetched: bytes | None) -> dict[str, Any]:
        p = self.params
        raw_text = self.text(row)
        if row.get("_timed") is None and not p.allow_untimed:
            raise ledger.Rejected("untimed_transcript", "the transcript has no timing (allow_untimed: false)")
        text = normalize_caption(raw_text, p.invalid_utf8) if raw_text is not None else None
        with self._local(row, fetched) as path:
            out = self.decode(path)
        out["text"] = text
        out["transcript_segments"] = row.get("_timed")
        return out

    def _local(self, row: dict[str, Any], fetched: bytes | None):
        """The recording as a local file: itself, or its bytes (a download, a tar member) in a temporary one."""
        import contextlib

        @contextlib.contextmanager
        def local():
            path = row["path"]
            if fetched is None and row["_tar_offset"] is None and path and "://" not in path:
                if os.path.realpath(path) != path:
                    raise ledger.Rejected("path_outside_root", "the path became a symbolic link after listing")
                if not os.path.exists(path):
                    raise ledger.Rejected("missing_file", "file not found")
                yield path
                return
            data = fetched if fetched is not None else self.read(row)
            with media.local_path(data) as tmp:
                yield tmp
        return local()

    def decode(self, path: str) -> dict[str, Any]:
        """Probe, decode in blocks, measure and encode one recording (a local file)."""
        p = self.params
        size = os.path.getsize(path)
        if size == 0:
            raise ledger.Rejected("empty_file", "the file is empty (0 bytes)")
        with open(path, "rb") as f:
            head = f.read(64)
        container = audio.sniff(head)
        if container is None:
            what = "text or markup" if head.lstrip().startswith(TEXT_LIKE) or _printable(head) else \
                "unrecognised binary data"
            raise ledger.Rejected("not_audio", f"not audio: {what} ({size} bytes)")
        try:
            found = audio.probe(path, p.decode_timeout)
        except ledger.Rejected as e:
            if e.reason in ("not_audio", "corrupt") and container != "other":
                raise ledger.Rejected("truncated", f"a {container} file whose header does not read: {e.detail}") from None
            raise
        if container == "wav" and audio.wav_shortfall(path):
            raise ledger.Rejected("truncated", f"the data chunk announces {audio.wav_shortfall(path)} bytes more "
                                               "than the file holds")
        if found.sample_rate <= 0 or found.channels <= 0:
            raise ledger.Rejected("corrupt", f"header says {found.sample_rate} Hz, {found.channels} channels")
        if found.duration is not None and found.duration > p.max_seconds:
            raise ledger.Rejected("too_long", f"{found.duration:.1f}s > max_seconds={p.max_seconds:g} (from the header)")
        rate = p.sample_rate or found.sample_rate
        channels = found.channels if p.channels == "keep" else 1
        keep = p.encode_format == "keep" and rate == found.sample_rate and channels == found.channels
        meter = audio.Meter(rate, channels)
        writer = None if keep else audio.Writer(rate, channels)
        resampler = None
        if rate != found.sample_rate:
            import soxr

            resampler = soxr.ResampleStream(found.sample_rate, rate, channels, dtype="float32")
        pcm = hashlib.sha256()
        decoded = 0
        try:
            for block in audio.blocks(path, found, p.decode_timeout):
                decoded += len(block)
                if decoded / found.sample_rate > p.max_seconds:
                    raise ledger.Rejected("too_long", f"more than max_seconds={p.max_seconds:g} decoded")
                if not np.isfinite(block).all():
                    raise ledger.Rejected("corrupt", f"{int((~np.isfinite(block)).sum())} samples are NaN or "
                                                     f"infinite (at {decoded / found.sample_rate:.1f}s)")
                pcm.update(audio.pcm16(block))
                out = audio.mix(block, p.channels)
                if resampler is not None:
                    out = resampler.resample_chunk(out)
                self._feed(out, meter, writer)
            if resampler is not None:
                self._feed(resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True), meter, writer)
            encoded = writer.close() if writer is not None else None
        except BaseException:
            if writer is not None:
                writer.file.close()
                os.unlink(writer.path)
            raise
        try:
            return self._checked(path, size, found, container, meter, decoded, pcm.hexdigest(), encoded, rate,
                                 channels)
        finally:
            if encoded:
                os.unlink(encoded)

    @staticmethod
    def _feed(block: np.ndarray, meter: audio.Meter, writer: audio.Writer | None) -> None:
        if len(block):
            meter.add(block)
            if writer is not None:
                writer.add(block)

    def _checked(self, path: str, size: int, found: audio.Probe, container: str, meter: audio.Meter, decoded: int,
                 pcm: str, encoded: str | None, rate: int, channels: int) -> dict[str, Any]:
        p = self.params
        if meter.nonfinite:
            raise ledger.Rejected("corrupt", f"{meter.nonfinite} samples are NaN or infinite")
        if not decoded:
            raise ledger.Rejected("truncated" if size > 1024 else "corrupt", "no audio frame decodes")
        if found.duration and decoded / found.sample_rate < 0.98 * found.duration - 0.05:
            raise ledger.Rejected("truncated", f"{decoded / found.sample_rate:.2f}s decode of the "
                                               f"{found.duration:.2f}s the header announces")
        metrics = meter.metrics()
        if metrics["duration"] < p.min_seconds:
            raise ledger.Rejected("too_short", f"{metrics['duration']:.2f}s < min_seconds={p.min_seconds:g}")
        if metrics["peak_dbfs"] < p.silence_dbfs:
            raise ledger.Rejected("silent", f"peak {metrics['peak_dbfs']:.1f} dBFS < silence_dbfs={p.silence_dbfs:g}")
        source = encoded or path
        store = self.media_store
        if store is not None:
            stored, _ = store.put_file(source)
        else:
            with open(source, "rb") as f:
                stored = f.read()
        with open(path, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        return {"content_sha256": content, "pcm_sha256": pcm, "audio": stored,
                "audio_format": "flac" if encoded else container, "sample_rate": rate, "channels": channels,
                "codec": found.codec, "original_sample_rate": found.sample_rate, "original_channels": found.channels,
                "original_bytes": size, **metrics}


def _printable(head: bytes) -> bool:
    try:
        head.decode("utf-8")
        return b"\0" not in head
    except UnicodeDecodeError:
        return False


EXCERPT_SECONDS = 8.0
EXCERPT_RATE = 16_000


def excerpt(data: bytes) -> tuple[str, bytes] | None:
    """The first seconds of a recording as a small Ogg Vorbis (mono, 16 kHz), for the
    report's player: a few kB where the FLAC would take a few hundred."""
    import soundfile as sf
    import soxr

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            samples = f.read(int(EXCERPT_SECONDS * f.samplerate), dtype="float32", always_2d=True)
            rate = f.samplerate
    except Exception:  # noqa: BLE001 - a preview is best effort
        return None
    if not len(samples):
        return None
    mono = soxr.resample(samples.mean(axis=1), rate, EXCERPT_RATE) if rate != EXCERPT_RATE else samples.mean(axis=1)
    buf = io.BytesIO()
    sf.write(buf, mono, EXCERPT_RATE, format="OGG", subtype="VORBIS")
    return "audio/ogg", buf.getvalue()


def waveform(data: bytes, width: int = 192, height: int = 64) -> bytes | None:
    """A PNG of a recording's waveform (min and max per column), for the report."""
    import soundfile as sf
    from PIL import Image, ImageDraw

    try:
        samples, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True, frames=48_000 * 60)
    except Exception:  # noqa: BLE001 - a preview is best effort
        return None
    mono = samples.mean(axis=1)
    if not len(mono):
        return None
    im = Image.new("RGB", (width, height), (245, 246, 250))
    draw = ImageDraw.Draw(im)
    for x, chunk in enumerate(np.array_split(mono, width)):
        if len(chunk):
            top, bottom = float(chunk.max()), float(chunk.min())
            draw.line([(x, (1 - top) * height / 2), (x, (1 - bottom) * height / 2)], fill=(74, 111, 209))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()

