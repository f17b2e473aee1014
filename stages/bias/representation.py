"""Who the captions talk about: `audit_representation` counts, `rebalance` acts.

Both read the lexicon (stages/bias/lexicon.yaml, or `lexicon: PATH`): category ->
group -> terms, matched as whole words or phrases in the lower-cased caption.

audit_representation adds a `mentions` column ("category:group" per group a caption
mentions), counts captions per group over the whole dataset (per-part counts added
up on the driver: a few numbers per group, never the rows), and writes
`<output>/representation/<segment>.json` with, per category, the counts and the
imbalance ratio (largest group / smallest group; infinite when a group has none).

rebalance works on one category. A caption that mentions exactly one group of it
belongs to that group; the others (none, or several groups) are left alone.
- mode `downsample`: every group is cut to at most max_ratio x the smallest
  non-empty group (default 1.5), keeping the rows with the smallest hash of
  sample_id (pipeline.select: exact, global, layout-free); the rest are rejected as
  `rebalanced`.
- mode `weight`: nothing is removed; each row of a group gets
  meta.sample_weight = rows in groups / (groups x rows in its group), which
  averages 1 over those rows (the others get 1), for the trainer's loss.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import yaml
from pydantic import Field

from pipeline import fs, ledger
from pipeline.select import at_most, id_digits, kth_smallest
from pipeline.shuffle import map_tables
from pipeline.stage import Column, Params, Resources, Stage
from pipeline.watchdog import gather

DEFAULT_LEXICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lexicon.yaml")


@lru_cache(maxsize=8)
def lexicon(path: str = DEFAULT_LEXICON) -> dict[str, dict[str, re.Pattern]]:
    """category -> group -> one compiled pattern of its terms."""
    with open(path) as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a lexicon is a mapping category -> group -> [terms]")
    out = {}
    for category, groups in raw.items():
        out[category] = {}
        for group, terms in (groups or {}).items():
            words = sorted({str(t).lower() for t in terms or []}, key=len, reverse=True)
            if words:
                out[category][group] = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)")
    return out


def mentions(text: str | None, lex: dict[str, dict[str, re.Pattern]]) -> list[str]:
    low = (text or "").lower()
    return [f"{c}:{g}" for c, groups in lex.items() for g, pattern in groups.items() if pattern.search(low)]


class AuditRepresentationParams(Params):
    text_column: str = Field("caption", description="text column to read")
    lexicon: str = Field(DEFAULT_LEXICON, description="YAML lexicon: category -> group -> terms")


def _part_counts(part: str, column: str, path: str) -> dict[str, int]:
    lex = lexicon(path)
    counts: dict[str, int] = {}
    import pyarrow.parquet as pq

    filesystem, path_in = fs.resolve(part)
    for text in pq.read_table(path_in, filesystem=filesystem, columns=[column]).column(column).to_pylist():
        for m in mentions(text, lex):
            counts[m] = counts.get(m, 0) + 1
    return counts


def _add_up(parts: list, count, *args) -> dict[str, int]:
    """count(part, *args) -> {key: n} on every part as Ray tasks, added up: a few numbers, never rows."""
    import ray

    total: Counter = Counter()
    for part in gather([ray.remote(count).remote(part, *args) for part in parts]):
        total.update(part)
    return dict(total)


def representation_table(counts: dict[str, int], lex: dict, total: int) -> dict[str, Any]:
    out = {"captions": total, "categories": {}}
    for category, groups in lex.items():
        per = {g: counts.get(f"{category}:{g}", 0) for g in groups}
        low, high = min(per.values(), default=0), max(per.values(), default=0)
        out["categories"][category] = {"counts": per, "imbalance_ratio": (high / low) if low else
                                       (math.inf if high else None)}
    return out


class AuditRepresentation(Stage):
    """Counts who the captions talk about (gender, age, skin tone, religion) and writes the table for the report."""

    name = "audit_representation"
    kind = "global"
    Params = AuditRepresentationParams
    resources = Resources(num_cpus=1)

    def reads(self) -> list[str]:
        return [self.params.text_column]

    def adds(self) -> list[Column]:
        return [Column("mentions")]

    def report_sections(self, run_root: str, kept) -> list[dict[str, Any]]:
        """The representation table this stage wrote, for `mmcurate report`."""
        import html

        out = []
        folder = fs.join(run_root, "representation")
        for info in fs.list_files(folder):
            if not info.path.endswith(".json"):
                continue
            segment = info.path.rsplit("/", 1)[1][:-5]
            rep = json.loads(fs.read_bytes(fs.join(folder, segment + ".json")))
            rows = []
            for category, found in rep.get("categories", {}).items():
                counts = ", ".join(f"{g} {n}" for g, n in found["counts"].items())
                ratio = found["imbalance_ratio"]
                ratio = "n/a" if ratio is None else ratio if isinstance(ratio, str) else f"{ratio:.2f}"
                rows.append(f"<tr><td>{html.escape(category)}</td><td>{html.escape(counts)}</td>"
                            f"<td class='n'>{html.escape(str(ratio))}</td></tr>")
            out.append({"title": f"Representation ({segment}, {rep.get('captions')} captions)", "data": rep,
                        "html": "<table><tr><th>category</th><th>counts per group</th><th>imbalance (largest / "
                                "smallest)</th></tr>" + "".join(rows) + "</table>"})
        return out

    def run_global(self, ds, ctx) -> list[dict[str, Any]]:
        p = self.params
        lex = lexicon(p.lexicon)
        counts = _add_up(ctx.parts, _part_counts, p.text_column, p.lexicon)
        table = representation_table(counts, lex, ctx.upstream_kept)
        text = json.dumps(table, indent=1, default=str).replace("Infinity", '"inf"')
        fs.write_bytes(fs.join(ctx.run.root, "representation", f"{ctx.segment}.json"), text.encode())
        for category, info in table["categories"].items():
            ratio = info["imbalance_ratio"]
            ctx.phase(f"{category}: " + ", ".join(f"{g} {n}" for g, n in info["counts"].items())
                  + f"; imbalance {'n/a' if ratio is None else f'{ratio:.2f}'}")
        writer, column, path = ctx.writer, p.text_column, p.lexicon

        def annotate(t: pa.Table) -> pa.Table:
            lx = lexicon(path)
            found = [mentions(x, lx) for x in t.column(column).to_pylist()]
            return writer(ledger.set_column(t, "mentions", pa.array(found, pa.list_(pa.string()))))

        return [t.to_pylist()[0] for t in gather(map_tables(ctx.parts, annotate))]


class RebalanceParams(Params):
    category: str = Field("gender", description="lexicon category to balance")
    max_ratio: float = Field(1.5, ge=1, description="largest group at most this many times the smallest")
    mode: Literal["downsample", "weight"] = Field("downsample", description="remove rows, or write "
                                                                            "meta.sample_weight")
    text_column: str = Field("caption", description="text column to read")
    lexicon: str = Field(DEFAULT_LEXICON, description="YAML lexicon: category -> group -> terms")


def _group_of(texts: list, lex: dict, category: str) -> list[str | None]:
    groups = lex[category]
    out = []
    for text in texts:
        low = (text or "").lower()
        found = [g for g, pattern in groups.items() if pattern.search(low)]
        out.append(found[0] if len(found) == 1 else None)
    return out


def _group_counts(part: str, column: str, path: str, category: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    import pyarrow.parquet as pq

    filesystem, path_in = fs.resolve(part)
    texts = pq.read_table(path_in, filesystem=filesystem, columns=[column]).column(column).to_pylist()
    for g in _group_of(texts, lexicon(path), category):
        if g is not None:
            counts[g] = counts.get(g, 0) + 1
    return counts


class Rebalance(Stage):
    """Downsamples or reweights the groups of a category so that none outweighs another too much."""

    name = "rebalance"
    kind = "global"
    Params = RebalanceParams
    resources = Resources(num_cpus=1)

    def reads(self) -> list[str]:
        return [self.params.text_column]

    def groups(self, table: pa.Table) -> list[str | None]:
        return _group_of(table.column(self.params.text_column).to_pylist(), lexicon(self.params.lexicon),
                         self.params.category)

    def run_global(self, ds, ctx) -> list[dict[str, Any]]:

        p = self.params
        if p.category not in lexicon(p.lexicon):
            raise ValueError(f"rebalance: no category {p.category!r} in {p.lexicon} "
                             f"(it has {', '.join(lexicon(p.lexicon))})")
        counts = _add_up(ctx.parts, _group_counts, p.text_column, p.lexicon, p.category)
        stage, writer = self, ctx.writer
        if p.mode == "weight":
            total = sum(counts.values())
            weights = {g: total / (len(counts) * n) for g, n in counts.items()}
            ctx.phase(f"{p.category} weights " +
                  ", ".join(f"{g} {w:.3f} ({counts[g]} rows)" for g, w in sorted(weights.items())))
            return [t.to_pylist()[0] for t in gather(map_tables(ctx.parts, lambda t: writer(stage.weigh(t, weights))))]
        quota = math.floor(p.max_ratio * min(counts.values())) if counts else 0
        cutoffs = {}
        for group, n in counts.items():
            if n > quota:  # keep the `quota` rows of this group with the smallest id hashes
                cutoffs[group] = kth_smallest(ctx.parts, lambda t, g=group: stage.keys(t, g), quota, digits=4,
                                              columns=["sample_id", p.text_column])
        ctx.phase(f"{p.category} " + ", ".join(f"{g} {n}" for g, n in sorted(counts.items()))
              + f"; each group kept to at most {quota} (max_ratio {p.max_ratio})")
        return [t.to_pylist()[0] for t in gather(map_tables(ctx.parts,
                                                             lambda t: writer(stage.cut(t, cutoffs, quota))))]

    def keys(self, table: pa.Table, group: str) -> np.ndarray:
        ids = [i for i, g in zip(table.column("sample_id").to_pylist(), self.groups(table)) if g == group]
        return id_digits(ids) if ids else np.zeros((0, 4), np.uint16)

    def cut(self, table: pa.Table, cutoffs: dict[str, tuple | None], quota: int) -> pa.Table:
        groups = self.groups(table)
        ids = table.column("sample_id").to_pylist()
        keep = np.ones(table.num_rows, bool)
        digits = id_digits(ids) if ids else np.zeros((0, 4), np.uint16)
        for group, cutoff in cutoffs.items():
            keep &= np.array([g != group for g in groups], bool) | at_most(digits, cutoff)
        rejects = [None if k else ledger.reject("rebalanced", f"{self.params.category}: group {g} cut to {quota} "
                                                f"(max_ratio {self.params.max_ratio})") for k, g in zip(keep, groups)]
        return ledger.stamp_stage(ledger.with_rejects(table, rejects), self.name)

    def weigh(self, table: pa.Table, weights: dict[str, float]) -> pa.Table:
        metas = table.column("meta").to_pylist() if "meta" in table.column_names else [None] * table.num_rows
        out = []
        for m, g in zip(metas, self.groups(table)):
            meta = json.loads(m) if m else {}
            meta["sample_weight"] = round(weights.get(g, 1.0) if g else 1.0, 6)
            out.append(json.dumps(meta, sort_keys=True))
        table = ledger.set_column(table, "meta", pa.array(out, pa.string()))
        return ledger.stamp_stage(ledger.ensure_reject_column(table), self.name)
