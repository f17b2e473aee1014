"""Stage `dedup_exact`: one sample kept per identical content, decoded samples, text, or both.

Only the columns the decision needs (ids, the key's columns, the keep rule's) are
hash-partitioned by key on Ray tasks (pipeline.shuffle), so that all copies of a
key meet in one task and no process holds the whole dataset; the decisions then go
back to the parts they came from. In each group the keep rule picks one; the others
are rejected as `duplicate` with `duplicate_of` (the kept sample) and `cluster_id`;
the kept sample carries the same `cluster_id`. The survivors' keys are kept under
`<output>/index/dedup_exact/`; a later run given that index (`against`) removes
copies of them.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline import fs, ledger
from pipeline.shuffle import PART, apply_by_part, hash_partition, partition_of
from pipeline.stage import Resources, Stage

from .keep import EARLIER, DedupParams, labels, rank_columns

_SPACES = re.compile(r"\s+")
ROWS_PER_PARTITION = 200_000  # a partition is one task's memory: about this many rows


def text_key(text: str | None) -> str | None:
    """Exact text duplicates modulo case, Unicode form and whitespace."""
    if text is None:
        return None
    norm = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.sha256(norm.encode()).hexdigest()


class DedupExactParams(DedupParams):
    key: Literal["content", "pcm", "text", "both"] = Field(
        "content", description="content = content_sha256 of the original bytes; pcm = pcm_sha256 of decoded audio "
                               "(a re-muxed or re-tagged copy has the same; identical bytes decode the same); text = "
                               "normalised `text_column`; both = a duplicate only when content and text match")
    text_column: str = Field("caption", description="text column for key=text or both")


class DedupExact(Stage):
    """Keeps one sample per identical content (original bytes), decoded audio, normalised text, or both."""

    name = "dedup_exact"
    kind = "global"
    Params = DedupExactParams
    resources = Resources(num_cpus=1)

    def reads(self) -> list[str]:
        p = self.params
        key = {"content": ["content_sha256"], "pcm": ["pcm_sha256"], "text": [p.text_column]}.get(
            p.key, ["content_sha256", p.text_column])
        return key + ([p.keep[4:]] if p.keep.startswith("max:") else [])

    def adds(self):
        from pipeline.stage import Column

        return [Column("cluster_id")]

    def external_inputs(self) -> list[str]:
        return list(self.params.against)

    def keys(self, table: pa.Table) -> list[str | None]:
        p = self.params
        n = table.num_rows
        given = table.column("_key").to_pylist() if "_key" in table.column_names else [None] * n
        if PART in table.column_names:  # only an index's rows (no part) bring their key
            given = [g if p is None else None for g, p in zip(given, table.column(PART).to_pylist())]

        def col(name: str) -> list:
            return table.column(name).to_pylist() if name in table.column_names else [None] * n

        content = col("content_sha256") if p.key in ("content", "both") else None
        text = [text_key(t) for t in col(p.text_column)] if p.key in ("text", "both") else None
        if p.key == "pcm":
            return [g if g is not None else m for g, m in zip(given, col("pcm_sha256"))]
        made = content if p.key == "content" else text if p.key == "text" else \
            [None if c is None or t is None else f"{c}:{t}" for c, t in zip(content, text)]
        return [g if g is not None else m for g, m in zip(given, made)]

    def size_of(self, table: pa.Table) -> list:
        if "original_bytes" in table.column_names:
            return table.column("original_bytes").to_pylist()
        return [len(t or "") for t in table.column(self.params.text_column).to_pylist()]

    def _index_parts(self) -> list[str]:
        parts = []
        for index in self.params.against:
            try:
                made = json.loads(fs.read_bytes(fs.join(index, "index.json")))
            except FileNotFoundError:
                raise ValueError(f"{index}: no index.json: not a {self.name} index") from None
            if made.get("stage") != self.name or made.get("key") != self.params.key:
                raise ValueError(f"{index} was built by {made.get('stage')} with key={made.get('key')}; this stage "
                                 f"has key={self.params.key}: they must match")
            parts += [fs.join(index, i.path.rsplit("/", 1)[1]) for i in fs.list_files(index)
                      if i.path.endswith(".parquet")]
        return parts

    def run_global(self, ds, ctx) -> list[dict[str, Any]]:
        p = self.params
        n = max(1, math.ceil(ctx.upstream_kept / ROWS_PER_PARTITION))
        index_parts = self._index_parts()
        index_tmp = ctx.run.tmp_dir("index", self.name) if p.write_index else None
        columns = list(dict.fromkeys([*rank_columns(p.keep, ["original_bytes", p.text_column]), *self.reads()]))
        ctx.phase(f"key={p.key}; shuffling {columns}"
                + (f"; against {len(index_parts)} index parts" if index_parts else ""))
        stage = self

        def assign(table: pa.Table) -> np.ndarray:
            return partition_of(pa.array(stage.keys(table), pa.string()), n)

        gone = pa.array(sorted(set(p.superseded)), pa.string())

        def decide(part: int, table: pa.Table) -> pa.Table:
            if len(gone):  # an index's entries of changed inputs no longer count
                table = table.filter(pc.invert(pc.and_(pc.is_null(table.column(PART)),
                                                       pc.is_in(table.column("sample_id"), gone))))
            table = stage.mark(table)
            if index_tmp:  # the survivors' keys, for later runs to be checked against
                survivors = table.filter(pc.and_(pc.is_null(table.column("reject")), pc.is_valid(table.column(PART))))
                keys = [k for k in stage.keys(survivors)]
                found = pa.table({"_key": pa.array(keys, pa.string()), "sample_id": survivors.column("sample_id")})
                found = found.filter(pc.is_valid(found.column("_key")))
                if found.num_rows:
                    fs.write_parquet(fs.join(index_tmp, f"part-{part:06d}.parquet"), found)
            new = table.filter(pc.is_valid(table.column(PART)))  # the index's own rows decide nothing here
            return new.select(["sample_id", PART, "reject", "cluster_id"])

        decided = hash_partition(list(ctx.parts) + index_parts, n, assign, decide, fetch=False,
                                 columns=columns + ["_key"], tag_first=len(ctx.parts))
        stats = apply_by_part(ctx.parts, decided, ctx.writer)
        if index_tmp:
            fs.makedirs(index_tmp)
            fs.write_bytes(fs.join(index_tmp, "index.json"), json.dumps({"stage": self.name, "key": p.key}).encode())
            fs.replace_dir(index_tmp, fs.join(ctx.run.root, "index", self.params.index_name or self.name))
        return stats

    def mark(self, table: pa.Table) -> pa.Table:
        """Reject every copy but the keeper of each key; give clusters their cluster_id.
        Rows of an earlier run's index (no PART) always keep: their copies go."""
        earlier = [False] * table.num_rows if PART not in table.column_names else \
            pc.is_null(table.column(PART)).to_pylist()
        ids = table.column("sample_id").to_pylist()
        if any(earlier):  # a sample that is in the index already (a rerun against its own index) is itself
            new_ids = {sid for sid, e in zip(ids, earlier) if not e}
            same = [not (e and sid in new_ids) for sid, e in zip(ids, earlier)]
            if not all(same):
                table = table.filter(pa.array(same))
                earlier = [e for e, keep in zip(earlier, same) if keep]
                ids = table.column("sample_id").to_pylist()
        keys = self.keys(table)
        new = [i for i, e in enumerate(earlier) if not e]
        new_labels = iter(labels(table.take(new), self.params.keep, self.size_of) if new else [])
        rank = [f"{EARLIER}|{sid}" if e else next(new_labels) for e, sid in zip(earlier, ids)]
        keeper: dict[str, int] = {}
        size: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k is None:
                continue
            size[k] = size.get(k, 0) + 1
            if k not in keeper or rank[i] < rank[keeper[k]]:
                keeper[k] = i
        rejects, clusters = [], []
        for i, k in enumerate(keys):
            in_cluster = k is not None and size[k] > 1
            cluster = f"x{k[:16]}" if in_cluster else None
            clusters.append(cluster)
            if in_cluster and keeper[k] != i:
                first = keeper[k]
                reason = self.params.against_reason if earlier[first] else "duplicate"
                where = " in an earlier index" if earlier[first] else ""
                rejects.append(ledger.reject(reason, f"same {self.params.key} as {ids[first]}{where}",
                                             duplicate_of=ids[first], cluster_id=cluster))
            else:
                rejects.append(None)
        table = ledger.set_column(table, "cluster_id", pa.array(clusters, pa.string()))
        return ledger.stamp_stage(ledger.with_rejects(table, rejects), self.name)
