"""Stage `dedup_exact`: one sample kept per identical content, caption, or both.

Rows are hash-partitioned by their key on Ray tasks (pipeline.shuffle), so that
all copies of a key meet in one task and no process holds the whole dataset.
In each group the keep rule picks one; the others are rejected as `duplicate`
with `duplicate_of` (the kept sample) and `cluster_id`; the kept sample carries
the same `cluster_id`.
"""
from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import AfterValidator, Field

from pipeline import ledger
from pipeline.shuffle import hash_partition, partition_of
from pipeline.stage import Params, Resources, Stage

_SPACES = re.compile(r"\s+")
ROWS_PER_PARTITION = 200_000  # a partition is one task's memory: about this many rows


def text_key(text: str | None) -> str | None:
    """Exact text duplicates modulo case, Unicode form and whitespace."""
    if text is None:
        return None
    norm = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.sha256(norm.encode()).hexdigest()


def _keep_rule(v: str) -> str:
    if v not in ("first", "largest") and not (v.startswith("max:") and len(v) > 4):
        raise ValueError("keep must be 'first', 'largest' or 'max:<column>'")
    return v


KeepRule = Annotated[str, AfterValidator(_keep_rule)]  # which copy survives; every dedup stage takes it


class DedupExactParams(Params):
    key: Literal["content", "text", "both"] = Field(
        "content", description="content = content_sha256 of the original bytes; text = normalised `field`; "
                               "both = a duplicate only when both match")
    field: str = Field("caption", description="text column for key=text or both")
    keep: KeepRule = Field("first", description="which copy survives: first (lowest ordinal), largest "
                                                "(original_bytes, else text length), or max:<column>")


class DedupExact(Stage):
    name = "dedup_exact"
    kind = "global"
    Params = DedupExactParams
    resources = Resources(num_cpus=1)

    def keys(self, table: pa.Table) -> list[str | None]:
        p = self.params
        content = table.column("content_sha256").to_pylist() if p.key in ("content", "both") else None
        text = [text_key(t) for t in table.column(p.field).to_pylist()] if p.key in ("text", "both") else None
        if p.key == "content":
            return content
        if p.key == "text":
            return text
        return [None if c is None or t is None else f"{c}:{t}" for c, t in zip(content, text)]

    def run_global(self, ds, ctx) -> list[dict[str, Any]]:
        n = max(1, math.ceil(ctx.upstream_kept / ROWS_PER_PARTITION), math.ceil(ctx.upstream_bytes / (256 << 20)))
        stage = self

        def assign(table: pa.Table):
            return partition_of(pa.array(stage.keys(table), pa.string()), n)

        def reduce(_: int, table: pa.Table) -> dict[str, Any]:
            return ctx.writer(stage.mark(table)).to_pylist()[0]

        return hash_partition(ctx.parts, n, assign, reduce)

    def mark(self, table: pa.Table) -> pa.Table:
        """Reject every copy but the keeper of each key; give clusters their cluster_id."""
        keys = self.keys(table)
        rank = self._rank(table)
        keeper: dict[str, int] = {}
        size: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k is None:
                continue
            size[k] = size.get(k, 0) + 1
            if k not in keeper or rank[i] < rank[keeper[k]]:
                keeper[k] = i
        ids = table.column("sample_id").to_pylist()
        rejects, clusters = [], []
        for i, k in enumerate(keys):
            in_cluster = k is not None and size[k] > 1
            cluster = f"x{k[:16]}" if in_cluster else None
            clusters.append(cluster)
            if in_cluster and keeper[k] != i:
                rejects.append(ledger.reject("duplicate", f"same {self.params.key} as {ids[keeper[k]]}",
                                             duplicate_of=ids[keeper[k]], cluster_id=cluster))
            else:
                rejects.append(None)
        table = ledger.set_column(table, "cluster_id", pa.array(clusters, pa.string()))
        return ledger.stamp_stage(ledger.with_rejects(table, rejects), self.name)

    def _rank(self, table: pa.Table) -> list[tuple]:
        """Sort key per row: the smallest survives; ordinal breaks ties (first in source order)."""
        rule = self.params.keep
        ordinal = table.column("ordinal").to_pylist()
        if rule == "first":
            return [(o,) for o in ordinal]
        if rule == "largest":
            if "original_bytes" in table.column_names:
                sizes = table.column("original_bytes").to_pylist()
            else:
                sizes = [len(t or "") for t in table.column(self.params.field).to_pylist()]
            return [(-(s or 0), o) for s, o in zip(sizes, ordinal)]
        column = rule[4:]
        if column not in table.column_names:
            raise ValueError(f"keep={rule!r}: there is no column {column!r}")
        values = table.column(column).to_pylist()
        # None ranks last; larger values first.
        return [((v is None), -(v or 0), o) for v, o in zip(values, ordinal)]
