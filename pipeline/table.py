"""Stage `ingest_table`: rows of tables, every column kept as it is.

The engine's own source, modality-free: `mmcurate stage NAME --input X` feeds a
stage with it. X is a .parquet/.jsonl/.csv file, a glob of them, a folder of them
(a segment's folder), or a run directory: its last committed rows (for a run that
ended in shards, the rows that went into them), with the media store and column
declarations of that run, so that stages chain. Rows that have no `sample_id` /
`ordinal` get them from the file and the row number. Input columns named like the
engine's own (`reject`, `parent_id`, `_*`) are renamed `src_...` (a run's own
`_*` columns are kept; its `parent_id` becomes `src_parent_id`: lineage starts again).
"""
from __future__ import annotations

import glob
import json
import re
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import Field

from . import fs, ledger
from .stage import Column, Params, Resources, SourceError, Stage

BATCH_ROWS = 4096
STREAM_BLOCK = 64 << 20


TABLES = (".parquet", ".jsonl", ".json", ".csv")
EXTENSION = re.compile(r"[a-z0-9]{1,16}")  # a member extension from the data: no dots, slashes or json


def json_lines(f) -> Iterator[pa.Table]:
    """JSON lines in blocks of whole lines, each parsed on its own with the first block's
    column types. Arrow's streaming reader kept more of the file the longer it was (peak
    0.9 GB for 1 GB, 0.6 GB for 200 MB); this stays at about 0.5 GB for any size."""
    schema, tail = None, b""
    while True:
        data = f.read(STREAM_BLOCK)
        buf = tail + data
        cut = buf.rfind(b"\n") + 1 if data else len(buf)
        block, tail = buf[:cut], buf[cut:]
        if block.strip():
            parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer") if schema else None
            table = pajson.read_json(pa.BufferReader(block), parse_options=parse)
            schema = schema or table.schema
            yield table
        if not data:
            return


def reserved(name: str) -> bool:
    """Column names the engine uses for itself; an input's own are renamed src_..."""
    return name in ("reject", "parent_id") or name.startswith("_")


def run_root(path: str) -> str | None:
    """The run directory a path is, or is a segment of (it holds plan.json)."""
    path = path.rstrip("/")
    for candidate in (path, path.rsplit("/", 2)[0] if path.count("/") >= 2 else None):
        if candidate and fs.exists(fs.join(candidate, "plan.json")):
            return candidate
    return None


def rows_of_run(root: str) -> str:
    """The folder of a run's last committed rows: for a run that ended in shards, the
    rows that went into them."""
    from .rundir import RunDir

    plan = json.loads(fs.read_bytes(fs.join(root, "plan.json")))
    rd = RunDir(root)
    for name in reversed(plan["segments"][:-1] if plan.get("sink") else plan["segments"]):
        if rd.marker(name) is None:
            continue
        if any(i.path.endswith(".parquet") for i in fs.list_files(rd.segment_dir(name))):
            return rd.segment_dir(name)
    raise SourceError(f"{root}: no committed segment with rows (has the run started?)")


class IngestTableParams(Params):
    source: str = Field(..., description="a .parquet/.jsonl/.csv file, a glob or folder of them, or a run directory")
    modality: str = Field("text", description="modality written for rows that have none")
    media: dict[str, str] = Field(default_factory=dict, description="columns of bytes and their member extension in "
                                  "the shards ({audio: flac}, or {image: '@image_format'} to take it per row)")


