"""Stage `ingest_table`: rows of a parquet, jsonl or csv file, every column kept as it is.

The engine's own source, modality-free: `mmcurate stage NAME --input FILE` feeds a
stage with it. Rows that have no `sample_id` / `ordinal` get them from the file
and the row number.
"""
from __future__ import annotations

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


class IngestTableParams(Params):
    source: str = Field(..., description="a .parquet, .jsonl or .csv file")
    modality: str = Field("text", description="modality written for rows that have none")
    media: dict[str, str] = Field(default_factory=dict, description="columns of bytes and their member extension in "
                                  "the shards ({audio: flac}, or {image: '@image_format'} to take it per row)")


class IngestTable(Stage):
    name = "ingest_table"
    Params = IngestTableParams
    resources = Resources(num_cpus=1, batch_size=1024)
    open_columns = True  # the table's own columns: known once it is listed

    def adds(self) -> list[Column]:
        return [Column(name, "media", format=fmt) for name, fmt in self.params.media.items()]

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
                    for batch in pajson.open_json(f, read_options=pajson.ReadOptions(block_size=STREAM_BLOCK)):
                        yield from pa.Table.from_batches([batch]).to_batches(BATCH_ROWS)
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
        uri = self.params.source if "://" in self.params.source else fs.resolve(self.params.source)[1]
        start = 0
        for batch in self._batches(uri):
            table = pa.Table.from_batches([batch])
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
            table = _check_ids(uri, table, rows)
            if n:
                yield table
            start += n
            if limit is not None and start >= limit:
                break


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
    meta = table.column("meta")
    if not pa.types.is_string(meta.type):  # meta is JSON text
        import json

        table = table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(
            [v if isinstance(v, str) else json.dumps(v, default=str) for v in meta.to_pylist()], pa.string()))
    return table
