"""Listing the inputs of an ingest: manifests, folders with sidecars, WebDataset tars.

Listing reads only manifests, folder listings and tar headers, never media:
each input becomes an `Entry` whose identity (file URI + locator) is fixed
before any media I/O. An input that cannot even be listed becomes an Entry
with a reject, so that it is accounted for like any other.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow.parquet as pq

from pipeline import fs

MEDIA_EXTENSIONS = {
    "image": (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"),
}
CAPTION_EXTENSIONS = (".txt", ".caption")


def clean_text(value: Any) -> Any:
    """Strings safe for Arrow: undecodable bytes (kept as surrogates) become U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return caption_bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    return value


def caption_bytes(value: Any) -> bytes | None:
    """A caption as the bytes it came in, so that the caption policy decides about bad UTF-8."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        return str(value).encode()
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud83d escape
        return value.encode("utf-8", "surrogatepass")


class SourceError(ValueError):
    """A source that cannot be used at all (wrong columns, nothing there): a user error."""


@dataclass
class Entry:
    file_uri: str  # the file that identifies the input (manifest, tar, folder)
    locator: str  # row number, relative path or tar member key
    path: str | None = None  # the media file
    caption_raw: bytes | None = None
    caption_path: str | None = None
    tar_offset: int | None = None
    tar_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # extra manifest/sidecar fields
    reject: tuple[str, str] | None = None
    # size and mtime of the files read later (media, caption sidecar), so that
    # editing one of them changes the listing and reruns what depends on it
    stat: str | None = None

    @property
    def source_uri(self) -> str:
        if self.tar_offset is not None or self.path is None:
            return f"{self.file_uri}#{self.locator}"
        return self.path


def detect_format(source: str) -> str:
    low = source.lower()
    if low.endswith((".parquet", ".jsonl", ".json", ".csv", ".tsv")):
        return "manifest"
    if low.endswith(".tar") or "{" in source or "*" in source:
        return "webdataset"
    if fs.is_dir(source):
        return "directory"
    if not fs.exists(source):
        raise SourceError(f"source {source!r} does not exist")
    raise SourceError(f"cannot tell what {source!r} is: give a manifest (.parquet/.jsonl/.csv), "
                      "a folder of images, or .tar shards (set source_format)")


def _abs(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def _resolve_against(base_dir: str, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return fs.join(base_dir, path) if "://" in base_dir else os.path.normpath(os.path.join(base_dir, path))


# -- manifests ------------------------------------------------------------------
def _manifest_rows(uri: str) -> Iterator[tuple[int, dict | None, str]]:
    """(row number, row or None, error) for parquet, jsonl and csv manifests."""
    low = uri.lower()
    filesystem, path = fs.resolve(uri)
    if low.endswith(".parquet"):
        with filesystem.open_input_file(path) as f:
            n = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    yield n, row, ""
                    n += 1
        return
    with filesystem.open_input_stream(path) as raw:
        # surrogateescape keeps invalid UTF-8 bytes so that the caption policy decides.
        # utf-8-sig: a byte-order mark must not become part of the first column's name.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        if low.endswith((".csv", ".tsv")):
            reader = csv.DictReader(text, delimiter="\t" if low.endswith(".tsv") else ",")
            for n, row in enumerate(reader):
                if None in row:
                    yield n, None, f"row {n + 2} has more fields than the header"
                else:
                    yield n, row, ""
            return
        for n, line in enumerate(text):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                yield n, None, f"line {n + 1} is not JSON: {e}"
                continue
            if not isinstance(row, dict):
                yield n, None, f"line {n + 1} is not a JSON object"
                continue
            yield n, row, ""


def list_manifest(uri: str, path_column: str, caption_column: str, url_column: str = "url") -> Iterator[Entry]:
    """Rows of a manifest; the media is at `path_column`, or at `url_column` when the
    manifest has no path column (a URL list)."""
    uri = _abs(uri)
    if not fs.exists(uri):
        raise SourceError(f"manifest {uri} does not exist")
    base = uri.rsplit("/", 1)[0]
    checked = False
    for n, row, error in _manifest_rows(uri):
        if row is None:
            yield Entry(uri, str(n), reject=("bad_manifest_row", f"{uri}: {error}"))
            continue
        if not checked:
            if path_column not in row and url_column in row:
                path_column = url_column
            elif path_column not in row:
                raise SourceError(f"manifest {uri} has no column {path_column!r} or {url_column!r} "
                                  f"(columns: {sorted(row)}); set path_column or url_column")
            if caption_column not in row:
                raise SourceError(f"manifest {uri} has no column {caption_column!r} (columns: {sorted(row)}); "
                                  "set caption_column")
            checked = True
        media, caption = row.get(path_column), row.get(caption_column)
        extra = clean_text({k: v for k, v in row.items() if k not in (path_column, caption_column)})
        if not media or not isinstance(media, str):
            yield Entry(uri, str(n), extra=extra,
                        reject=("missing_path", f"{uri} row {n}: no {path_column!r} value"))
            continue
        yield Entry(uri, str(n), path=_resolve_against(base, media), caption_raw=caption_bytes(caption),
                    extra=extra)


# -- folders with sidecar captions ---------------------------------------------
def list_directory(uri: str, kind: str = "image") -> Iterator[Entry]:
    uri = _abs(uri)
    files = fs.list_files(uri, recursive=True)
    if not files:
        raise SourceError(f"folder {uri} has no files")
    root_len = len(fs.resolve(uri)[1].rstrip("/")) + 1
    rel = {i.path[root_len:]: i for i in files}
    stems_with_media = {os.path.splitext(r)[0] for r in rel if r.lower().endswith(MEDIA_EXTENSIONS[kind])}
    for r in sorted(rel):
        stem, ext = os.path.splitext(r)
        ext = ext.lower()
        full = fs.join(uri, r)
        if ext in MEDIA_EXTENSIONS[kind]:
            txt = next((stem + e for e in CAPTION_EXTENSIONS if stem + e in rel), None)
            extra: dict[str, Any] = {}
            stat = ";".join(f"{rel[f].size}:{rel[f].mtime_ns}" for f in (r, txt) if f)
            entry = Entry(uri, r, path=full, caption_path=fs.join(uri, txt) if txt else None, stat=stat)
            if stem + ".json" in rel:
                try:
                    sidecar = json.loads(fs.read_bytes(fs.join(uri, stem + ".json")))
                    extra = sidecar if isinstance(sidecar, dict) else {"json": sidecar}
                except ValueError as e:
                    extra = {"json_error": f"{stem}.json does not parse: {e}"}
                caption = extra.pop("caption", None)
                if txt is None and isinstance(caption, str):
                    entry.caption_raw = caption_bytes(caption)
            entry.extra = clean_text(extra)
            yield entry
        elif ext in CAPTION_EXTENSIONS + (".json",) and stem in stems_with_media:
            continue  # a sidecar, consumed with its media file
        elif os.path.basename(r).startswith("."):
            continue  # hidden files (.DS_Store, editor swap files) are not inputs
        else:
            yield Entry(uri, r, path=full, reject=("unsupported_file",
                                                  f"{full}: not a {kind} file (extension {ext or 'none'!r})"))


# -- WebDataset tars --------------------------------------------------------------
def expand_tars(pattern: str) -> list[str]:
    import braceexpand

    out: list[str] = []
    for p in braceexpand.braceexpand(pattern):
        if "*" in p and "://" not in p:
            out.extend(sorted(glob.glob(p)))
        else:
            out.append(p)
    if not out:
        raise SourceError(f"no tar files match {pattern!r}")
    return [_abs(p) for p in out]


def list_tars(pattern: str, kind: str = "image") -> Iterator[Entry]:
    for tar_uri in expand_tars(pattern):
        yield from _list_tar(tar_uri, kind)


def _list_tar(tar_uri: str, kind: str) -> Iterator[Entry]:
    filesystem, path = fs.resolve(tar_uri)
    group: dict[str, tarfile.TarInfo] = {}
    key = None
    seen: set[str] = set()
    try:
        with filesystem.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            def flush() -> Entry | None:
                if key is None:
                    return None
                if key in seen:  # webdataset needs a sample's members side by side
                    return Entry(tar_uri, f"{key}!{len(seen)}", reject=(
                        "split_sample", f"{tar_uri}: members of sample {key!r} are not adjacent ({sorted(group)})"))
                seen.add(key)
                return _tar_entry(tar_uri, key, group, tf, kind)

            for m in tf:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                k = os.path.join(os.path.dirname(m.name), base.split(".", 1)[0])
                if k != key:
                    entry = flush()
                    if entry:
                        yield entry
                    key, group = k, {}
                group[base.split(".", 1)[1].lower() if "." in base else ""] = m
            entry = flush()
            if entry:
                yield entry
    except (tarfile.TarError, OSError) as e:
        yield Entry(tar_uri, f"!{key or ''}", reject=(
            "unreadable_source", f"{tar_uri}: not a readable uncompressed tar after member {key!r}: {e}"))


def _tar_entry(tar_uri: str, key: str, members: dict, tf: tarfile.TarFile, kind: str) -> Entry:
    media = next((members[e.lstrip(".")] for e in MEDIA_EXTENSIONS[kind] if e.lstrip(".") in members), None)
    extra: dict[str, Any] = {}
    if "json" in members:
        try:
            meta = json.loads(tf.extractfile(members["json"]).read())
            extra = meta if isinstance(meta, dict) else {"json": meta}
        except ValueError as e:
            extra = {"json_error": f"{key}.json does not parse: {e}"}
    caption = next((tf.extractfile(members[e.lstrip(".")]).read() for e in CAPTION_EXTENSIONS
                    if e.lstrip(".") in members), None)
    json_caption = extra.pop("caption", None)
    if caption is None and isinstance(json_caption, str):
        caption = caption_bytes(json_caption)
    extra = clean_text(extra)
    if media is None:
        return Entry(tar_uri, key, extra=extra, reject=(
            "no_media_member", f"{tar_uri}: sample {key!r} has no {kind} member (has {sorted(members)})"))
    return Entry(tar_uri, key, path=tar_uri, caption_raw=caption, tar_offset=media.offset_data,
                 tar_size=media.size, extra=extra, stat=f"{media.size}:{media.mtime}")