class IngestTable(Stage):
    """Rows of tables (files, globs, folders, or an earlier run's rows), every column kept."""

    name = "ingest_table"
    Params = IngestTableParams
    resources = Resources(num_cpus=1, batch_size=1024)
    open_columns = True  # the table's own columns: known once it is listed

    def files(self) -> list[str]:
        """The tables to read, in order."""
        source = self.params.source
        uri = source if "://" in source else fs.resolve(source)[1]
        if any(c in source for c in "*?["):
            found = sorted(f for f in glob.glob(source) if f.lower().endswith(TABLES)) if "://" not in source else []
            if not found:
                raise SourceError(f"{source}: no .parquet/.jsonl/.csv file matches")
            return [fs.resolve(f)[1] for f in found]
        if fs.is_dir(uri):
            folder = rows_of_run(uri) if fs.exists(fs.join(uri, "plan.json")) else uri
            found = [fs.join(folder, i.path.rsplit("/", 1)[1]) for i in fs.list_files(folder)
                     if i.path.lower().endswith(TABLES)]
            if not found:
                raise SourceError(f"{source}: no .parquet/.jsonl/.csv file in this folder")
            return found
        return [uri]

    def _run(self) -> str | None:
        source = self.params.source
        if any(c in source for c in "*?["):
            return None
        return run_root(source if "://" in source else fs.resolve(source)[1])

    def media_roots(self) -> list[str]:
        """An earlier run's media store, and the stores its own inputs came from."""
        run = self._run()
        if not run:
            return []
        plan = json.loads(fs.read_bytes(fs.join(run, "plan.json")))
        return list(plan.get("media_roots") or [fs.join(run, "media")])

    def adds(self) -> list[Column]:
        declared = []
        run = self._run()
        if run:  # the columns the earlier run declared (media formats, previews, metrics) carry on
            from .job import stages_of_run

            declared = [c for s in stages_of_run(run) for c in s.adds()]
        return declared + [Column(name, "media", format=fmt) for name, fmt in self.params.media.items()]

    def _batches(self, uri: str) -> Iterator[pa.RecordBatch]:
        filesystem, path = fs.resolve(uri)
        low = uri.lower()
        try:
            if low.endswith(".parquet"):
                with filesystem.open_input_file(path) as f:
                    yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS)
            # JSON and CSV stream block by block: the driver never holds the whole file
            # (a 1 GB JSONL took 4 GB of driver memory when read at once). Column types
            # are inferred from the first block, 64 MB of rows.
            elif low.endswith((".jsonl", ".json")):
                with filesystem.open_input_stream(path) as f:
                    for table in json_lines(f):
                        yield from table.to_batches(BATCH_ROWS)
            elif low.endswith(".csv"):
                with filesystem.open_input_stream(path) as f:
                    for batch in pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=STREAM_BLOCK)):
                        yield from pa.Table.from_batches([batch]).to_batches(BATCH_ROWS)
            else:
                raise SourceError(f"{uri}: expected a .parquet, .jsonl or .csv file")
        except FileNotFoundError:
            raise SourceError(f"{uri}: file not found") from None
        except pa.ArrowInvalid as e:
            raise SourceError(f"{uri}: cannot be read as a table: {e}") from None

    def list_inputs(self, limit: int | None = None) -> Iterator[pa.Table]:
        start = 0
        ours = self._run() is not None  # rows an earlier run wrote: its own columns are the engine's
        for uri, batch in ((u, b) for u in self.files() for b in self._batches(u)):
            table = pa.Table.from_batches([batch])
            # A row read here is an input of this run: lineage starts again (an earlier run's
            # parent_id is kept as src_parent_id), and no input speaks for the engine.
            table = table.rename_columns([
                c if ours and c != "parent_id" else f"src{c}" if c.startswith("_") else
                f"src_{c}" if reserved(c) else c for c in table.column_names])
            if limit is not None:
                table = table.slice(0, max(0, limit - start))
            n = table.num_rows
            rows = range(start, start + n)
            defaults = {
                "sample_id": pa.array([ledger.sample_id(uri, i) for i in rows], pa.string()),
                "ordinal": pa.array(rows, pa.int64()),
                "modality": pa.array([self.params.modality] * n, pa.string()),
                "source_uri": pa.array([f"{uri}#{i}" for i in rows], pa.string()),
                "meta": pa.array(["{}"] * n, pa.string()),
            }
            for name, values in defaults.items():
                if name not in table.column_names:
                    table = table.append_column(name, values)
            table = self._check_formats(_check_ids(uri, table, rows))
            if n:
                yield table
            start += n
            if limit is not None and start >= limit:
                break


    def _check_formats(self, table: pa.Table) -> pa.Table:
        """Rows whose media extension comes from their own data must name a plain one."""
        from .ledger import reject, with_rejects

        columns = [fmt[1:] for fmt in self.params.media.values() if fmt.startswith("@")]
        why = [None] * table.num_rows
        for name in columns:
            values = table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
            for i, v in enumerate(values):
                if why[i] is None and not (isinstance(v, str) and EXTENSION.fullmatch(v) and v != "json"):
                    why[i] = reject("bad_media_format", f"{name} = {str(v)[:40]!r}: not a member extension "
                                                        f"({EXTENSION.pattern}, not json)")
        return with_rejects(table, why) if any(why) else table


def _check_ids(uri: str, table: pa.Table, rows: range) -> pa.Table:
    """Ids the input brings become strings; a missing one gets the row's own id. Whether
    they are safe and unique is the runner's check, for every source alike
    (pipeline.ledger.InputIds): a bad id is replaced, a repeated one rejected."""
    col = table.column("sample_id")
    if pa.types.is_integer(col.type):
        col = col.cast(pa.string())
    elif not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type)):
        raise SourceError(f"{uri}: column 'sample_id' must hold strings or integers, not {col.type}")
    if col.null_count or not pa.types.is_string(col.type):
        col = pa.array([v if v is not None else ledger.sample_id(uri, i) for v, i in zip(col.to_pylist(), rows)],
                       pa.string())
    table = table.set_column(table.schema.get_field_index("sample_id"), "sample_id", col)
    ordinal = table.column("ordinal")
    if not pa.types.is_integer(ordinal.type) or ordinal.null_count:
        raise SourceError(f"{uri}: column 'ordinal' must hold integers for every row (it orders the inputs)")
    if ordinal.type != pa.int64():
        table = table.set_column(table.schema.get_field_index("ordinal"), "ordinal", ordinal.cast(pa.int64()))
    meta = table.column("meta")
    if not pa.types.is_string(meta.type):  # meta is JSON text
        import json

        table = table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(
            [v if isinstance(v, str) else json.dumps(v, default=str) for v in meta.to_pylist()], pa.string()))
    return table
