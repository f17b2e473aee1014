"""The ledger: identity, rejects in the stream, and the audit that proves the balance.

A rejected row is never written aside by a worker (Ray retries tasks, so side
writes double-count). It stays in the stream with a `reject` struct and the
runner splits kept from rejected rows at the segment boundary.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import EXPANDED, REJECT, REJECT_COLUMNS

from . import fs


def sample_id(source_uri: str, locator: str | int) -> str:
    """Short, dot-free, stable id of one input row: hash of its file and locator."""
    return hashlib.sha1(f"{source_uri}\0{locator}".encode()).hexdigest()[:20]


# A sample id becomes a WebDataset key and a tar member name: a safe alphabet, no
# dots (webdataset splits keys at the first dot), no slashes, bounded length.
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class InputIds:
    """Makes the ids of a listing unique and safe, part by part, on the driver.

    An id that is not SAFE_ID (`/x/escaped`, `a.b`, 300 characters) is replaced by a
    hash of it; a repeated id makes its row a reject (`duplicate_input_id`) with an id
    of its own. Either way the original goes into meta.input_sample_id. Ids seen so
    far are kept as sorted 64-bit hashes: 8 bytes per input.
    """

    def __init__(self):
        self.seen = np.empty(0, dtype=np.uint64)
        self.recent: set[int] = set()
        self.position = 0

    def _known(self, h: int) -> bool:
        if h in self.recent:
            return True
        i = np.searchsorted(self.seen, np.uint64(h))
        return bool(i < len(self.seen) and self.seen[i] == h)

    def _remember(self, h: int) -> None:
        self.recent.add(h)
        if len(self.recent) >= 1 << 16:
            self.seen = np.union1d(self.seen, np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent)))
            self.recent.clear()

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = table.column("sample_id").to_pylist()
        rejects = table.column("reject").to_pylist()
        metas = table.column("meta").to_pylist() if "meta" in table.column_names else [None] * len(ids)
        changed = False
        for i, original in enumerate(ids):
            new = original if isinstance(original, str) and SAFE_ID.fullmatch(original) else \
                sample_id("input-id", repr(original))
            h = int.from_bytes(hashlib.blake2b(new.encode(), digest_size=8).digest(), "big")
            if self._known(h):
                new = sample_id("duplicate-input-id", f"{original!r}\0{self.position + i}")
                h = int.from_bytes(hashlib.blake2b(new.encode(), digest_size=8).digest(), "big")
                if rejects[i] is None:
                    rejects[i] = reject("duplicate_input_id", f"sample_id {str(original)[:200]!r} appears again "
                                        f"(input #{self.position + i}); ids must be unique")
            self._remember(h)
            if new != original:
                meta = _loads(metas[i])
                meta["input_sample_id"] = original if original is None else str(original)[:1000]
                ids[i], metas[i], changed = new, json.dumps(meta, ensure_ascii=False), True
        self.position += len(ids)
        if not changed:
            return table
        table = set_column(table, "sample_id", pa.array(ids, pa.string()))
        table = set_column(table, "meta", pa.array(metas, pa.string()))
        return set_column(table, "reject", pa.array(rejects, type=REJECT))


def _loads(meta: str | None) -> dict[str, Any]:
    try:
        value = json.loads(meta) if meta else {}
    except ValueError:
        return {"meta": meta}
    return value if isinstance(value, dict) else {"meta": value}


class Rejected(Exception):
    """Raised by a stage's helpers for one row: the row is rejected with this reason and detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


_BYTES = re.compile(r"""b(['"]).*?(?<!\\)\1""", re.S)


def without_bytes(text: str) -> str:
    """An error message with any bytes literal in it (b'...') replaced: libraries quote
    the data they choke on, and a file's bytes never go into a reject detail."""
    return _BYTES.sub("<bytes>", text)


def child_id(parent_id: str, locator: str) -> str:
    """A child's id: from its parent's id and where in the parent it is (`t=12.00-18.50`,
    a path, `func:Greeter.greet`), so that a rerun gives the same ids."""
    return sample_id(f"child:{parent_id}", locator)


def child(parent: dict[str, Any], locator: str, key: str | None = None, **columns: Any) -> dict[str, Any]:
    """A child row of `parent` (a row as a dict): identity derived from the parent's (or
    `key`, an id the stage derives from content), `parent_id` set, the parent's ordinal
    kept (first in source order stays meaningful)."""
    return {**columns, "sample_id": key or child_id(parent["sample_id"], locator), "parent_id": parent["sample_id"],
            "ordinal": parent["ordinal"], "modality": columns.get("modality", parent.get("modality")),
            "source_uri": f"{parent.get('source_uri')}#{locator}", "meta": columns.get("meta", parent.get("meta"))}


