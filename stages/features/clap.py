"""Stage `embed_clap`: CLAP audio and text embeddings, and their cosine.

Audio is mixed to mono and resampled to 48 kHz with soxr, then cut into windows of the
model's length (10 s); a shorter recording is one window (the feature extractor
repeats it to fill the window). A recording's embedding is the mean of its windows'
unit-norm embeddings, normalised again: every window counts the same, and a long
recording does not drift towards its loudest part. Past `max_windows`, windows are
taken evenly over the recording. Decoding, resampling and the log-mel features run as
CPU tasks ahead of the model's actor pool (prepare), as for embed_clip.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from pipeline import ledger
from pipeline.stage import Column

from .common import (
    ModelParams,
    ModelStage,
    embedding_column,
    pick_device,
    pick_dtype,
    random_weights_warning,
    record_models,
    unit_rows,
)
from .models import CLAP_RATE, CLAP_WINDOW, ModelError, check_clap, clap_features, load_clap

FEATURES = "__tmp_clap_features"  # float32 (windows, frames, mels) per row, as bytes
WINDOWS = "__tmp_clap_windows"


def window_starts(frames: int, size: int, limit: int) -> list[int]:
    """Where the windows of `size` frames begin: back to back, or `limit` of them taken
    evenly over a longer recording."""
    starts = list(range(0, max(1, frames), size))
    if len(starts) > limit:
        starts = [starts[int(i * (len(starts) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else starts[:1]
    return starts


def windows(samples: np.ndarray, rate: int, limit: int) -> list[np.ndarray]:
    """Mono 48 kHz windows of CLAP_WINDOW seconds (the last one as long as what is left)."""
    import soxr

    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if rate != CLAP_RATE:
        mono = soxr.resample(mono.astype(np.float32), rate, CLAP_RATE)
    size = int(CLAP_WINDOW * CLAP_RATE)
    return [mono[s:s + size].astype(np.float32) for s in window_starts(len(mono), size, limit)]


def read_windows(data: bytes, limit: int) -> list[np.ndarray]:
    """The windows of an encoded recording, each read by seeking (a long recording is never
    decoded whole: at most `limit` windows are), mixed to mono and resampled to 48 kHz."""
    import soundfile as sf
    import soxr

    with sf.SoundFile(io.BytesIO(data)) as f:
        size = int(CLAP_WINDOW * f.samplerate)
        out = []
        for start in window_starts(f.frames, size, limit):
            f.seek(start)
            block = f.read(size, dtype="float32", always_2d=True).mean(axis=1)
            out.append(soxr.resample(block, f.samplerate, CLAP_RATE).astype(np.float32) if f.samplerate != CLAP_RATE
                       else block)
    return out


def log_mel(extractor, windows_: list[np.ndarray]) -> np.ndarray:
    """(windows, frames, mels) float32 log-mel features; a short window is repeated to fill
    the model's length (no window is longer, so nothing is cropped at random)."""
    out = extractor(windows_, sampling_rate=CLAP_RATE, return_tensors="np", padding="repeatpad",
                    truncation="rand_trunc")
    return np.asarray(out["input_features"], np.float32)[:, 0]


class ClapEncoder:
    """CLAP towers on one device: log-mel windows or texts in, unit-norm float16 embeddings out."""

    def __init__(self, model: str = "tiny-random", device: str = "auto", precision: str = "auto"):
        import torch

        self.loaded = load_clap(model)
        self.device = torch.device(pick_device(device))
        self.dtype = pick_dtype(precision, self.device.type)
        self.model = self.loaded.model.to(self.device, self.dtype)

    @staticmethod
    def _features(out):
        return out if hasattr(out, "float") else out.pooler_output

    def encode_windows(self, features: np.ndarray) -> np.ndarray:
        """(n, frames, mels) float32 log-mel windows -> (n, d) float16, unit norm."""
        import torch

        if not len(features):
            return np.zeros((0, self.model.config.projection_dim), np.float16)
        with torch.inference_mode():
            x = torch.from_numpy(np.require(features, np.float32, ["C", "W"]))[:, None].to(self.device, self.dtype)
            longer = torch.zeros((len(features), 1), dtype=torch.bool, device=self.device)
            return unit_rows(self._features(self.model.get_audio_features(input_features=x, is_longer=longer))
                             .float().cpu().numpy())

    def encode_audio(self, recordings: list[list[np.ndarray]]) -> np.ndarray:
        """Each recording's windows (48 kHz mono) -> one unit-norm embedding per recording."""
        return self.pool([log_mel(self.loaded.features, w) for w in recordings])

    def pool(self, feats: list[np.ndarray]) -> np.ndarray:
        """The mean of each recording's unit-norm window embeddings, normalised again."""
        flat = self.encode_windows(np.concatenate(feats)) if feats else np.zeros((0, 1), np.float16)
        out, i = [], 0
        for f in feats:
            out.append(flat[i:i + len(f)].astype(np.float32).mean(axis=0))
            i += len(f)
        return unit_rows(np.stack(out)) if out else np.zeros((0, self.model.config.projection_dim), np.float16)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.model.config.projection_dim), np.float16)
        ids, mask = self.loaded.tokenize(texts)
        with torch.inference_mode():
            f = self._features(self.model.get_text_features(input_ids=ids.to(self.device),
                                                            attention_mask=mask.to(self.device)))
            return unit_rows(f.float().cpu().numpy())


