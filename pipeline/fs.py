"""Filesystem access through pyarrow.fs, so local paths and s3:// share one code path.

Every write is atomic: a local file is written under a temporary name and renamed
into place; an S3 object appears whole when its upload completes. S3 cannot rename
a prefix, so publishing a directory there moves its files one by one, the files
that mark completion (manifest.json, _SUCCESS) last.

s3:// uses the standard AWS environment: credentials, AWS_REGION, and the endpoint
in AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (for MinIO, moto, other S3 services).
"""
from __future__ import annotations

import functools
import io
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


COMMIT_MARKERS = ("manifest.json", "_SUCCESS")  # published last


def progress() -> None:
    from .watchdog import progress as tick

    tick()


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or a URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("s3://"):
        return s3(), uri[len("s3://"):].rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def s3() -> pafs.S3FileSystem:
    """The S3 filesystem for the current AWS environment (endpoint and region)."""
    return _s3(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
               os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    options = {}
    if endpoint:
        options["endpoint_override"] = endpoint
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def is_local(uri: str) -> bool:
    return "://" not in uri


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def list_files(uri: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """Files under a directory, sorted by path; [] if it does not exist."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return f.read()


def read_range(uri: str, offset: int, size: int) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return f.read_at(size, offset)


def _tmp_name(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex[:8]}"


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    if not is_local(uri):  # an object store shows an object only once it is whole
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp = _tmp_name(path)
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def write_parquet(uri: str, table: pa.Table) -> int:
    """Write a table as one parquet file; returns the bytes written."""
    buf = io.BytesIO()
    # Media bytes are already compressed (JPEG, FLAC, ...): zstd on them only burns CPU.
    codecs = {f.name: "none" if pa.types.is_large_binary(f.type) or pa.types.is_binary(f.type) else "zstd"
              for f in table.schema}
    pq.write_table(table, buf, compression=codecs or "zstd")
    data = buf.getvalue()
    write_bytes(uri, data)
    return len(data)


def delete(uri: str) -> None:
    """Delete a file or a directory tree; missing is fine."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def replace_dir(src: str, dst: str) -> None:
    """Move directory src to dst, replacing what dst held."""
    fs, spath = resolve(src)
    _, dpath = resolve(dst)
    if not is_local(src):
        # No prefix rename on object stores: clear dst, move file by file, markers last.
        delete(dst)
        files = [i.path for i in fs.get_file_info(pafs.FileSelector(spath, recursive=True))
                 if i.type == pafs.FileType.File]
        files.sort(key=lambda f: (f.rsplit("/", 1)[-1] in COMMIT_MARKERS, f))
        for f in files:
            fs.move(f, dpath + f[len(spath):])
            progress()  # publishing a big folder file by file is work, not a stall
        delete(src)
        return
    fs.create_dir(dpath.rpartition("/")[0], recursive=True)
    if exists(dst):  # old aside, new in, old gone: dst is never missing
        old = _tmp_name(dpath)
        fs.move(dpath, old)
        fs.move(spath, dpath)
        fs.delete_dir(old)
    else:
        fs.move(spath, dpath)


def read_parquet(uri: str) -> pa.Table:
    filesystem, path = resolve(uri)
    return pq.read_table(path, filesystem=filesystem)


def parquet_rows(uri: str) -> int:
    """Rows in the parquet parts of a directory, from their footers (no data read)."""
    filesystem, _ = resolve(uri)
    return sum(pq.read_metadata(i.path, filesystem=filesystem).num_rows
               for i in list_files(uri) if i.path.endswith(".parquet"))


def read_parquet_dir(uri: str, columns: list[str] | None = None) -> pa.Table | None:
    """All parquet parts of a directory as one table (None when there are none). With
    `columns`, each part gives those of them it has (parts may differ: children carry
    parent_id, their parents do not)."""
    files = [i.path for i in list_files(uri) if i.path.endswith(".parquet")]
    if not files:
        return None
    fs, _ = resolve(uri)
    tables = []
    for f in files:
        cols = None
        if columns is not None:
            names = set(pq.read_schema(f, filesystem=fs).names)
            cols = [c for c in columns if c in names]
        tables.append(pq.read_table(f, filesystem=fs, columns=cols))
    return pa.concat_tables(tables, promote_options="permissive")
