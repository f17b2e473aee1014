"""Stage `shard_webdataset`: kept samples into WebDataset tars, an index and a manifest.

Samples are ordered by a 64-bit hash of their sample_id, inside and across
shards, and every shard but the last holds exactly the same number of samples
(samples_per_shard, fewer when that many would average more than bytes_per_shard
of media). The result is the same for the same input and parameters, however Ray
lays out the blocks.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from pipeline import fs, media
from pipeline.ledger import SAFE_ID
from pipeline.shuffle import PART, apply_by_part, hash_partition, read_columns
from pipeline.watchdog import gather
from pipeline.stage import Column, Params, Resources, Stage

EMBEDDING_SUFFIX = "_emb"  # DESIGN.md: feature columns are <model family>_<input>_emb

SHARD = "_shard"  # the shard a row goes to, from its rank in the hash order
BIN_BITS = 16
ROWS_PER_RANKER = 500_000  # rows one ranking task sorts, about


class ShardWebDatasetParams(Params):
    name: str = Field("shard", pattern=r"^[A-Za-z0-9_-]+$", description="shard file prefix: <name>-000000.tar")
    samples_per_shard: int = Field(10_000, ge=1, description="target samples per shard (img2dataset's default)")
    bytes_per_shard: int = Field(1_000_000_000, ge=1_000_000,
                                 description="target media bytes per shard (100 MB - 1 GB is common)")
    first_shard: int = Field(0, ge=0, le=999_999, description="the first shard's number (a refresh continues the "
                                                               "numbering of the release before)")
    leave_out: list[str] = Field(default_factory=list, description="columns written neither as members nor into "
                                                                   "the .json (intermediates, such as "
                                                                   "code_without_docs)")

    @field_validator("leave_out")
    @classmethod
    def _not_identity(cls, v: list[str]) -> list[str]:
        needed = {"sample_id", "meta"} & set(v)
        if needed:
            raise ValueError(f"{sorted(needed)} name the sample; they cannot be left out")
        return v


def order_key(sample_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The 64-bit hash that orders samples in and across shards."""
    return np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")
                     for s in sample_ids.to_pylist()], dtype=np.uint64)


def _bins(sample_ids) -> np.ndarray:
    """The top BIN_BITS of each order key: contiguous ranges of the hash order."""
    return (order_key(sample_ids) >> np.uint64(64 - BIN_BITS)).astype(np.int64)


def _census(part: str, media_cols: list[str]) -> tuple[np.ndarray, int]:
    """(rows per bin, media bytes) of one part, from its ids and media references only."""
    t = read_columns(part, ["sample_id", *media_cols])
    return np.bincount(_bins(t.column("sample_id")), minlength=1 << BIN_BITS), media.sizes(t)


class _Ranker:
    """Reduce side of the narrow shuffle: a group of contiguous bins, sorted by order key,
    gives each row its global rank (the rows of earlier bins come first) and its shard."""

    def __init__(self, first_rank: np.ndarray, per_shard: int):
        self.first_rank, self.per_shard = first_rank, per_shard

    def __call__(self, group: int, t: pa.Table) -> pa.Table:
        if not t.num_rows:
            return pa.table({"sample_id": pa.array([], pa.string()), PART: pa.array([], pa.int64()),
                             SHARD: pa.array([], pa.int64())})
        order = order_key(t.column("sample_id"))
        idx = np.argsort(order, kind="stable")
        first = self.first_rank[int(order[idx[0]] >> np.uint64(64 - BIN_BITS))]
        shard = np.empty(len(idx), np.int64)
        shard[idx] = (first + np.arange(len(idx))) // self.per_shard
        return pa.table({"sample_id": t.column("sample_id"), PART: t.column(PART), SHARD: pa.array(shard)})


