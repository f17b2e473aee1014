"""Stage `cleanlab_issues`: outliers, near-duplicates and label issues by cleanlab's Datalab.

Datalab runs in one process over the features it is given (k-nearest neighbours on
the embeddings). So the stage cuts the dataset into partitions by a hash of
sample_id, at most `max_rows` rows each (default 50,000: Datalab's neighbour search
and its tables stay within a few GB per task), and runs one Datalab per partition as
a Ray task. How the results combine: partitions are uniform random samples of the
same data, so outlier and label scores mean the same in each; near-duplicates are
found only within a partition (pairs across partitions are the dedup stages' job);
each row's result depends only on its partition, which depends only on its
sample_id and the row count, never on block layout.

Per row it writes `cl_<issue>_score` (cleanlab's quality score, low = likely an
issue) and `cl_is_<issue>`; `outlier`, `near_duplicate` and `label` each choose
`drop` (reject with reason `cleanlab_<issue>`), `flag` (keep, columns only) or `off`.
Dropping near-duplicates keeps one member of each set (the first in the partition).
Label issues need a `label_column`.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.shuffle import PART, apply_by_part, hash_partition, partition_of
from pipeline.stage import Column, Params, Resources, Stage

Action = Literal["drop", "flag", "off"]
ISSUES = {"outlier": "outlier", "near_duplicate": "near_duplicate", "label": "label"}
MIN_ROWS = 20  # fewer rows than this in a partition: too few neighbours to judge


class CleanlabIssuesParams(Params):
    features: str = Field("clip_image_emb", description="embedding column Datalab compares")
    label_column: str = Field("", description="class label column, for label issues ('' = none)")
    outlier: Action = Field("flag", description="outliers: drop, flag or off")
    near_duplicate: Action = Field("flag", description="near-duplicates: drop, flag or off")
    label: Action = Field("flag", description="label issues (needs label_column): drop, flag or off")
    max_rows: int = Field(50_000, ge=MIN_ROWS, description="rows per Datalab partition at most")


class CleanlabIssues(Stage):
    """Flags or drops outliers, near-duplicates and label issues found by cleanlab's Datalab on an embedding."""

    name = "cleanlab_issues"
    kind = "global"
    Params = CleanlabIssuesParams
    resources = Resources(num_cpus=1)

    def wanted(self) -> list[str]:
        p = self.params
        out = [i for i in ("outlier", "near_duplicate") if getattr(p, i) != "off"]
        if p.label != "off" and p.label_column:
            out.append("label")
        return out

    def find(self, table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{issue: (is_issue, score)} for one partition, by Datalab."""
        from cleanlab import Datalab

        p = self.params
        wanted = self.wanted()
        if table.num_rows < MIN_ROWS or not wanted:
            return {}
        features = np.stack(table.column(p.features).to_numpy(zero_copy_only=False)).astype(np.float32)
        data: dict[str, Any] = {}
        if "label" in wanted:
            names = table.column(p.label_column).to_pylist()
            classes = {c: i for i, c in enumerate(sorted({str(n) for n in names}))}
            data = {"label": np.array([classes[str(n)] for n in names])}
        lab = Datalab(data=data or {"_": np.zeros(table.num_rows)}, label_name="label" if data else None,
                      verbosity=0)
        lab.find_issues(features=features, issue_types={i: {} for i in wanted})
        issues = lab.get_issues()
        found = {i: (issues[f"is_{i}_issue"].to_numpy(bool), issues[f"{i}_score"].to_numpy(np.float32))
                 for i in wanted if f"is_{i}_issue" in issues}
        if "near_duplicate" in found:
            # Datalab flags every member of a set of near-copies; one of each set is kept:
            # a member goes only when a copy before it in the partition exists.
            sets = lab.get_issues("near_duplicate")["near_duplicate_sets"].tolist()
            flags, scores = found["near_duplicate"]
            found["near_duplicate_extra"] = (np.array([bool(f) and any(j < i for j in s) for i, (f, s) in
                                                       enumerate(zip(flags, sets))], bool), scores)
        return found

    def mark(self, table: pa.Table) -> pa.Table:
        found = self.find(table)
        rejects: list[dict | None] = [None] * table.num_rows
        for issue, (flags, scores) in found.items():
            if issue == "near_duplicate_extra":
                continue
            table = ledger.set_column(table, f"cl_{issue}_score", pa.array(scores, pa.float32()))
            table = ledger.set_column(table, f"cl_is_{issue}", pa.array(flags, pa.bool_()))
            if getattr(self.params, issue) == "drop":
                drop = found["near_duplicate_extra"][0] if issue == "near_duplicate" else flags
                for i in np.flatnonzero(drop):
                    if rejects[i] is None:
                        rejects[i] = ledger.reject(f"cleanlab_{issue}", f"cleanlab Datalab: {issue} issue "
                                                   f"(score {scores[i]:.3f})")
        return ledger.stamp_stage(ledger.with_rejects(table, rejects), self.name)

    def reads(self) -> list[str]:
        p = self.params
        return [p.features] + ([p.label_column] if p.label_column else [])

    def adds(self):
        return [Column(f"cl_{i}_score", "metric", label=f"cleanlab {i.replace('_', ' ')} score")
                for i in ("outlier", "near_duplicate", "label")] + \
            [Column(f"cl_is_{i}") for i in ("outlier", "near_duplicate", "label")]

    def run_global(self, ds, ctx) -> list[dict[str, Any]]:
        n = max(1, math.ceil(ctx.upstream_kept / self.params.max_rows))
        ctx.phase(f"{', '.join(self.wanted()) or 'nothing'} by Datalab in {n} partition(s) "
                f"of <= {self.params.max_rows} rows")
        stage = self

        def decide(_: int, t: pa.Table) -> pa.Table:
            marked = stage.mark(t)
            return marked.select(["sample_id", PART, "reject"] + [c for c in marked.column_names
                                                                   if c.startswith("cl_")])

        decided = hash_partition(ctx.parts, n, lambda t: partition_of(t.column("sample_id"), n), decide,
                                 fetch=False, columns=["sample_id", *self.reads()], tag_first=len(ctx.parts))
        return apply_by_part(ctx.parts, decided, ctx.writer)
