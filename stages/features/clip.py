"""Stage `embed_clip`: CLIP image and text embeddings and their cosine, `clip_score`.

Two halves, so that a GPU never waits on JPEG decoding:
- `prepare` (CPU, Ray tasks): decode, resize the shorter side to the model's input
  size (bicubic) and centre-crop, into raw uint8 RGB in a temporary `__tmp_clip_pixels`
  column (dropped before anything is written);
- `ClipEncoder` (the model, an actor per replica): uint8 to the device (pinned memory
  and a non-blocking copy on GPU), scaling and CLIP's normalisation there, then the
  towers in fp16/bf16 on GPU (fp32 on CPU), L2-normalised, stored as float16.

Video: with `frames_column` set (measure_video's `keyframe_count`), the image column is
a strip of that many frames side by side (`keyframes`); each frame is embedded and the
unit frame embeddings are averaged and renormalised into `clip_video_emb`, and
`clip_score` is the cosine of that with the caption's.

ClipEncoder is a plain class: `ClipEncoder("tiny-random").encode_images(pixels)`
works without Ray (bench/bench_clip.py runs it so on a GPU machine).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import Field, field_validator

from pipeline import ledger
from pipeline.stage import Column
from stages.ingest.image import open_image

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
from .models import ModelError, check_clip, image_size_of, load_clip

PIXELS = "__tmp_clip_pixels"


def clip_pixels(data: bytes | np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 of image bytes or an RGB array (a video frame): shorter side
    resized to size (bicubic), centre crop."""
    im = Image.fromarray(data) if isinstance(data, np.ndarray) else open_image(data, "RGB", least=size)
    w, h = im.size
    scale = size / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = (rw - size) // 2, (rh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


