"""Media by reference: bytes are written once, into the run's content-addressed store.

A media column holds references (schemas.MEDIA_REF: uri, offset, size) between
segments, never bytes: a segment that does not change a media column does not
rewrite it, a shuffle that moves rows moves a few dozen bytes per media value, and
a two-gigabyte video is a range of a file, not an Arrow cell.

Stages still see bytes. For each batch the runner resolves the media columns a
stage declares it reads into bytes (`resolve`), and stores the media columns a
stage declares it adds (`store`): the bytes go to `<output>/media/<sha256[:2]>/<sha256>`,
written only when that object is not there yet, and the column becomes references.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pyarrow as pa

from schemas import MEDIA_REF

from . import fs

READ_THREADS = 16  # object stores answer one small read at a time: overlap them


def is_ref(data_type: pa.DataType) -> bool:
    return data_type == MEDIA_REF


def ref(uri: str, size: int, offset: int = 0) -> dict[str, Any]:
    return {"uri": uri, "offset": offset, "size": size}


def read(value: dict[str, Any] | bytes | None) -> bytes | None:
    """The bytes a reference points at (bytes that came in as bytes, from a table, as they are)."""
    if value is None or isinstance(value, (bytes, bytearray)):
        return value
    return fs.read_range(value["uri"], value["offset"], value["size"])


def read_all(values: list[dict | None]) -> list[bytes | None]:
    if len(values) < 4 or all(v is None or fs.is_local(v["uri"]) for v in values):
        return [read(v) for v in values]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(read, values))


def inside(uri: str, roots: list[str]) -> bool:
    """Whether a reference's file is under one of the roots (symlinks followed locally)."""
    import os
    import posixpath

    if "://" in uri:
        if not uri.startswith("s3://"):
            return False
        path = posixpath.normpath(uri[5:])
        return any(path == r or path.startswith(r.rstrip("/") + "/")
                   for r in (posixpath.normpath(x[5:]) for x in roots if x.startswith("s3://")))
    real = os.path.realpath(uri)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep)
               for r in (os.path.realpath(x) for x in roots if "://" not in x))


def check_refs(table: pa.Table, roots: list[str]) -> list[str | None]:
    """Per row, why its media references cannot be trusted (None: they can). A reference
    that comes in with the input must point into a media store or root the job knows:
    the bytes it names are read and published."""
    why: list[str | None] = [None] * table.num_rows
    for f in table.schema:
        if not is_ref(f.type):
            continue
        for i, value in enumerate(table.column(f.name).to_pylist()):
            if value is not None and why[i] is None and not (
                    isinstance(value.get("uri"), str) and inside(value["uri"], roots)
                    and (value.get("offset") or 0) >= 0 and (value.get("size") or 0) >= 0):
                why[i] = f"column {f.name!r}: a media reference outside this run's media store and allowed roots"
    return why


def sizes(table: pa.Table) -> int:
    """Media bytes a table references (the shard writer sizes shards by them)."""
    import pyarrow.compute as pc

    total = 0
    for f in table.schema:
        if is_ref(f.type):
            total += pc.sum(pc.struct_field(table.column(f.name), "size")).as_py() or 0
        elif pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            total += pc.sum(pc.binary_length(table.column(f.name))).as_py() or 0
    return total


class Store:
    """The run's content-addressed media store; `put` returns a reference and the bytes it wrote."""

    def __init__(self, root: str):
        self.root = root

    def put(self, data: bytes) -> tuple[dict[str, Any], int]:
        digest = hashlib.sha256(data).hexdigest()
        uri = fs.join(self.root, digest[:2], digest)
        if fs.exists(uri):  # the same bytes from another row, stage or run: already there
            return ref(uri, len(data)), 0
        fs.write_bytes(uri, data)
        return ref(uri, len(data)), len(data)

    def put_file(self, path: str, move: bool = False) -> tuple[dict[str, Any], int]:
        """A local file into the store, streamed (a long recording is never whole in memory).
        With `move`, a file the caller no longer needs is renamed into place when the store
        is on the same file system (a clip written beside the store), else copied."""
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
        uri = fs.join(self.root, h.hexdigest()[:2], h.hexdigest())
        if fs.exists(uri):
            return ref(uri, size), 0
        if fs.is_local(uri):
            import shutil

            fs.makedirs(uri.rpartition("/")[0])
            if move:
                try:
                    os.replace(path, uri)
                    return ref(uri, size), size
                except OSError:  # another file system: copied below
                    pass
            tmp = f"{uri}.tmp-{os.getpid()}"
            shutil.copyfile(path, tmp)
            os.replace(tmp, uri)
        else:
            filesystem, target = fs.resolve(uri)
            with open(path, "rb") as src, filesystem.open_output_stream(target) as dst:
                for chunk in iter(lambda: src.read(8 << 20), b""):
                    dst.write(chunk)
        return ref(uri, size), size


@contextlib.contextmanager
def local_path(value: dict[str, Any] | bytes) -> Iterator[str]:
    """A path to a media value's bytes for programs that want one (libsndfile, ffmpeg): for a
    reference, the file itself when it is local and whole, else a temporary copy of its
    range, streamed; for bytes, a temporary file holding them. Temporary files go after."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        fd, tmp = tempfile.mkstemp(prefix="mmcurate-media-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(value)
            yield tmp
        finally:
            os.unlink(tmp)
        return
    uri, offset, size = value["uri"], value["offset"], value["size"]
    if fs.is_local(uri) and offset == 0 and os.path.getsize(uri) == size:
        yield uri
        return
    fd, tmp = tempfile.mkstemp(prefix="mmcurate-media-")
    try:
        filesystem, path = fs.resolve(uri)
        with os.fdopen(fd, "wb") as out, filesystem.open_input_file(path) as f:
            f.seek(offset)
            left = size
            while left > 0:
                chunk = f.read(min(left, 8 << 20))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
        yield tmp
    finally:
        os.unlink(tmp)


def resolve(table: pa.Table, columns: list[str]) -> pa.Table:
    """The named reference columns as bytes (large_binary), for a stage that reads them."""
    from .ledger import set_column

    for name in columns:
        if name in table.column_names and is_ref(table.schema.field(name).type):
            data = read_all(table.column(name).to_pylist())
            table = set_column(table, name, pa.array(data, pa.large_binary()))
    return table


def store(table: pa.Table, columns: list[str], media: Store) -> tuple[pa.Table, int]:
    """The named byte columns written to the store and replaced by references; bytes written."""
    from .ledger import set_column

    written = 0
    for name in columns:
        if name not in table.column_names:
            continue
        kind = table.schema.field(name).type
        if is_ref(kind) or pa.types.is_null(kind):
            continue
        if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise TypeError(f"media column {name!r} holds {kind}, not bytes")
        refs = []
        for data in table.column(name).to_pylist():
            if data is None:
                refs.append(None)
                continue
            r, n = media.put(data)
            refs.append(r)
            written += n
        table = set_column(table, name, pa.array(refs, MEDIA_REF))
    return table, written
