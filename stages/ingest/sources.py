"""Listing the inputs of an ingest: manifests, folders with sidecars, WebDataset tars.

Listing reads only manifests, folder listings, tar headers and small sidecars,
never media: each input becomes an `Entry` whose identity (file URI + locator) is
fixed before any media I/O. An input that cannot even be listed becomes an Entry
with a reject, so that it is accounted for like any other; one bad row, name or
member never stops the listing.

Sources are untrusted. A manifest's paths must resolve (symlinks followed) inside
the manifest's folder or a root the job allows (`Roots`); a URL list holds
http(s) URLs only (s3:// where a root allows it); a folder is walked without
following symbolic links out of it; a tar's symbolic links are rejected and its
hard links resolve to the member they name.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import pyarrow.parquet as pq

from pipeline import fs
from pipeline.stage import SourceError  # noqa: F401 - raised here, imported from here by the ingest stages

MEDIA_EXTENSIONS = {
    "image": (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"),
    "audio": (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".webm"),
    "video": (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".ogv", ".3gp"),
}
TIMED_KINDS = ("audio", "video")  # media whose timed text (transcripts, subtitles) is read
CAPTION_EXTENSIONS = (".txt", ".caption")
TIMED_EXTENSIONS = (".srt", ".vtt")  # timed transcripts beside a recording (and .json with "segments")
MAX_CELL = 128 << 10  # a manifest cell (caption, path, URL) this long is no caption, path or URL
CSV_PARSE_LIMIT = 16 << 20  # a "field" this long is an unterminated quote eating the file
MAX_RECORD_LINES = 64  # a CSV record spanning more lines is an unterminated quote, not a caption
MAX_SIDECAR = 4 << 20  # captions and .json sidecars are read at listing: keep them small
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


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


def caption_bytes(value: str | bytes | None) -> bytes | None:
    """A caption as the bytes it came in, so that the caption policy decides about bad UTF-8."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud83d escape
        return value.encode("utf-8", "surrogatepass")


