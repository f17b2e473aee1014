"""A hash-partitioned shuffle on Ray tasks, for global stages and the shard writer.

Map: every committed part is read once (only the columns asked for) and cut into n
pieces by a partition id per row. Reduce: one task per partition gets every part's
piece of it and does the work (find duplicates, write a shard). That is
MAP_TASKS x n objects in the object store; no process ever holds more than one
partition. On 2 cores it took a third of the time of Ray Data's groupby.

A global stage moves only the columns it decides on: it shuffles them with each
row's part number (`tag_first`), makes one decision per row (a reject, a
cluster id), and `apply_by_part` brings the decisions back to the parts they came
from, where each part is read whole once and written.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import fs, ledger, media
from .watchdog import gather

PARTITION = "_partition"
PART = "_part"  # the index of the part a row came from (tag_parts)
MAP_TASKS = 32  # map tasks per shuffle
PARTS_PER_APPLY = 8  # parts one apply task reads and writes
# What the last shuffles of committed parts read from them ({"reduce", "columns"}; None =
# every column), for diagnostics and for the test that no global stage moves a media column.
recent = deque(maxlen=200)


def read_columns(source, columns: list[str] | None) -> pa.Table:
    if not isinstance(source, str):
        return source
    if columns is None:
        return fs.read_parquet(source)
    filesystem, path = fs.resolve(source)
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path, filesystem=filesystem).names)
    return pq.read_table(path, filesystem=filesystem, columns=[c for c in columns if c in names])


def _split(n: int, assign: Callable[[pa.Table], np.ndarray], columns: list[str] | None,
           *sources) -> pa.Table | list[pa.Table]:
    """Map side: a few sources read and cut into their n partitions (concatenated per partition).
    A source is a table reference, a parquet URI, or (index, URI) to tag its rows with PART."""
    pieces: list[list[pa.Table]] = [[] for _ in range(n)]
    for source in sources:
        index = None
        if isinstance(source, tuple):
            index, source = source
        table = read_columns(source, columns)
        if index is not None:
            table = table.append_column(PART, pa.array(np.full(table.num_rows, index, dtype=np.int64)))
        ids = pa.array(assign(table), type=pa.int64())
        table = table.append_column(PARTITION, ids)
        for p in range(n):
            pieces[p].append(table if n == 1 else table.filter(pc.equal(ids, p)))
    out = [pa.concat_tables(ps, promote_options="permissive") for ps in pieces]
    return out[0] if n == 1 else out  # Ray hands a single return value back as it is, not as a list


def _reduce(p: int, reduce: Callable[[int, pa.Table], Any], *pieces: pa.Table) -> Any:
    table = pa.concat_tables(pieces, promote_options="permissive").drop_columns([PARTITION])
    return reduce(p, table)


def hash_partition(parts: list, n: int, assign: Callable[[pa.Table], np.ndarray],
                   reduce: Callable[[int, pa.Table], Any], num_cpus: float = 1.0, fetch: bool = True,
                   columns: list[str] | None = None, tag_first: int = 0) -> list[Any]:
    """reduce(partition, rows of that partition) for every partition, in partition order.

    parts are parquet URIs or Ray references to tables (from map_tables or an earlier
    hash_partition with fetch=False, which returns references instead of values).
    assign(table) gives each row its partition id in [0, n). Empty partitions are
    reduced too (with an empty table), so that callers see every partition.
    columns: the only columns read from parquet parts; tag_first: the rows of the first
    `tag_first` parts get the part's index in PART (for apply_by_part).
    """
    import ray

    sources = [(i, p) if i < tag_first else p for i, p in enumerate(parts)]
    if any(isinstance(p, str) for p in parts):
        recent.append({"reduce": getattr(reduce, "__qualname__", type(reduce).__name__),
                       "columns": list(columns) if columns is not None else None})
    split = ray.remote(_split).options(num_returns=n, num_cpus=num_cpus)
    reducer = ray.remote(_reduce).options(num_cpus=num_cpus)
    # A few sources per map task: parts x n objects grow fast (782 parts x 18 partitions
    # is 14,000 objects per shuffle); MAP_TASKS x n stay few.
    groups = [sources[i::MAP_TASKS] for i in range(min(MAP_TASKS, len(sources)))]
    pieces = [split.remote(n, assign, columns, *group) for group in groups]
    if n == 1:
        pieces = [[ref] for ref in pieces]
    refs = [reducer.remote(p, reduce, *(piece[p] for piece in pieces)) for p in range(n)]
    return gather(refs) if fetch else refs


def join_decisions(table: pa.Table, decisions: pa.Table) -> pa.Table:
    """The decisions (one row per sample_id: a `reject`, new columns) set on the rows of a part."""
    if not decisions.num_rows:
        return table
    index = {sid: i for i, sid in enumerate(decisions.column("sample_id").to_pylist())}
    rows = [index.get(sid) for sid in table.column("sample_id").to_pylist()]
    take = pa.array(rows, pa.int64())
    for name in decisions.column_names:
        if name in ("sample_id", PART):
            continue
        values = decisions.column(name).combine_chunks().take(take)
        if name == "reject" and "reject" in table.column_names:  # an earlier reject stands
            values = pc.coalesce(table.column("reject").combine_chunks(), values)
        table = ledger.set_column(table, name, values)
    return table


def apply_by_part(parts: list[str], decisions: list, apply: Callable[[pa.Table], Any], fetch: bool = True) -> list[Any]:
    """apply(part with its decisions joined) for every part, each part read whole once.

    decisions: table references with sample_id, PART and the decided columns (a
    `reject`, a `cluster_id`...), as a shuffle with tag_first leaves them. With
    fetch=False, apply returns tables and what comes back is references to them,
    one per group of parts, for a further shuffle."""
    n = max(1, -(-len(parts) // PARTS_PER_APPLY))

    def assign(t: pa.Table) -> np.ndarray:
        return (t.column(PART).to_numpy() // PARTS_PER_APPLY).astype(np.int64)

    def reduce(p: int, t: pa.Table) -> list[Any] | pa.Table:
        out = []
        for k in range(p * PARTS_PER_APPLY, min(len(parts), (p + 1) * PARTS_PER_APPLY)):
            mine = t.filter(pc.equal(t.column(PART), k)) if t.num_rows else t
            result = apply(join_decisions(fs.read_parquet(parts[k]), mine))
            out.append(result if not fetch else result.to_pylist()[0] if isinstance(result, pa.Table) else result)
        return pa.concat_tables(out, promote_options="permissive") if not fetch else out

    if not fetch:
        return hash_partition(decisions, n, assign, reduce, fetch=False)
    return [r for group in hash_partition(decisions, n, assign, reduce) for r in group]


def map_tables(parts: list, fn: Callable[[pa.Table], pa.Table], num_cpus: float = 1.0,
               columns: list[str] | None = None, streams: list[str] = (), together: int = 1) -> list:
    """fn over every part (a parquet URI or a table reference) as Ray tasks; references back.
    With `columns`, only those are read, and media references among them arrive as bytes,
    but for those in `streams` (fn opens them itself: pipeline.media.local_path).
    together > 1: each task takes that many parts one after the other and returns their
    results as one table (fewer, larger tasks and objects for many small parts)."""
    import ray

    def run(*sources):
        out = []
        for source in sources:
            table = read_columns(source, columns)
            out.append(fn(media.resolve(table, [c for c in columns if c not in streams]) if columns else table))
        return out[0] if len(out) == 1 else pa.concat_tables(out, promote_options="permissive")

    task = ray.remote(run)
    return [task.options(num_cpus=num_cpus).remote(*parts[i:i + together]) for i in range(0, len(parts), together)]


def partition_of(keys: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """A stable partition id in [0, n) for string keys (blake2b, not Python's salted hash)."""
    import hashlib

    return np.array([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") % n
                     if k is not None else 0 for k in keys.to_pylist()], dtype=np.int64)
