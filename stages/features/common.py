"""What the feature stages share: device and precision choice, the actor-pool
parameters, L2-normalised float16 output columns, and the model record in `meta`."""
from __future__ import annotations

import json
import os
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Resources, RowParams, Stage


class ModelParams(RowParams):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when the worker sees a GPU")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto = bf16 on GPUs that support it, else fp16; fp32 on CPU")
    batch_size: int = Field(64, ge=1, description="rows per model call")
    concurrency: int = Field(1, ge=1, description="model replicas (actors) in the pool")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (fractional allowed: 0.5 = two per GPU); "
                                                   "0 = CPU")
    num_cpus: float = Field(0.5, ge=0, description="logical CPUs per replica and per CPU preparation task (half a "
                                                   "CPU by default: two model pools on a 2-CPU machine still leave "
                                                   "room for the CPU tasks that feed them)")


class ModelStage(Stage):
    """A row stage with a model: its resources come from its parameters."""

    def __init__(self, params=None, **overrides: Any):
        super().__init__(params, **overrides)
        p = self.params
        self.resources = Resources(num_cpus=p.num_cpus, num_gpus=p.num_gpus, concurrency=p.concurrency,
                                   batch_size=p.batch_size)

    def external_inputs(self) -> list[str]:
        """The model directory, when the model is one: new weights rerun the stage."""
        model = getattr(self.params, "model", "")
        return [model] if model and os.path.isdir(model) else []


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but this worker sees no GPU (set num_gpus so that Ray gives it one)")
    return device


def pick_dtype(precision: str, device: str):
    import torch

    if device == "cpu" or precision == "fp32":
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def unit_rows(x) -> np.ndarray:
    """Rows L2-normalised in float32, then stored as float16 (DESIGN.md: every embedding)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float16)


def embedding_column(vectors: np.ndarray) -> pa.Array:
    """(n, d) float16 as list<float16>, the type the shard writer turns into .npy."""
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), pa.float16()))


def random_weights_warning(kept) -> list[dict[str, Any]]:
    """A report section when the kept samples' features come from random weights."""
    import html

    if kept is None or "meta" not in kept.column_names:
        return []
    random = set()
    for m in kept.column("meta").to_pylist()[:1000]:
        for col, info in (json.loads(m) if m else {}).get("features", {}).items():
            if info.get("random_weights"):
                random.add(f"{col} ({info.get('model')})")
    if not random:
        return []
    names = ", ".join(sorted(random))
    return [{"title": "Random weights", "data": sorted(random), "warn": True,
             "html": "<div class='warn' id='random-weights'>These features come from models with <b>random "
                     f"weights</b>: {html.escape(names)}. Scores computed from them (such as the CLIP score and "
                     "any filter on it) are random and say nothing about the data.</div>"}]


def record_models(table: pa.Table, models: dict[str, dict[str, Any]]) -> pa.Table:
    """meta.features[column] = {model, sha256, random_weights} for every row."""
    old = table.column("meta").to_pylist() if "meta" in table.column_names else [None] * table.num_rows
    out = []
    for m in old:
        meta = json.loads(m) if m else {}
        meta.setdefault("features", {}).update(models)
        out.append(json.dumps(meta, sort_keys=True))
    return ledger.set_column(table, "meta", pa.array(out, pa.string()))