class _TarStream:
    """A tar archive written member by member: the members are gathered into chunks of
    about CHUNK bytes, and one background thread hashes and writes each chunk in order
    (hashlib and file writes let go of the GIL), while the caller reads the next media and
    builds the next records. At most two chunks are held at once. As a context manager it
    ends the archive on success and, either way, leaves no write in flight behind it."""

    CHUNK = 4 << 20

    def __init__(self, out):
        from concurrent.futures import ThreadPoolExecutor

        self.out, self.sha, self.size = out, hashlib.sha256(), 0
        self.pieces: list[bytes] = []
        self.held = 0
        self.pool, self.pending = ThreadPoolExecutor(1), None

    def member(self, name: str, data: bytes) -> None:
        """Header, data, padding to 512 bytes (what tarfile.addfile writes, without its
        per-10 KiB Python buffering)."""
        raw = name.encode()
        if len(raw) < 100 and len(data) < 8 ** 11:
            self._add(_ustar_header(raw, len(data)))
        else:  # long names and members of 8 GiB or more need a pax header
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._add(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._add(data)
        if len(data) % tarfile.BLOCKSIZE:
            self._add(tarfile.NUL * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))

    def close(self) -> None:
        """Two zero blocks, then zeros up to a whole 10 KiB record, as tarfile does on close."""
        self._add(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        if self.size % tarfile.RECORDSIZE:
            self._add(tarfile.NUL * (tarfile.RECORDSIZE - self.size % tarfile.RECORDSIZE))
        self._flush()
        self.pending.result()

    def __enter__(self) -> "_TarStream":
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            if kind is None:
                self.close()
        finally:
            self.pool.shutdown(wait=True)  # the output stream closes after this

    def _add(self, b: bytes) -> None:
        self.pieces.append(b)
        self.size += len(b)
        self.held += len(b)
        if self.held >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        chunk, self.pieces, self.held = b"".join(self.pieces), [], 0
        if self.pending is not None:
            self.pending.result()  # in order; and an error of the last write surfaces here
        self.pending = self.pool.submit(self._write, chunk)

    def _write(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.out.write(chunk)


def _ustar_header(name: bytes, size: int) -> bytes:
    """A POSIX ustar header with fixed metadata (mode 0444, uid/gid 0, mtime 0): same
    input, same bytes. Built directly: tarfile.TarInfo.tobuf cost half the write time."""
    head = (name.ljust(100, b"\0") + b"0000444\0" + b"0000000\0" * 2 + b"%011o\0" % size
            + b"00000000000\0")
    checksum = sum(head) + _TAIL_SUM + 8 * 32  # the checksum field counts as eight spaces
    return head + b"%06o\0 " % checksum + _TAIL


_TAIL = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * (32 + 32 + 8 + 8 + 155 + 12)
_TAIL_SUM = sum(_TAIL)


def _npy(value: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def members(schema: pa.Schema, columns: dict[str, Column]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(media, text, embedding, json) columns of a table, by what the stages declared.
    Bytes that no stage declared a format for are an error, never dropped."""
    names = [n for n in schema.names if not n.startswith("_")]
    kind = {n: columns[n].kind if n in columns else None for n in names}
    media_cols = [n for n in names if kind[n] == "media"]
    texts = [n for n in names if kind[n] == "text"]
    embeddings = sorted(n for n in names if kind[n] == "embedding" or (
        kind[n] is None and n.endswith(EMBEDDING_SUFFIX) and pa.types.is_list(schema.field(n).type)))
    for n in names:
        t = schema.field(n).type
        if n not in media_cols and (media.is_ref(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
            raise ValueError(f"column {n!r} holds bytes, but no stage of the job declares it as media with a "
                             "format: it would not know its member name in the shards")
    rest = [n for n in names if n not in media_cols and n not in texts and n not in embeddings]
    return media_cols, texts, embeddings, rest


class _ShardWriter:
    """Reduce side of the wide shuffle: the rows of one shard, in hash order, written as
    <tmp>/<name>-NNNNNN.tar plus its parquet index (None for no rows)."""

    def __init__(self, tmp_dir: str, name: str, columns: dict[str, Column], leave_out: list[str], first: int = 0):
        self.tmp_dir, self.name, self.columns, self.leave_out, self.first = tmp_dir, name, columns, leave_out, first

    def _extension(self, column: str, row: dict[str, Any]) -> str:
        fmt = self.columns[column].format
        return str(row[fmt[1:]]) if fmt.startswith("@") else fmt

    def __call__(self, shard: int, group: pa.Table) -> dict[str, Any] | None:
        if not group.num_rows:
            return None
        group = group.take(pa.array(np.argsort(order_key(group.column("sample_id")), kind="stable")))
        group = group.drop_columns([c for c in (SHARD, PART, *self.leave_out) if c in group.column_names])
        shard += self.first
        base = fs.join(self.tmp_dir, f"{self.name}-{shard:06d}")
        media_cols, texts, embeddings, scalars = members(group.schema, self.columns)
        filesystem, path = fs.resolve(base + ".tar")
        counts: dict[str, int] = {}
        # to_numpy keeps each embedding's dtype (float16 stays float16); to_pylist would not.
        vectors = {c: group.column(c).combine_chunks().to_numpy(zero_copy_only=False) for c in embeddings}
        with filesystem.open_output_stream(path, buffer_size=0) as raw, _TarStream(raw) as sink:
            for i, row in enumerate(group.drop_columns(embeddings).to_pylist()):
                key = row["sample_id"]
                if not SAFE_ID.fullmatch(key):  # listing makes every id safe; never write a path as a name
                    raise ValueError(f"sample_id {key[:200]!r} is not a safe WebDataset key ({SAFE_ID.pattern})")
                for col in media_cols + texts:
                    if row[col] is None:
                        continue
                    ext = self._extension(col, row)
                    value = media.read(row[col]) if col in media_cols else row[col].encode()
                    sink.member(f"{key}.{ext}", value)
                    counts[ext] = counts.get(ext, 0) + 1
                record = {c: row[c] for c in scalars if c != "meta"}
                record["meta"] = json.loads(row["meta"]) if row.get("meta") else {}
                sink.member(f"{key}.json", json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
                counts["json"] = counts.get("json", 0) + 1
                for col in embeddings:
                    if vectors[col][i] is not None:
                        sink.member(f"{key}.{col}.npy", _npy(vectors[col][i]))
                        counts[f"{col}.npy"] = counts.get(f"{col}.npy", 0) + 1
        index = group.select(scalars + texts + embeddings)
        index = index.add_column(0, "__key__", group.column("sample_id"))
        fs.write_parquet(base + ".parquet", index)
        return {"shard": shard, "samples": group.num_rows, "bytes": sink.size, "sha256": sink.sha.hexdigest(),
                "first_key": group.column("sample_id")[0].as_py(), "members": counts}


class ShardWebDataset(Stage):
    """Writes the kept samples as WebDataset tars with a parquet index each and a manifest."""

    name = "shard_webdataset"
    kind = "sink"
    Params = ShardWebDatasetParams
    resources = Resources(num_cpus=1, batch_size=256)

    def per_shard(self, samples: int, media_bytes: int) -> int:
        """Samples per shard: samples_per_shard, fewer when shards of that many would hold
        more than bytes_per_shard of media on average."""
        p = self.params
        if not samples or not media_bytes:
            return p.samples_per_shard
        return max(1, min(p.samples_per_shard, int(p.bytes_per_shard * samples // media_bytes)))

    def write(self, ds, ctx) -> dict[str, Any]:
        """Exactly `per_shard` samples in every shard but the last, in the hash order of
        their ids, whatever the parts: a census of the order keys by bin, then each row's
        rank from a narrow shuffle by contiguous bins, then the rows by shard."""
        import ray

        tmp = ctx.run.tmp_dir("shards", ctx.segment)
        fs.makedirs(tmp)
        written: list[dict[str, Any]] = []
        if ctx.parts and ctx.upstream_kept:
            media_cols = [c for c, d in ctx.columns.items() if d.kind == "media"]
            census = gather([ray.remote(_census).remote(part, media_cols) for part in ctx.parts])
            counts = np.sum([c for c, _ in census], axis=0)
            per_shard = self.per_shard(int(counts.sum()), sum(b for _, b in census))
            first_rank = np.cumsum(counts) - counts
            group_of_bin = np.cumsum(counts) // ROWS_PER_RANKER  # contiguous bins, about ROWS_PER_RANKER rows each
            groups = int(group_of_bin[-1]) + 1
            n_shards = -(-int(counts.sum()) // per_shard)
            ctx.phase(f"{int(counts.sum())} samples into {n_shards} shards of {per_shard}")
            ranked = hash_partition(ctx.parts, groups, lambda t: group_of_bin[_bins(t.column("sample_id"))],
                                    _Ranker(first_rank, per_shard), fetch=False, columns=["sample_id"],
                                    tag_first=len(ctx.parts))
            rows = apply_by_part(ctx.parts, ranked, lambda t: t, fetch=False)
            writer = _ShardWriter(tmp, self.params.name, ctx.columns, self.params.leave_out,
                                  self.params.first_shard)
            written = [w for w in hash_partition(rows, n_shards, lambda t: t.column(SHARD).to_numpy(), writer)
                       if w is not None]
        shards = []
        for w in sorted(written, key=lambda w: w["shard"]):
            name = f"{self.params.name}-{w['shard']:06d}"
            entry = {"name": f"{name}.tar", "samples": w["samples"], "bytes": w["bytes"], "sha256": w["sha256"]}
            stats = {**entry, "first_key": w["first_key"], "members": w["members"], "index": f"{name}.parquet"}
            fs.write_bytes(fs.join(tmp, f"{name}_stats.json"), json.dumps(stats, indent=1).encode())
            shards.append(entry)
        total = sum(s["samples"] for s in shards)
        if total != ctx.upstream_kept:  # never publish shards that lost or doubled samples
            raise RuntimeError(f"{ctx.segment}: shards hold {total} samples, {ctx.upstream_kept} were given")
        # The manifest is written last: a shard directory with a manifest is complete.
        manifest = {"version": 1, "shards": shards}
        fs.write_bytes(fs.join(tmp, "manifest.json"), json.dumps(manifest, indent=1).encode())
        ctx.check_lock()  # a run that lost its lock publishes nothing
        fs.replace_dir(tmp, ctx.run.shards)
        return {"samples": total, "shards": len(shards), "shard_dir": ctx.run.shards,
                "bytes": sum(s["bytes"] for s in shards)}


def register_gopen() -> None:
    """Let webdataset open s3:// (and other pyarrow.fs) URLs through pyarrow.fs, with the
    same AWS environment as the pipeline: wds.WebDataset("s3://bucket/shards/x-{000000..000009}.tar")."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the module; webdataset.gopen is also a function

    def open_with_pyarrow(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
        filesystem, path = fs.resolve(url)
        return filesystem.open_input_stream(path, buffer_size=1 << 20)

    gopen.gopen_schemes["s3"] = open_with_pyarrow
