"""Stage `filter_clip_score`: image-text alignment by CLIP score (from embed_clip).

Two modes, one of them per run:
- `threshold`: keep cosine >= threshold. LAION-400M/5B used 0.28 with ViT-B/32
  (Schuhmann et al. 2021/2022); the number belongs to that model.
- `fraction`: keep the top fraction of the whole dataset. DataComp's best CLIP-score
  baseline keeps the top 30% (Gadre et al. 2023). The cut is exact and global
  (pipeline.select: radix selection over all parts, ties broken by a hash of
  sample_id), so it is the same whatever the block size or number of workers.
With `fraction`, the cut is also stated as a score (`decision`: the lowest kept score as
`threshold`): a refresh applies it to the next releases, so that the samples published
under the first release's cut are judged by the same cut later, not by a top fraction of
each release's new ones. Rows without a score are rejected as `no_clip_score`. With random-weight features
(tiny-random) the scores mean nothing, and the report says so.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from pipeline import ledger
from pipeline.select import at_most, descending_digits, id_digits, kth_smallest
from pipeline.shuffle import map_tables
from pipeline.stage import Params, Resources, Stage
from pipeline.watchdog import gather


class FilterClipScoreParams(Params):
    column: str = Field("clip_score", description="score column")
    threshold: float | None = Field(None, ge=-1, le=1, description="keep score >= threshold (LAION: 0.28, B/32)")
    fraction: float | None = Field(None, gt=0, le=1, description="keep this top fraction of the dataset "
                                                                "(DataComp: 0.3)")

    @model_validator(mode="after")
    def _one_mode(self):
        if (self.threshold is None) == (self.fraction is None):
            raise ValueError("set exactly one of threshold (e.g. 0.28) or fraction (e.g. 0.3)")
        return self


class FilterClipScore(Stage):
    """Keeps samples whose score reaches a threshold, or the exact top fraction of the whole dataset."""

    name = "filter_clip_score"
    kind = "global"
    Params = FilterClipScoreParams
    resources = Resources(num_cpus=1)

    reason_hints = {"low_clip_score": "threshold, or fraction", "no_clip_score": "put embed_clip before it"}

    def reads(self) -> list[str]:
        return [self.params.column]

    def keys(self, table: pa.Table) -> np.ndarray:
        """Score digits then id digits, for the rows that have a score."""
        scores = _scores(table, self.params.column)
        has = ~np.isnan(scores)
        ids = [i for i, ok in zip(table.column("sample_id").to_pylist(), has) if ok]
        values = scores[has]
        return np.concatenate([descending_digits(values), id_digits(ids)], axis=1) if ids else \
            np.zeros((0, 6), np.uint16)

    def cutoff(self, parts: list, total: int) -> tuple[int, ...] | None:
        return kth_smallest(parts, self.keys, math.ceil(self.params.fraction * total), digits=6,
                            columns=["sample_id", self.params.column])

    def mark(self, table: pa.Table, cutoff: tuple[int, ...] | None) -> pa.Table:
        p = self.params
        scores = [None if np.isnan(v) else float(v) for v in _scores(table, p.column)]  # NaN counts as no score
        if p.threshold is not None:
            keep = [s is not None and s >= p.threshold for s in scores]
            why = f"below threshold {p.threshold}"
        else:
            inside = iter(at_most(self.keys(table), cutoff))
            keep = [s is not None and bool(next(inside)) for s in scores]
            why = f"outside the top {p.fraction:.0%} of the dataset"
        rejects = [None if k else ledger.reject("no_clip_score", "no clip_score: run embed_clip first")
                   if s is None else ledger.reject("low_clip_score", f"clip_score {s:.4f} {why}")
                   for k, s in zip(keep, scores)]
        return ledger.stamp_stage(ledger.with_rejects(table, rejects), self.name)

    def run_global(self, ds, ctx) -> list[dict[str, Any]]:
        cutoff = None
        if self.params.fraction is not None:
            total = sum(gather([_count_valid.remote(part, self.params.column) for part in ctx.parts]))
            cutoff = self.cutoff(ctx.parts, total)
            ctx.phase(f"keeping the top {self.params.fraction:.0%} of {total} scored rows")
        stage, writer = self, ctx.writer

        def mark_and_write(table: pa.Table) -> pa.Table:
            marked = stage.mark(table, cutoff)
            kept = _scores(marked.filter(pc.is_null(marked.column("reject"))), stage.params.column)
            kept = kept[~np.isnan(kept)]
            return ledger.set_column(writer(marked), "lowest_kept", pa.array([float(kept.min()) if kept.size else None],
                                                                            pa.float64()))

        stats = [t.to_pylist()[0] for t in gather(map_tables(ctx.parts, mark_and_write))]
        lowest = [s.pop("lowest_kept") for s in stats]
        lowest = [v for v in lowest if v is not None]
        if cutoff is not None and lowest:  # the cut as a score: what a later release of the dataset applies
            self.decision = {"threshold": min(lowest), "fraction": None}
        return stats


def _remote(fn):
    import ray

    return ray.remote(fn)


def _scores(table: pa.Table, column: str) -> np.ndarray:
    """float32 scores, NaN where there is none (null or NaN)."""
    return np.asarray(pc.fill_null(pc.cast(table.column(column), pa.float32()), float("nan")).to_numpy(),
                      dtype=np.float32)


@_remote
def _count_valid(part: str, column: str) -> int:
    import pyarrow.parquet as pq

    from pipeline import fs

    filesystem, path = fs.resolve(part)
    return int((~np.isnan(_scores(pq.read_table(path, filesystem=filesystem, columns=[column]), column))).sum())
