"""What the ingest stages share: listing a source into rows, reading each row's media.

A manifest, a URL list, a folder with sidecars or WebDataset tars become rows whose
identity is fixed before any I/O (stages.ingest.sources); a worker then reads each
row's bytes (a file, a range of a tar, a download) and hands them to the stage's own
decoding. Subclasses set `media_kind` (the media extensions and the download check),
`modality` and `reserved` (their own column names) and write `load(row, data)`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, ClassVar, Iterator, Literal

import pyarrow as pa
from pydantic import Field

from pipeline import fs, ledger
from pipeline.stage import RowParams, Stage

from . import sources
from .download import Downloader, DownloadError, Policy

BATCH_ROWS = 1024
# Listing columns that only locate the media; kept so that rejects show them.
LOCATORS = pa.schema([
    pa.field("path", pa.string()),
    pa.field("_caption_raw", pa.binary()),
    pa.field("_caption_path", pa.string()),
    pa.field("_tar_offset", pa.int64()),
    pa.field("_tar_size", pa.int64()),
    pa.field("_source_stat", pa.string()),
    pa.field("_timed", pa.string()),
])


class IngestParams(RowParams):
    source: str = Field(..., description="manifest (.parquet/.jsonl/.csv), folder, or .tar shards (glob or {a..b})")
    source_format: Literal["auto", "manifest", "directory", "webdataset"] = Field(
        "auto", description="how to read `source`; auto = by extension or folder")
    path_column: str = Field("path", description="manifest column with the media path (relative = to the manifest's folder)")
    url_column: str = Field("url", description="manifest column with URLs, used when there is no path column")
    allowed_roots: list[str] = Field(default_factory=list, description="folders (or s3://bucket/prefix) outside the "
                                     "manifest's own folder that its paths may point into; s3:// URLs in a URL "
                                     "list are read only inside these")
    invalid_utf8: Literal["repair", "reject"] = Field(
        "repair", description="texts with invalid UTF-8: repair with U+FFFD or reject")
    # Downloads (URL lists). Defaults: img2dataset-like timeouts, bounded so that no URL stalls a run.
    connect_timeout: float = Field(10.0, gt=0, le=300, description="seconds to connect, per attempt")
    read_timeout: float = Field(30.0, gt=0, le=600, description="seconds of silence allowed while reading")
    total_timeout: float = Field(60.0, gt=0, le=3600, description="seconds per attempt, connect to last byte")
    retries: int = Field(2, ge=0, le=10, description="extra attempts on connection errors, 429 and 5xx (backoff with jitter, Retry-After honoured)")
    max_bytes: int = Field(32 << 20, ge=1024, description="largest download, enforced while streaming")
    max_redirects: int = Field(5, ge=0, le=30, description="redirect hops allowed (http/https only, each hop checked)")
    allow_private_networks: bool = Field(False, description="allow loopback, private and link-local addresses (off: SSRF guard)")
    respect_opt_out: bool = Field(True, description="reject as opted_out when X-Robots-Tag says noai/noimageai")
    download_concurrency: int = Field(32, ge=1, le=1024, description="downloads in flight per worker")
    per_host_concurrency: int = Field(4, ge=1, le=256, description="downloads in flight per host per worker")
    per_host_rate: float = Field(0.0, ge=0, description="requests per second per host per worker; 0 = no limit")


class ListedIngest(Stage):
    """Base of the ingest stages that list a source of media files."""

    media_kind: ClassVar[str] = "image"  # which media files a source lists, and what downloads must be
    modality: ClassVar[str] = "image_text"
    reserved: ClassVar[frozenset[str]] = frozenset()  # the stage's own column names (user columns are renamed)
    other_path_columns: ClassVar[tuple[str, ...]] = ()  # manifest path columns of a convention (NeMo's)
    spool_downloads: ClassVar[bool] = False  # downloads go to temporary files, not memory (videos)
    placement = frozenset({"download_concurrency", "per_host_concurrency", "per_host_rate"})
    reason_hints = {
        "blocked_address": "allow_private_networks: true fetches from loopback and private addresses",
        "path_outside_root": "allowed_roots names the folders outside the manifest's that its paths may point into",
        "missing_caption": "text_column names the text column",
        "timeout": "connect_timeout, read_timeout and total_timeout bound each download",
        "too_large": "max_bytes bounds each download",
        "opted_out": "respect_opt_out: false ignores X-Robots-Tag noai",
    }

    def setup(self) -> None:
        p = self.params
        self.downloader = Downloader(Policy(
            connect_timeout=p.connect_timeout, read_timeout=p.read_timeout, total_timeout=p.total_timeout,
            retries=p.retries, max_bytes=p.max_bytes, max_redirects=p.max_redirects,
            allow_private_networks=p.allow_private_networks, respect_opt_out=p.respect_opt_out,
            concurrency=p.download_concurrency, per_host_concurrency=p.per_host_concurrency,
            per_host_rate=p.per_host_rate, kind=self.media_kind, spool=self.spool_downloads))

    # -- listing (driver) -----------------------------------------------------
    def _entries(self) -> Iterator[sources.Entry]:
        p = self.params
        fmt = sources.detect_format(p.source) if p.source_format == "auto" else p.source_format
        if fmt == "manifest":
            return sources.list_manifest(p.source, p.path_column, p.text_column, p.url_column,
                                         p.allowed_roots, self.other_path_columns)
        if fmt == "directory":
            return sources.list_directory(p.source, self.media_kind)
        return sources.list_tars(p.source, self.media_kind)

    def list_inputs(self, limit: int | None = None) -> Iterator[pa.Table]:
        rows: list[dict[str, Any]] = []
        user_columns: list[str] | None = None
        types: dict[str, pa.DataType] = {}  # a user column's type, from its first batch
        for ordinal, e in enumerate(self._entries()):
            if limit is not None and ordinal >= limit:
                break
            if user_columns is None:  # the manifest's own columns stay top-level, with their types
                user_columns = [k for k in e.extra] if e.file_uri.endswith(
                    (".parquet", ".jsonl", ".json", ".csv", ".tsv")) else []
            rows.append(self._row(ordinal, e, user_columns))
            if len(rows) == BATCH_ROWS:
                yield self._table(rows, user_columns, types)
                rows = []
        if rows:
            yield self._table(rows, user_columns or [], types)

    def _row(self, ordinal: int, e: sources.Entry, user_columns: list[str]) -> dict[str, Any]:
        row = {
            "sample_id": ledger.sample_id(e.file_uri, e.locator),
            "ordinal": ordinal,
            "modality": self.modality,
            "source_uri": e.source_uri,
            "meta": json.dumps(e.extra, default=str, ensure_ascii=False) if e.extra else "{}",
            "path": e.path,
            "_caption_raw": e.caption_raw,
            "_caption_path": e.caption_path,
            "_tar_offset": e.tar_offset,
            "_tar_size": e.tar_size,
            "_source_stat": e.stat,
            "_timed": json.dumps(e.timed) if e.timed is not None else None,
            "reject": ledger.reject(*e.reject) if e.reject else None,
        }
        for k in user_columns:  # numbers, booleans and text as they are; lists and maps as JSON
            v = e.extra.get(k)
            row[self.user_name(k)] = v if v is None or isinstance(v, (str, bool, int, float)) else \
                json.dumps(v, default=str, ensure_ascii=False)
        return row

    def _table(self, rows: list[dict[str, Any]], user_columns: list[str], types: dict[str, pa.DataType]) -> pa.Table:
        """The batch as a table. A user column keeps the type of its first batch; a later
        value that does not fit it stays in the row's meta (`meta.extra` holds them all)."""
        from schemas import IDENTITY, REJECT

        schema = pa.schema([*IDENTITY, *LOCATORS, pa.field("reject", REJECT)])
        table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
        for k in user_columns:
            name = self.user_name(k)
            values = [r[name] for r in rows]
            if name not in types:
                try:
                    kind = pa.array(values).type
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                    kind = pa.string()
                types[name] = pa.string() if pa.types.is_null(kind) else kind
            try:
                column = pa.array(values, types[name])
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                column = pa.array([_fits(v, types[name]) for v in values], types[name])
            table = table.add_column(table.num_columns - 1, name, column)
        return table

    def user_name(self, column: str) -> str:
        """Manifest columns keep their names unless they clash with ours or the engine's."""
        clash = column in self.reserved or column in LOCATORS.names or column in ("reject", "parent_id")
        return f"src_{column}" if clash or column.startswith("_") else column

    # -- reading (workers) ------------------------------------------------------
    def each_row(self, batch: pa.Table, load: Callable[[dict[str, Any], bytes | None], dict[str, Any]]
                 ) -> tuple[list[dict[str, Any]], list[dict | None]]:
        """load(row, bytes) for every row: URLs download concurrently and each is loaded as
        soon as it arrives, files are read in turn (load reads them: `self.read(row)`).
        Returns each row's new values and its reject (None = kept)."""
        rows = batch.to_pylist()
        results: list[tuple[dict, dict | None]] = [({}, None)] * len(rows)

        def settle(i: int, fetched: bytes | DownloadError | None = None) -> None:
            try:
                if isinstance(fetched, DownloadError):
                    raise fetched
                results[i] = (load(rows[i], fetched), None)
            except DownloadError as e:  # its detail names the URL already
                results[i] = ({}, ledger.reject(e.reason, e.detail))
            except ledger.Rejected as e:
                results[i] = ({}, ledger.reject(e.reason, f"{rows[i]['source_uri']}: {e.detail}"))

        urls = [i for i, r in enumerate(rows) if r["path"] and r["path"].startswith(("http://", "https://"))]
        for k, fetched in self.downloader.fetch_iter([rows[i]["path"] for i in urls]) if urls else ():
            settle(urls[k], fetched)
        for i in sorted(set(range(len(rows))) - set(urls)):
            settle(i)
        return [v for v, _ in results], [why for _, why in results]

    @staticmethod
    def with_values(batch: pa.Table, values: list[dict[str, Any]], rejects: list[dict | None], fields: pa.Schema,
                    media_column: str) -> pa.Table:
        """each_row's values as the batch's columns (`fields`: what the modality's schema adds;
        the media column as references when the store made them). Columns the listing brought
        stay, but for the text and its hash, which loading decodes and normalises."""
        from schemas import MEDIA_REF

        for f in fields:
            if f.name in batch.column_names and f.name not in ("text", "content_sha256"):
                continue
            column = [v.get(f.name) for v in values]
            kind = MEDIA_REF if f.name == media_column and any(isinstance(v, dict) for v in column) else f.type
            batch = ledger.set_column(batch, f.name, pa.array(column, type=kind))
        return ledger.with_rejects(batch, rejects)

    def text(self, row: dict[str, Any]) -> bytes | None:
        """The row's text as it came: inline, or from its sidecar file."""
        raw = row["_caption_raw"]
        if raw is None and row["_caption_path"]:
            try:
                raw = fs.read_bytes(row["_caption_path"])
            except OSError as e:
                raise ledger.Rejected("unreadable_caption", f"{row['_caption_path']}: {e}") from None
        return raw

    @staticmethod
    def read(row: dict[str, Any]) -> bytes:
        """The row's media bytes: a file, or its range of a tar."""
        path = row["path"]
        try:
            if row["_tar_offset"] is not None:
                return fs.read_range(path, row["_tar_offset"], row["_tar_size"])
            if fs.is_local(path) and os.path.realpath(path) != path:
                # listing stored the real path, checked against the roots; a link now in its place is not ours
                raise ledger.Rejected("path_outside_root", "the path became a symbolic link after listing")
            return fs.read_bytes(path)
        except FileNotFoundError:
            raise ledger.Rejected("missing_file", "file not found") from None
        except OSError as e:
            raise ledger.Rejected("unreadable_file", f"cannot read: {e}") from None


def _fits(value: Any, kind: pa.DataType) -> Any:
    """The value when it fits the column's type, else None (it is still in meta)."""
    if value is None:
        return None
    try:
        pa.array([value], kind)
        return value
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        if pa.types.is_string(kind):
            return json.dumps(value, default=str) if not isinstance(value, str) else value
        return None