class ClipEncoder:
    """CLIP towers on one device: load once, then batches of uint8 pixels or texts in,
    unit-norm float16 embeddings out."""

    def __init__(self, model: str = "tiny-random", device: str = "auto", precision: str = "auto"):
        import torch

        self.loaded = load_clip(model)
        self.device = torch.device(pick_device(device))
        self.dtype = pick_dtype(precision, self.device.type)
        self.model = self.loaded.model.to(self.device, self.dtype)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(self.loaded.mean, device=self.device, dtype=self.dtype).view(shape)
        self.std = torch.tensor(self.loaded.std, device=self.device, dtype=self.dtype).view(shape)
        self.image_size = self.loaded.image_size

    def _to_device(self, array: np.ndarray):
        import torch

        t = torch.from_numpy(np.require(array, requirements=["C", "W"]))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)  # the copy overlaps with the model
        return t

    @staticmethod
    def _features(out):
        # transformers < 5 returns the projected tensor, later releases an output object
        return out if hasattr(out, "float") else out.pooler_output

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: (n, size, size, 3) uint8 -> (n, d) float16, unit norm."""
        import torch

        if len(pixels) == 0:
            return np.zeros((0, self.model.config.projection_dim), np.float16)
        with torch.inference_mode():
            x = self._to_device(pixels).permute(0, 3, 1, 2).to(self.dtype).div_(255)
            x = (x - self.mean) / self.std
            f = self._features(self.model.get_image_features(pixel_values=x))
            return unit_rows(f.float().cpu().numpy())

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.model.config.projection_dim), np.float16)
        ids, mask = self.loaded.tokenize(texts)
        with torch.inference_mode():
            f = self._features(self.model.get_text_features(input_ids=self._to_device(ids.numpy()),
                                                            attention_mask=self._to_device(mask.numpy())))
            return unit_rows(f.float().cpu().numpy())


class EmbedClipParams(ModelParams):
    model: str = Field("tiny-random", description="a local Hugging Face CLIP directory, or tiny-random (seeded random "
                                                  "weights, for tests and the offline demo)")
    image_column: str = Field("image", description="image column")
    text_column: str = Field("caption", description="text to embed beside the image; '' = images only")
    frames_column: str = Field("", description="video: the column with how many frames each image (a keyframe "
                                               "strip) holds; their embeddings are pooled into clip_video_emb")

    @field_validator("model")
    @classmethod
    def _usable(cls, v: str) -> str:
        try:
            return check_clip(v)
        except ModelError as e:
            raise ValueError(str(e)) from None


class EmbedClip(ModelStage):
    """clip_image_emb, clip_text_emb (unit norm, float16) and clip_score (their cosine)."""

    name = "embed_clip"
    Params = EmbedClipParams

    def reads(self) -> list[str]:
        p = self.params
        return [p.image_column] + ([p.text_column] if p.text_column else []) + \
            ([p.frames_column] if p.frames_column else [])

    @property
    def image_output(self) -> str:
        return "clip_video_emb" if self.params.frames_column else "clip_image_emb"

    def adds(self) -> list[Column]:
        out = [Column(self.image_output, "embedding")]
        if self.params.text_column:
            out += [Column("clip_text_emb", "embedding"), Column("clip_score", "metric", label="CLIP score")]
        return out

    def report_sections(self, run_root: str, kept) -> list[dict]:
        return random_weights_warning(kept)

    def setup(self) -> None:
        p = self.params
        self.encoder = ClipEncoder(p.model, p.device, p.precision)

    def prepare(self, batch: pa.Table) -> pa.Table:
        p = self.params
        size = image_size_of(p.model)
        counts = batch.column(p.frames_column).to_pylist() if p.frames_column else [None] * batch.num_rows
        pixels, rejects = [], []
        for data, count in zip(batch.column(p.image_column).to_pylist(), counts):
            try:
                if p.frames_column:
                    from .video import split_strip

                    frames = [clip_pixels(f, size) for f in split_strip(data, int(count or 1))]
                    pixels.append(b"".join(f.tobytes() for f in frames))
                else:
                    pixels.append(clip_pixels(data, size).tobytes())
                rejects.append(None)
            except Exception as e:  # noqa: BLE001 - any undecodable image is this row's problem only
                pixels.append(None)
                rejects.append(ledger.reject("undecodable_image", f"embed_clip: {type(e).__name__}: {e}"))
        batch = ledger.set_column(batch, PIXELS, pa.array(pixels, pa.binary()))
        return ledger.with_rejects(batch, rejects) if any(rejects) else batch

    def process(self, batch: pa.Table) -> pa.Table:
        if PIXELS not in batch.column_names:  # called without the runner: prepare here
            batch = self.prepare(batch)
            live, dead = ledger.split_live(batch)
            if dead.num_rows:
                return pa.concat_tables([self.process(live), dead], promote_options="permissive")
        enc = self.encoder
        size = enc.image_size
        raw = batch.column(PIXELS).to_pylist()
        frame = size * size * 3
        counts = [len(r) // frame for r in raw]
        pixels = np.frombuffer(b"".join(raw), np.uint8).reshape(sum(counts), size, size, 3)
        image = enc.encode_images(pixels)
        if self.params.frames_column:  # mean of each clip's unit frame embeddings, renormalised
            ends = np.cumsum(counts)
            image = unit_rows(np.stack([image[e - n:e].astype(np.float32).mean(axis=0) for n, e in zip(counts, ends)])
                              if len(counts) else image.astype(np.float32))
        out = batch.drop_columns([PIXELS])
        out = ledger.set_column(out, self.image_output, embedding_column(image))
        models: dict[str, Any] = {self.image_output: enc.loaded.describe()}
        if self.params.text_column:
            text = enc.encode_texts(batch.column(self.params.text_column).to_pylist())
            score = np.sum(image.astype(np.float32) * text.astype(np.float32), axis=1)
            out = ledger.set_column(out, "clip_text_emb", embedding_column(text))
            out = ledger.set_column(out, "clip_score", pa.array(score, pa.float32()))
            models["clip_text_emb"] = models["clip_score"] = enc.loaded.describe()
        return record_models(out, models)