class EmbedClapParams(ModelParams):
    model: str = Field("tiny-random", description="a local Hugging Face CLAP directory, or tiny-random (seeded random "
                                                  "weights, for tests and the offline demo)")
    audio_column: str = Field("audio", description="audio column")
    text_column: str = Field("text", description="text to embed beside the audio; '' = audio only")
    max_windows: int = Field(60, ge=1, le=10_000, description="10 s windows embedded per recording at most (taken "
                                                              "evenly over a longer one)")
    batch_size: int = Field(16, ge=1, description="rows per model call")

    @field_validator("model")
    @classmethod
    def _usable(cls, v: str) -> str:
        try:
            return check_clap(v)
        except ModelError as e:
            raise ValueError(str(e)) from None


class EmbedClap(ModelStage):
    """clap_audio_emb, clap_text_emb (unit norm, float16) and clap_score (their cosine)."""

    name = "embed_clap"
    Params = EmbedClapParams

    def reads(self) -> list[str]:
        p = self.params
        return [p.audio_column] + ([p.text_column] if p.text_column else [])

    def adds(self) -> list[Column]:
        out = [Column("clap_audio_emb", "embedding")]
        if self.params.text_column:
            out += [Column("clap_text_emb", "embedding"), Column("clap_score", "metric", label="CLAP score")]
        return out

    def report_sections(self, run_root: str, kept) -> list[dict]:
        return random_weights_warning(kept)

    def setup(self) -> None:
        p = self.params
        self.encoder = ClapEncoder(p.model, p.device, p.precision)

    def prepare(self, batch: pa.Table) -> pa.Table:
        extractor = clap_features(self.params.model)
        feats, counts, rejects = [], [], []
        for data in batch.column(self.params.audio_column).to_pylist():
            if data is None:  # no sound (a silent video's clip): kept, without an embedding
                feats.append(None)
                counts.append(0)
                rejects.append(None)
                continue
            try:
                w = read_windows(data, self.params.max_windows)
                feats.append(log_mel(extractor, w).tobytes())
                counts.append(len(w))
                rejects.append(None)
            except Exception as e:  # noqa: BLE001 - this row's problem only
                feats.append(None)
                counts.append(0)
                rejects.append(ledger.reject("undecodable_audio", f"embed_clap: {type(e).__name__}: {str(e)[:200]}"))
        batch = ledger.set_column(batch, FEATURES, pa.array(feats, pa.large_binary()))
        batch = ledger.set_column(batch, WINDOWS, pa.array(counts, pa.int32()))
        return ledger.with_rejects(batch, rejects) if any(rejects) else batch

    def process(self, batch: pa.Table) -> pa.Table:
        if FEATURES not in batch.column_names:  # called without the runner: prepare here
            batch = self.prepare(batch)
            live, dead = ledger.split_live(batch)
            if dead.num_rows:
                return pa.concat_tables([self.process(live), dead], promote_options="permissive")
        enc = self.encoder
        mels = enc.loaded.features.feature_size
        raw = batch.column(FEATURES).to_pylist()
        present = [i for i, r in enumerate(raw) if r is not None]
        windows = batch.column(WINDOWS).to_pylist()
        feats = [np.frombuffer(raw[i], np.float32).reshape(windows[i], -1, mels) for i in present]
        audio_emb = enc.pool(feats)
        out = batch.drop_columns([FEATURES, WINDOWS])
        column = embedding_column(audio_emb)
        if len(present) < batch.num_rows:  # rows without sound get no embedding (and no score)
            slot = dict(zip(present, column.to_pylist()))
            column = pa.array([slot.get(i) for i in range(batch.num_rows)], pa.list_(pa.float16()))
        out = ledger.set_column(out, "clap_audio_emb", column)
        models: dict[str, Any] = {"clap_audio_emb": enc.loaded.describe()}
        if self.params.text_column:
            text = enc.encode_texts(batch.column(self.params.text_column).to_pylist())
            score = np.full(batch.num_rows, np.nan, np.float32)
            score[present] = np.sum(audio_emb.astype(np.float32) * text[present].astype(np.float32), axis=1)
            out = ledger.set_column(out, "clap_text_emb", embedding_column(text))
            out = ledger.set_column(out, "clap_score", pa.array(score, pa.float32(), mask=np.isnan(score)))
            models["clap_text_emb"] = models["clap_score"] = enc.loaded.describe()
        return record_models(out, models)