def fan_out(batch: pa.Table, split, columns: list[tuple[str, pa.DataType]]) -> pa.Table:
    """Every row of a batch through `split` (a row -> its children, made with `child`, or the
    row itself to keep it whole), all in one table: the batch's schema plus `parent_id` and
    the children's `columns`. A row whose split raises Rejected stays, with its reason (the
    detail names its source); one bad row never fails its batch."""
    out: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        try:
            out += split(row)
        except Rejected as e:
            out.append({**row, "reject": reject(e.reason, f"{row.get('source_uri')}: {e.detail}")})
    schema = ensure_reject_column(batch).schema
    for name, kind in [("parent_id", pa.string()), *columns]:
        if name not in schema.names:
            schema = schema.append(pa.field(name, kind))
    return pa.Table.from_pylist(out, schema=schema)


def reject(reason: str, detail: str = "", duplicate_of: str | None = None,
           cluster_id: str | None = None) -> dict[str, Any]:
    """One reject record; `stage` is filled in by the runner."""
    return {"stage": None, "reason": reason, "detail": detail[:2000],
            "duplicate_of": duplicate_of, "cluster_id": cluster_id}


def with_rejects(table: pa.Table, rejects: list[dict | None]) -> pa.Table:
    """Attach a `reject` column (None = kept) to a table, row for row."""
    assert len(rejects) == table.num_rows, "one reject entry (or None) per row"
    return set_column(table, "reject", pa.array(rejects, type=REJECT))


def set_column(table: pa.Table, name: str, values: pa.Array | list) -> pa.Table:
    i = table.schema.get_field_index(name)
    if i >= 0:
        return table.set_column(i, name, values)
    return table.append_column(name, values)


def ensure_reject_column(table: pa.Table) -> pa.Table:
    if "reject" in table.column_names:
        return table
    return table.append_column("reject", pa.nulls(table.num_rows, type=REJECT))


def stamp_stage(table: pa.Table, stage_name: str) -> pa.Table:
    """Fill reject.stage for the rows this stage just rejected."""
    col = table.column("reject")
    if col.null_count == table.num_rows:
        return table
    rows = col.to_pylist()
    for r in rows:
        if r is not None and not r.get("stage"):
            r["stage"] = stage_name
    return set_column(table, "reject", pa.array(rows, type=REJECT))


def split_live(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rows still alive, rows that left the stream upstream: rejected or expanded)."""
    table = ensure_reject_column(table)
    col = table.column("reject")
    if col.null_count == table.num_rows:  # the common case: nothing rejected, no copy
        return table, table.slice(0, 0)
    rejected = pc.is_valid(col)
    return table.filter(pc.invert(rejected)), table.filter(rejected)


def split_expanded(dead: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rejected rows, expanded rows) of the rows that left the stream."""
    if not dead.num_rows:
        return dead, dead
    expanded = pc.fill_null(pc.equal(pc.struct_field(dead.column("reject"), "reason"), EXPANDED), False)
    return dead.filter(pc.invert(expanded)), dead.filter(expanded)


def flatten_rejects(table: pa.Table) -> pa.Table:
    """The flat rejects table: input columns at top level plus reject_* columns.
    Media columns stay references (small): the report previews them from the store."""
    rej = table.column("reject").combine_chunks()
    out = table.drop_columns(["reject"])
    for field, key in zip(REJECT_COLUMNS, ["stage", "reason", "detail", "duplicate_of", "cluster_id"]):
        out = set_column(out, field.name, pc.struct_field(rej, key).cast(field.type))
    return out


def flatten_expanded(table: pa.Table) -> pa.Table:
    """The expanded table: input columns plus the stage that expanded the row and its
    number of children."""
    rej = table.column("reject").combine_chunks()
    out = table.drop_columns(["reject"])
    out = set_column(out, "expand_stage", pc.struct_field(rej, "stage"))
    return set_column(out, "children", pc.cast(pc.struct_field(rej, "detail"), pa.int64()))


def reason_counts(rejects: pa.Table) -> Counter:
    """(stage, reason) -> count, from a flat rejects table."""
    if rejects is None or rejects.num_rows == 0:
        return Counter()
    pairs = zip(rejects.column("reject_stage").to_pylist(), rejects.column("reject_reason").to_pylist())
    return Counter(f"{s}\t{r}" for s, r in pairs)