def printable_name(name: str) -> str:
    """A file or member name fit for an id and a message: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


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
    timed: list | None = None  # a timed transcript: [{start, end, text}]

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


def _local_stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


# -- where a manifest may point -------------------------------------------------
class Roots:
    """The folders a manifest's paths may resolve into: its own folder and the job's
    allowed_roots (local folders or s3://bucket/prefix)."""

    def __init__(self, manifest_dir: str, allowed: list[str] | tuple[str, ...] = ()):
        self.local: list[str] = []
        self.remote: list[str] = []
        for root in [manifest_dir, *allowed]:
            if root.startswith("s3://"):
                self.remote.append(posixpath.normpath(root[len("s3://"):]).strip("/"))
            elif "://" in root:
                raise SourceError(f"allowed root {root!r}: only local folders and s3:// prefixes can be roots")
            else:
                self.local.append(os.path.realpath(root))

    def local_inside(self, path: str) -> str | None:
        """The real path (symlinks followed) when it is inside a local root, else None."""
        real = os.path.realpath(path)
        return real if any(_under(real, r, os.sep) for r in self.local) else None

    def remote_inside(self, uri: str) -> str | None:
        """A normalised s3:// URI when it is inside an s3 root, else None."""
        key = posixpath.normpath(uri[len("s3://"):])
        if key.startswith("..") or "/../" in f"/{key}/":
            return None
        return f"s3://{key}" if any(_under(key, r, "/") for r in self.remote) else None


def _under(path: str, root: str, sep: str) -> bool:
    return path == root or path.startswith(root.rstrip(sep) + sep)


def resolve_path(value: str, base_dir: str, roots: Roots) -> tuple[str | None, tuple[str, str] | None]:
    """A manifest's `path` value as (where to read it, None) or (None, reject)."""
    shown = value[:300]
    if value.startswith(("http://", "https://")):
        return check_url(value, roots)
    scheme = SCHEME.match(value)
    if value.startswith("file:"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            return None, ("unsupported_scheme", f"{shown}: file URLs of other hosts are not read")
        value = unquote(parts.path)
    elif value.startswith("s3://"):
        inside = roots.remote_inside(value)
        return (inside, None) if inside else (None, ("path_outside_root", f"{shown}: outside the manifest's "
                                                     "folder and allowed_roots"))
    elif scheme and "://" in value:
        return None, ("unsupported_scheme", f"{shown}: scheme {scheme.group(1)!r} is not read "
                                            "(local paths, s3:// and http(s) only)")
    if "\0" in value:
        return None, ("bad_path", f"{shown!r}: a path with a NUL byte")
    if base_dir.startswith("s3://") and not os.path.isabs(value):
        return resolve_path(f"{base_dir.rstrip('/')}/{value}", base_dir, roots)
    local = value if os.path.isabs(value) else os.path.join(base_dir, value)
    real = roots.local_inside(local)
    if real is None:
        return None, ("path_outside_root", f"{shown}: resolves outside the manifest's folder and allowed_roots")
    return real, None


def check_url(value: str, roots: Roots) -> tuple[str | None, tuple[str, str] | None]:
    """A URL list's value as (URL, None) or (None, reject): http(s) only, s3:// inside a root."""
    shown = value[:300]
    scheme = SCHEME.match(value)
    if not scheme or "://" not in value:
        return None, ("bad_url", f"{shown!r} is not a URL")
    name = scheme.group(1).lower()
    if name == "s3":
        if not roots.remote:
            return None, ("unsupported_scheme", f"{shown}: s3:// URLs are read only inside allowed_roots "
                                                "that name their bucket")
        inside = roots.remote_inside(value)
        return (inside, None) if inside else (None, ("path_outside_root", f"{shown}: outside allowed_roots"))
    if name not in ("http", "https"):
        return None, ("unsupported_scheme", f"{shown}: scheme {name!r} is not downloaded (http and https only)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError as e:
        return None, ("bad_url", f"{shown}: {e}")
    if not host or any(c.isspace() for c in value):
        return None, ("bad_url", f"{shown}: no host, or white space in the URL")
    return value, None


# -- manifests ------------------------------------------------------------------
def _too_large(row: dict) -> str | None:
    for k, v in row.items():
        if isinstance(v, (str, bytes)) and len(v) > MAX_CELL:
            return f"column {str(k)[:100]!r} holds {len(v)} characters (at most {MAX_CELL})"
    return None


def _csv_rows(text, delimiter: str, uri: str) -> Iterator[tuple[int, dict | None, tuple[str, str] | None]]:
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise SourceError(f"{uri}: the header line does not parse as CSV: {e}") from None
    n = 0
    while True:
        first = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if "field larger than field limit" in str(e) or "unexpected end of data" in str(e):
                yield n, None, ("bad_manifest_row", f"{uri}: a quote opened in the record at line {first} is "
                                "never closed: it swallows the rest of the file, which is not read")
                return
            yield n, None, ("bad_manifest_row", f"{uri}: record at lines {first}-{reader.line_num} is not "
                            f"valid CSV: {e}")
            n += 1
            continue
        if not values:
            continue  # a blank line
        last = reader.line_num
        if last - first >= MAX_RECORD_LINES:
            why = ("bad_manifest_row", f"{uri}: the record at line {first} spans {last - first + 1} lines: "
                   "an unterminated quote?")
        elif len(values) != len(header):
            why = ("bad_manifest_row", f"{uri}: line {first} has {len(values)} fields, the header {len(header)}")
        else:
            why = None
        yield n, (None if why else dict(zip(header, values))), why
        n += 1


def _manifest_rows(uri: str) -> Iterator[tuple[int, dict | None, tuple[str, str] | None]]:
    """(row number, row or None, reject) for parquet, jsonl and csv manifests."""
    low = uri.lower()
    filesystem, path = fs.resolve(uri)
    if low.endswith(".parquet"):
        with filesystem.open_input_file(path) as f:
            n = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    yield n, row, None
                    n += 1
        return
    with filesystem.open_input_stream(path) as raw:
        # surrogateescape keeps invalid UTF-8 bytes so that the caption policy decides.
        # utf-8-sig: a byte-order mark must not become part of the first column's name.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        if low.endswith((".csv", ".tsv")):
            previous = csv.field_size_limit(CSV_PARSE_LIMIT)
            try:
                yield from _csv_rows(text, "\t" if low.endswith(".tsv") else ",", uri)
            finally:
                csv.field_size_limit(previous)
            return
        for n, line in enumerate(text):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                yield n, None, ("bad_manifest_row", f"{uri}: line {n + 1} is not JSON: {e}")
                continue
            if not isinstance(row, dict):
                yield n, None, ("bad_manifest_row", f"{uri}: line {n + 1} is not a JSON object")
                continue
            yield n, row, None


def _caption_value(value: Any) -> tuple[bytes | None, str | None]:
    """(caption bytes, None) or (None, why it is no text). A missing value (None, NaN)
    is no caption; a number or a list is not text and is never turned into one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    if isinstance(value, (str, bytes)):
        return caption_bytes(value), None
    return None, f"the caption is a {type(value).__name__}, not text"


def list_manifest(uri: str, path_column: str, text_column: str, url_column: str = "url",
                  allowed_roots: list[str] | tuple[str, ...] = (), other_path_columns: tuple[str, ...] = ()
                  ) -> Iterator[Entry]:
    """Rows of a manifest; the media is at `path_column`, or at `url_column` when the
    manifest has no path column (a URL list)."""
    uri = _abs(uri)
    if not fs.exists(uri):
        raise SourceError(f"manifest {uri} does not exist")
    base = uri.rsplit("/", 1)[0]
    roots = Roots(base, allowed_roots)
    checked = urls = False
    for n, row, why in _manifest_rows(uri):
        if row is None:
            yield Entry(uri, str(n), reject=why)
            continue
        if not checked:
            if path_column not in row and url_column not in row:  # a convention of the field (NeMo's)
                path_column = next((c for c in other_path_columns if c in row), path_column)
            if path_column not in row and url_column in row:
                path_column, urls = url_column, True
            elif path_column not in row:
                raise SourceError(f"manifest {uri} has no column {path_column!r} or {url_column!r} "
                                  f"(columns: {sorted(map(str, row))[:50]}); set path_column or url_column")
            if text_column not in row:
                raise SourceError(f"manifest {uri} has no column {text_column!r} "
                                  f"(columns: {sorted(map(str, row))[:50]}); set text_column")
            checked = True
        extra = clean_text({str(k): v for k, v in row.items() if k not in (path_column, text_column)})
        too_large = _too_large(row)
        if too_large:
            yield Entry(uri, str(n), extra={}, reject=("field_too_large", f"{uri} row {n}: {too_large}"))
            continue
        media = row.get(path_column)
        caption, not_text = _caption_value(row.get(text_column))
        if not_text:
            yield Entry(uri, str(n), extra=extra, reject=("caption_not_text", f"{uri} row {n}: {not_text}"))
            continue
        if not media or not isinstance(media, str):
            yield Entry(uri, str(n), extra=extra,
                        reject=("missing_path", f"{uri} row {n}: no {path_column!r} value"))
            continue
        where, why = check_url(media, roots) if urls else resolve_path(media, base, roots)
        if why:
            reason, detail = why
            yield Entry(uri, str(n), extra=extra, reject=(reason, f"{uri} row {n}: {clean_text(detail)}"))
            continue
        stat = _local_stat(where) if "://" not in where else None
        yield Entry(uri, str(n), path=where, caption_raw=caption, extra=extra, stat=stat)


# -- folders with sidecar captions ---------------------------------------------
def _walk_local(root: str) -> tuple[dict[str, tuple[str, int, int]], list[Entry]]:
    """{relative path: (path to read, size, mtime)} of a local folder's files, without
    following symbolic links out of it (or into loops); and rejects for what is skipped."""
    real_root = os.path.realpath(root)
    files: dict[str, tuple[str, int, int]] = {}
    skipped: list[Entry] = []

    def skip(rel: str, reason: str, detail: str) -> None:
        name = printable_name(rel)
        skipped.append(Entry(root, name, path=None, reject=(reason, f"{printable_name(root)}/{name}: {detail}")))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.islink(full):  # os.walk does not enter it
                skip(os.path.relpath(full, root), "symlink_not_followed",
                     "a symbolic link to a folder; linked folders are not walked")
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if not _is_utf8(rel):
                skip(rel, "bad_file_name", "the name is not valid UTF-8; rename the file")
                continue
            real = os.path.realpath(full)
            if not _under(real, real_root, os.sep):
                skip(rel, "path_outside_root", "a symbolic link that points outside the folder")
                continue
            try:
                st = os.stat(real)
            except OSError:
                skip(rel, "missing_file", "a broken symbolic link")
                continue
            if not os.path.isfile(real):
                skip(rel, "unsupported_file", "not a regular file")
                continue
            files[rel] = (real, st.st_size, st.st_mtime_ns)
    return files, skipped


def _walk_remote(uri: str) -> dict[str, tuple[str, int, int]]:
    root_len = len(fs.resolve(uri)[1].rstrip("/")) + 1
    return {i.path[root_len:]: (fs.join(uri, i.path[root_len:]), i.size, i.mtime_ns or 0)
            for i in fs.list_files(uri, recursive=True)}


def _timed(uri: str, size: int) -> tuple[list | None, tuple[str, str] | None]:
    """A timed transcript sidecar, parsed: (cues, None) or (None, reject)."""
    from .transcripts import TranscriptError, parse

    try:
        return parse(uri, _read_sidecar(uri, size)), None
    except (TranscriptError, ValueError, OSError) as e:
        return None, ("bad_transcript", f"{uri}: {str(e)[:200]}")


def _read_sidecar(uri: str, size: int) -> bytes:
    if size > MAX_SIDECAR:
        raise ValueError(f"{size} bytes (at most {MAX_SIDECAR} are read)")
    return fs.read_bytes(uri)


def list_directory(uri: str, kind: str = "image") -> Iterator[Entry]:
    uri = _abs(uri)
    if fs.is_local(uri):
        if not os.path.isdir(uri):
            raise SourceError(f"folder {uri} does not exist")
        rel, skipped = _walk_local(uri)
    else:
        rel, skipped = _walk_remote(uri), []
    if not rel and not skipped:
        raise SourceError(f"folder {uri} has no files")
    yield from skipped
    stems_with_media = {os.path.splitext(r)[0] for r in rel if r.lower().endswith(MEDIA_EXTENSIONS[kind])}
    for r in sorted(rel):
        stem, ext = os.path.splitext(r)
        ext = ext.lower()
        full = rel[r][0]
        if ext in MEDIA_EXTENSIONS[kind]:
            txt = next((stem + e for e in CAPTION_EXTENSIONS if stem + e in rel), None)
            extra: dict[str, Any] = {}
            stat = ";".join(f"{rel[f][1]}:{rel[f][2]}" for f in (r, txt) if f)
            entry = Entry(uri, r, path=full, caption_path=rel[txt][0] if txt else None, stat=stat)
            timed = next((stem + e for e in TIMED_EXTENSIONS if stem + e in rel), None)
            if timed:
                entry.timed, why = _timed(rel[timed][0], rel[timed][1])
                entry.reject = entry.reject or why
            if txt and rel[txt][1] > MAX_SIDECAR:
                entry.reject = ("sidecar_too_large", f"{fs.join(uri, txt)}: {rel[txt][1]} bytes "
                                                     f"(a caption has at most {MAX_SIDECAR})")
            if stem + ".json" in rel:
                try:
                    sidecar = json.loads(_read_sidecar(rel[stem + ".json"][0], rel[stem + ".json"][1]))
                    extra = sidecar if isinstance(sidecar, dict) else {"json": sidecar}
                except (ValueError, OSError) as e:
                    extra = {"json_error": f"{stem}.json does not parse: {str(e)[:300]}"}
                caption = extra.pop("caption", None)
                if txt is None and isinstance(caption, str):
                    entry.caption_raw = caption_bytes(caption)
                if kind in TIMED_KINDS and entry.timed is None and isinstance(extra.get("segments"), list):
                    from .transcripts import TranscriptError, parse_segments

                    try:
                        entry.timed = parse_segments(extra.pop("segments"))
                    except TranscriptError as e:
                        entry.reject = ("bad_transcript", f"{fs.join(uri, stem)}.json: {e}")
            entry.extra = clean_text(extra)
            yield entry
        elif ext in CAPTION_EXTENSIONS + TIMED_EXTENSIONS + (".json",) and stem in stems_with_media:
            continue  # a sidecar, consumed with its media file
        elif os.path.basename(r).startswith("."):
            continue  # hidden files (.DS_Store, editor swap files) are not inputs
        else:
            yield Entry(uri, r, path=full, reject=("unsupported_file",
                                                  f"{fs.join(uri, r)}: not a {kind} file (extension {ext or 'none'!r})"))


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
    for entry in _tar_entries(tar_uri, kind):
        if entry.stat is not None:  # the tar's own size and time: a rewritten tar reruns what read it
            entry.stat = f"{entry.stat};{_tar_stat(tar_uri)}"
        yield entry


def _tar_stat(tar_uri: str) -> str:
    info = fs.resolve(tar_uri)[0].get_file_info(fs.resolve(tar_uri)[1])
    return f"{info.size}:{info.mtime_ns}"


def _tar_entries(tar_uri: str, kind: str) -> Iterator[Entry]:
    """One Entry per sample (members side by side that share a key), in tar order.

    A hard link stands for the regular member it names; a symbolic link, a device
    or a fifo makes its sample a reject; a member name that is not UTF-8 is a reject
    of its own. A key that comes back after other keys is a split sample (webdataset
    reads a sample's members side by side), rejected under a locator of its own."""
    filesystem, path = fs.resolve(tar_uri)
    group: dict[str, tarfile.TarInfo] = {}
    odd: list[str] = []  # why this sample's members cannot be read
    key: str | None = None
    first_offset = 0
    seen: set[str] = set()
    regular: dict[str, tarfile.TarInfo] = {}  # hard-link targets, by normalised name
    try:
        with filesystem.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            def flush() -> Entry | None:
                if key is None:
                    return None
                if key in seen:  # webdataset needs a sample's members side by side
                    return Entry(tar_uri, f"{key}@{first_offset}", reject=(
                        "split_sample", f"{tar_uri}: members of sample {key!r} at byte {first_offset} are not "
                                        f"next to its earlier members ({sorted(group)})"))
                seen.add(key)
                if odd:
                    return Entry(tar_uri, key, reject=(odd[0].split(":", 1)[0],
                                                       f"{tar_uri}: sample {key!r}: {odd[0].split(':', 1)[1]}"))
                return _tar_entry(tar_uri, key, group, tf, kind)

            for m in tf:
                if m.isdir():
                    continue
                if not _is_utf8(m.name):
                    entry = flush()
                    if entry:
                        yield entry
                    key, group, odd = None, {}, []
                    name = printable_name(m.name)
                    yield Entry(tar_uri, f"{name}@{m.offset}", reject=(
                        "bad_member_name", f"{tar_uri}: member '{name[:200]}' at byte {m.offset}: the name is "
                                           "not valid UTF-8"))
                    continue
                base = os.path.basename(m.name)
                k = os.path.join(os.path.dirname(m.name), base.split(".", 1)[0])
                if k != key:
                    entry = flush()
                    if entry:
                        yield entry
                    key, group, odd, first_offset = k, {}, [], m.offset
                ext = base.split(".", 1)[1].lower() if "." in base else ""
                if m.isfile():
                    regular[posixpath.normpath(m.name)] = m
                    group[ext] = m
                elif m.islnk():
                    target = regular.get(posixpath.normpath(m.linkname))
                    if target is None:
                        odd.append(f"broken_link:member {base!r} is a hard link to {m.linkname[:200]!r}, "
                                   "which is not an earlier regular member")
                    else:
                        group[ext] = target
                elif m.issym():
                    odd.append(f"symlink_member:member {base!r} is a symbolic link; links are not followed")
                else:
                    odd.append(f"unsupported_member:member {base!r} is not a regular file (type {m.type!r})")
            entry = flush()
            if entry:
                yield entry
    except (tarfile.TarError, OSError, EOFError) as e:
        yield Entry(tar_uri, f"!{key or ''}", reject=(
            "unreadable_source", f"{tar_uri}: not a readable uncompressed tar after member {key!r}: {e}"))


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_SIDECAR:
        raise ValueError(f"{member.size} bytes (at most {MAX_SIDECAR} are read)")
    return tf.extractfile(member).read()


def _tar_entry(tar_uri: str, key: str, members: dict, tf: tarfile.TarFile, kind: str) -> Entry:
    media = next((members[e.lstrip(".")] for e in MEDIA_EXTENSIONS[kind] if e.lstrip(".") in members), None)
    extra: dict[str, Any] = {}
    if "json" in members:
        try:
            meta = json.loads(_read_member(tf, members["json"]))
            extra = meta if isinstance(meta, dict) else {"json": meta}
        except ValueError as e:
            extra = {"json_error": f"{key}.json does not parse: {str(e)[:300]}"}
    try:
        caption = next((_read_member(tf, members[e.lstrip(".")]) for e in CAPTION_EXTENSIONS
                        if e.lstrip(".") in members), None)
    except ValueError as e:
        return Entry(tar_uri, key, reject=("sidecar_too_large", f"{tar_uri}: sample {key!r}: caption member: {e}"))
    json_caption = extra.pop("caption", None)
    if caption is None and isinstance(json_caption, str):
        caption = caption_bytes(json_caption)
    timed = None
    timed_member = next((e.lstrip(".") for e in TIMED_EXTENSIONS if e.lstrip(".") in members), None)
    if kind in TIMED_KINDS and timed_member:
        from .transcripts import TranscriptError, parse

        try:
            timed = parse(f"x.{timed_member}", _read_member(tf, members[timed_member]))
        except (TranscriptError, ValueError) as e:
            return Entry(tar_uri, key, reject=("bad_transcript", f"{tar_uri}: sample {key!r}: {str(e)[:200]}"))
    extra = clean_text(extra)
    if media is None:
        return Entry(tar_uri, key, extra=extra, reject=(
            "no_media_member", f"{tar_uri}: sample {key!r} has no {kind} member (has {sorted(members)})"))
    return Entry(tar_uri, key, path=tar_uri, caption_raw=caption, timed=timed, tar_offset=media.offset_data,
                 tar_size=media.size, extra=extra, stat=f"{media.size}:{media.mtime}")