def audit(run_dir: str) -> dict[str, Any]:
    """Every input sample_id exactly once, in the published output or in the rejects,
    and a run that finished: every segment of its plan committed, none in progress.

    Returns a summary with `ok`; inputs are the listing (kept and rejected),
    outputs the shard indexes (or the last segment when the plan has no shards)
    plus every rejects table.
    """
    from .lock import current_holder, describe
    from .rundir import RunDir

    rd = RunDir(run_dir)
    segments = rd.segment_dirs()
    if not segments:
        raise FileNotFoundError(f"{run_dir}: no stages/ directory: is this a run directory?")
    problems: list[str] = []
    try:
        plan = json.loads(fs.read_bytes(fs.join(rd.root, "plan.json")))
        planned, sink = list(plan["segments"]), bool(plan.get("sink"))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        planned, sink = [d.rsplit("/", 1)[1] for d in segments], fs.exists(rd.shards)
        problems.append("no readable plan.json: checked the segments that are there")
    unfinished = [name for name in planned if rd.marker(name) is None]
    if unfinished:
        problems.append(f"segment {unfinished[0]} is not committed: the run did not finish "
                        f"({len(unfinished)} of {len(planned)} segments missing: {', '.join(unfinished)})")
    holder = current_holder(rd.root)
    if holder is not None:
        problems.append(f"a run is in progress: {describe(holder)}")

    def ids(folder: str | None, columns: list[str]) -> pa.Table:
        t = fs.read_parquet_dir(folder, columns) if folder else None
        t = t if t is not None else pa.table({c: pa.array([], pa.string()) for c in columns})
        for c in columns:  # a folder without children has no parent_id column
            if c not in t.column_names:
                t = t.append_column(c, pa.nulls(t.num_rows, pa.string()))
        return t.select(columns).cast(pa.schema([(c, pa.int64() if c == "children" else pa.string())
                                                  for c in columns]))

    inputs = pa.concat_tables([ids(fs.join(rd.stages, planned[0]), ["sample_id"]),
                               ids(rd.rejects_dir(planned[0]), ["sample_id"])], promote_options="permissive"
                              ).column("sample_id")
    if sink:
        shards = rd.shards if fs.exists(rd.shards) else None
        kept = ids(shards, ["__key__", "parent_id"]).rename_columns(["sample_id", "parent_id"])
        kept_from = "shards"
    else:
        kept = ids(fs.join(rd.stages, planned[-1]), ["sample_id", "parent_id"])
        kept_from = planned[-1]
    reject_tables = [ids(rd.rejects_dir(name), ["sample_id", "parent_id", "reject_stage", "reject_reason"])
                     for name in planned]
    rejects = pa.concat_tables(reject_tables, promote_options="permissive")
    rejected = rejects.select(["sample_id", "parent_id"])
    expanded = pa.concat_tables([ids(rd.expanded_dir(name), ["sample_id", "parent_id", "children"])
                                 for name in planned], promote_options="permissive")
    by_reason: dict[str, dict[str, int]] = {}
    for key, n in sorted(reason_counts(rejects).items()):
        stage, reason = key.split("\t")
        by_reason.setdefault(stage, {})[reason] = n

    # Every node (an input, or a child of an expanded node) ends once: kept, rejected or expanded.
    ends = pa.concat_tables([kept.select(["sample_id", "parent_id"]), rejected,
                             expanded.select(["sample_id", "parent_id"])], promote_options="permissive")
    out_ids = ends.column("sample_id")
    counts = pc.value_counts(out_ids)
    values, ns = counts.field("values"), counts.field("counts")
    twice = values.filter(pc.greater(ns, 1))
    derived = pc.unique(out_ids.filter(pc.is_valid(ends.column("parent_id"))))
    nodes = pc.unique(pa.chunked_array([inputs.combine_chunks(), derived], pa.string()))
    missing = pc.filter(nodes, pc.invert(pc.is_in(nodes, value_set=values)))
    unknown = pc.filter(values, pc.invert(pc.is_in(values, value_set=nodes)))
    dup_inputs = len(inputs) - len(pc.unique(inputs))
    # ... and every child's parent was expanded, into as many children as it said.
    parents = ends.column("parent_id").filter(pc.is_valid(ends.column("parent_id")))
    orphans = pc.filter(parents, pc.invert(pc.is_in(parents, value_set=expanded.column("sample_id"))))
    made = dict(zip(*(pc.value_counts(parents).field(f).to_pylist() for f in ("values", "counts"))))
    lost = {sid: n - made.get(sid, 0) for sid, n in zip(expanded.column("sample_id").to_pylist(),
                                                         expanded.column("children").to_pylist())
            if made.get(sid, 0) != n}
    if len(orphans):
        problems.append(f"{len(orphans)} children whose parent was not expanded (e.g. {orphans[0].as_py()})")
    if lost:
        problems.append(f"{len(lost)} expanded samples whose children are not all accounted for "
                        f"(e.g. {next(iter(lost))})")
    missing_children = sum(n for n in lost.values() if n > 0)
    ok = not problems and len(missing) == 0 and len(twice) == 0 and len(unknown) == 0 and dup_inputs == 0
    return {
        "run_dir": run_dir,
        "ok": ok,
        "finished": not unfinished and holder is None,
        "problems": problems,
        "segments": planned,
        "unfinished_segments": unfinished,
        "inputs": len(inputs),
        "derived": len(derived),
        "kept": kept.num_rows,
        "kept_in": kept_from,
        "rejected": rejects.num_rows,
        "expanded": expanded.num_rows,
        "rejected_by_stage": by_reason,
        "missing": len(missing) + missing_children,
        "missing_examples": missing.to_pylist()[:10] + [f"a child of {p}" for p, n in lost.items() if n > 0][:10],
        "duplicated": len(twice),
        "duplicated_examples": twice.to_pylist()[:10],
        "unknown": len(unknown),
        "duplicate_input_ids": dup_inputs,
    }
