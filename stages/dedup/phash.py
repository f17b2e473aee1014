"""Perceptual hashes and the stage `dedup_phash`: near-duplicate images on Ray.

pHash (64-bit): the image in grayscale, resized to 32x32, its 2-D DCT, the 8x8
lowest frequencies, one bit per coefficient above their median (as `imagehash`).
dHash (optional): 9x8 grayscale, one bit per horizontal gradient sign.

Crops. A plain pHash moves by 10 to 30 bits when 10% is cut from a side, as far
as two different photographs can be. So every image also gets the hashes of its
own crops on a grid (0, 5 and 10% off each side: 81 boxes): a crop of A looks
like one of A's grid crops, and a pair is near when the *full* hash of one is
within `max_distance` bits of *any* hash of the other. bench/bench_phash.py: of
scikit-image's photographs and their quadrants, re-encoded, halved and cropped by
up to 10% per side, 98% of variants are within 8 bits (the default) of their
original, against 49% with the plain hash; the misses are textures (brick).
Two hashes of 64 median-split bits each have 32 ones, so distances are even.

Finding pairs without comparing all of them: multi-index hashing. The 64 bits are
cut into c = ceil((k+1)/2) chunks; a pair within k bits differs by at most one bit
in some chunk (pigeonhole), so every hash is filed under each of its chunks, and
every full hash looks up each chunk and its one-bit neighbours. Matches in a
bucket are checked on the whole 64 bits right there, so every pair that leaves
the bucket shuffle is a verified edge. Then stages.dedup.near: components, keep
rule, index.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from pydantic import Field

from pipeline.shuffle import hash_partition, map_tables
from stages.ingest.image import open_image

from .keep import EARLIER, DedupParams
from .minhash import _mix64, jaccard_at_least, shingle_hashes
from .near import NearDuplicates, by_column, edges_table, meeting, verify_pairs

CROP_STEPS = (0.0, 0.05, 0.1)  # cut per side; the full image first
_WORK_SIZE = 256  # images are shrunk to about this before the crops are resized (speed, not quality)


def crop_boxes(steps: tuple[float, ...] = CROP_STEPS) -> list[tuple[float, float, float, float]]:
    """(left, top, right, bottom) fractions cut off; (0, 0, 0, 0) first."""
    boxes = list(itertools.product(steps, repeat=4))
    boxes.remove((0.0, 0.0, 0.0, 0.0))
    return [(0.0, 0.0, 0.0, 0.0), *boxes]


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_DCT32 = _dct_matrix(32)


def _pack(bits: np.ndarray) -> np.ndarray:
    """(..., 64) booleans -> (...) uint64, first bit most significant."""
    return np.packbits(bits, axis=-1).view(">u8")[..., 0].astype(np.uint64)


def gray(data: bytes) -> Image.Image:
    """The image as grayscale, shrunk cheaply (JPEG draft mode, then reduce) to about _WORK_SIZE."""
    im = open_image(data, "L", least=_WORK_SIZE)
    factor = min(im.size) // _WORK_SIZE
    return im.reduce(factor) if factor > 1 else im


def area_resize(g: np.ndarray, boxes: list[tuple[float, float, float, float]], size: tuple[int, int]) -> np.ndarray:
    """Every box of a grayscale image sampled down to size=(w, h) at once: (len(boxes), h, w).

    Each output pixel is the mean of a window two cells wide around its centre (as
    wide as a bilinear filter's support when shrinking: smoother, so steadier hashes
    than plain cell means). A summed-area table gives each window's sum with four
    lookups, so 81 crops cost one cumulative sum and a gather, not 81 resizes."""
    rows, cols = g.shape
    table = np.zeros((rows + 1, cols + 1))
    table[1:, 1:] = g.cumsum(0).cumsum(1)
    b = np.asarray(boxes, dtype=np.float64)  # (B, 4): left, top, right, bottom cut off

    def windows(start, span, n, length):  # (B, n) window edges in pixels, clipped to the image
        centre = start + span * (np.arange(n) + 0.5) / n
        lo = np.clip(np.rint(length * (centre - span / n)), 0, length - 1).astype(np.int64)
        hi = np.clip(np.rint(length * (centre + span / n)), 1, length).astype(np.int64)
        return lo, np.maximum(hi, lo + 1)

    x0, x1 = windows(b[:, :1], 1 - b[:, :1] - b[:, 2:3], size[0], cols)
    y0, y1 = windows(b[:, 1:2], 1 - b[:, 1:2] - b[:, 3:4], size[1], rows)
    x0, x1, y0, y1 = x0[:, None, :], x1[:, None, :], y0[:, :, None], y1[:, :, None]
    sums = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return sums / ((y1 - y0) * (x1 - x0))


def image_hashes(data: bytes, algorithm: Literal["phash", "dhash"] = "phash",
                 boxes: list[tuple[float, float, float, float]] | None = None) -> np.ndarray:
    """uint64 hashes of the image and of its grid crops (the full image's first)."""
    return gray_hashes(np.asarray(gray(data), dtype=np.float64), algorithm, boxes)


def gray_hashes(g: np.ndarray, algorithm: Literal["phash", "dhash"] = "phash",
                boxes: list[tuple[float, float, float, float]] | None = None) -> np.ndarray:
    """uint64 hashes of a grayscale array (a decoded video frame) and of its grid crops."""
    g = np.asarray(g, dtype=np.float64)
    boxes = boxes or crop_boxes()
    if algorithm == "dhash":
        a = area_resize(g, boxes, (9, 8))
        return _pack((a[:, :, 1:] > a[:, :, :-1]).reshape(len(boxes), 64))
    a = area_resize(g, boxes, (32, 32))
    low = (_DCT32 @ a @ _DCT32.T)[:, :8, :8].reshape(len(boxes), 64)
    return _pack(low > np.median(low, axis=1, keepdims=True))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def chunks_for(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of c = ceil((k+1)/2) contiguous chunks covering 64 bits: two hashes
    within k bits then differ by at most one bit in at least one chunk."""
    c = math.ceil((max_distance + 1) / 2)
    widths = [64 // c + (1 if i < 64 % c else 0) for i in range(c)]
    shifts = [64 - sum(widths[: i + 1]) for i in range(c)]
    return list(zip(shifts, widths))


class DedupPhashParams(DedupParams):
    image_column: str = Field("image", description="image column")
    algorithm: Literal["phash", "dhash"] = Field("phash", description="64-bit DCT pHash, or dHash")
    max_distance: int = Field(8, ge=0, le=20, description="Hamming distance (of 64 bits) at or below which two "
                                                          "images are near-duplicates")
    crops: bool = Field(True, description="also match crops of up to 10% per side (81 grid hashes per image)")
    key: Literal["image", "both"] = Field("image", description="image = near-duplicate images; both = only when "
                                                               "the captions are near-duplicates too")
    text_column: str = Field("caption", description="caption column for key=both")
    text_threshold: float = Field(0.8, gt=0, le=1, description="word-set Jaccard of captions for key=both")
    text_ngram: int = Field(1, ge=1, le=8, description="caption shingle size in words for key=both "
                                                       "(captions are short: single words by default)")


class DedupPhash(NearDuplicates):
    """Near-duplicate images by perceptual hash, optionally only with near-duplicate captions."""

    name = "dedup_phash"
    Params = DedupPhashParams
    cluster_prefix = "p"

    @property
    def similarity(self) -> str:
        p = self.params
        what = f"{p.algorithm} within {p.max_distance} bits"
        return f"near-duplicate image ({what})" + (
            f" and caption (Jaccard >= {p.text_threshold})" if p.key == "both" else "")

    def describe(self) -> str:
        p = self.params
        chunks = chunks_for(p.max_distance)
        return (f"{p.algorithm}, {len(self.boxes())} hashes per image, {len(chunks)} chunks of "
                f"{'/'.join(str(w) for _, w in chunks)} bits, one-bit probes: every pair within "
                f"{p.max_distance} bits is found")

    def boxes(self) -> list[tuple[float, float, float, float]]:
        return crop_boxes() if self.params.crops else [(0.0, 0.0, 0.0, 0.0)]

    def index_settings(self) -> dict[str, Any]:
        p = self.params
        return {"algorithm": p.algorithm, "crops": p.crops, "key": p.key,
                "text_ngram": p.text_ngram if p.key == "both" else None}

    def payload_columns(self) -> list[str]:
        p = self.params
        return [p.image_column] + ([p.text_column] if p.key == "both" else [])

    size_columns = ["original_width", "original_height", "width", "height"]

    def size_of(self, table: pa.Table) -> list[int]:
        for w, h in (("original_width", "original_height"), ("width", "height")):
            if w in table.column_names and h in table.column_names:
                return [(x or 0) * (y or 0) for x, y in zip(table.column(w).to_pylist(), table.column(h).to_pylist())]
        return [0] * table.num_rows  # no sizes recorded: every image ties, the first survives

    def rows_per_sample(self) -> int:
        chunks = chunks_for(self.params.max_distance)
        return len(self.boxes()) * len(chunks) + sum(1 + w for _, w in chunks)

    def signature_rows(self, table: pa.Table) -> pa.Table:
        """Per decodable image: its label and hashes (and caption shingles for key=both).
        An image that does not decode has no near-duplicates here (ingest rejects those)."""
        p = self.params
        labels = self.labels_of(table)
        boxes = self.boxes()
        found, hashes = [], []
        for i, data in enumerate(table.column(p.image_column).to_pylist()):
            try:
                hashes.append(image_hashes(data, p.algorithm, boxes).tolist())
            except Exception:  # noqa: BLE001 - any undecodable image is simply not compared
                continue
            found.append(i)
        out = {"_sig": pa.array([labels[i] for i in found], pa.string()),
               "_hashes": pa.array(hashes, pa.list_(pa.uint64()))}
        if p.key == "both":
            captions = table.column(p.text_column).to_pylist()
            out["_caption"] = pa.array([shingle_hashes(captions[i] or "", ngram=p.text_ngram).tolist() for i in found],
                                       pa.list_(pa.uint32()))
        return pa.table(out)

    def find_edges(self, sigs: list, n: int, old: list = ()) -> list:
        p = self.params
        chunks = chunks_for(p.max_distance)
        probe = lambda sig: _probe_rows(sig, chunks)  # noqa: E731
        match = lambda _, t: _match(t, p.max_distance)  # noqa: E731
        rows = map_tables(sigs, probe)
        rows += meeting(rows, ["bucket"], map_tables(list(old), probe), "bucket")
        pairs = hash_partition(rows, n, by_column("bucket", n, numeric=True), match, fetch=False)
        if p.key == "both":
            threshold = p.text_threshold
            return verify_pairs(pairs, sigs + meeting(pairs, ["_a", "_b"], list(old), "_sig"), n, "_caption",
                                jaccard_at_least(threshold))
        return map_tables(pairs, _both_ways)


def _bucket(chunk: int, value: np.ndarray) -> np.ndarray:
    return _mix64((np.uint64(chunk) << np.uint64(48)) ^ value.astype(np.uint64))


def _probe_rows(sig: pa.Table, chunks: list[tuple[int, int]]) -> pa.Table:
    """Every hash filed under each of its chunks; every full hash asking for each chunk and
    its one-bit neighbours."""
    if sig.num_rows == 0:
        return pa.table({"bucket": pa.array([], pa.uint64()), "label": pa.array([], pa.string()),
                         "hash": pa.array([], pa.uint64()), "query": pa.array([], pa.bool_())})
    counts = pc.list_value_length(sig.column("_hashes")).to_numpy()
    every = pc.list_flatten(sig.column("_hashes")).to_numpy().astype(np.uint64)
    owner = np.repeat(np.arange(sig.num_rows), counts)
    full_at = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    full = every[full_at]
    buckets, rows, hashes, query = [], [], [], []
    for c, (shift, width) in enumerate(chunks):
        mask = np.uint64((1 << width) - 1)
        value = (every >> np.uint64(shift)) & mask
        buckets.append(_bucket(c, value))
        rows.append(owner)
        hashes.append(every)
        query.append(np.zeros(every.size, bool))
        fvalue = (full >> np.uint64(shift)) & mask
        for flip in [np.uint64(0)] + [np.uint64(1 << bit) for bit in range(width)]:
            buckets.append(_bucket(c, fvalue ^ flip))
            rows.append(np.arange(sig.num_rows))
            hashes.append(full)
            query.append(np.ones(full.size, bool))
    rows_all = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return pa.table({"bucket": pa.array(np.concatenate(buckets) if buckets else np.zeros(0, np.uint64)),
                     "label": pc.take(sig.column("_sig"), pa.array(rows_all)),
                     "hash": pa.array(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)),
                     "query": pa.array(np.concatenate(query) if query else np.zeros(0, bool))})


def _match(t: pa.Table, max_distance: int) -> pa.Table:
    """Queries meet the filed hashes of their bucket; pairs within max_distance bits (a < b), once."""
    empty = pa.table({"_a": pa.array([], pa.string()), "_b": pa.array([], pa.string())})
    if not t.num_rows:
        return empty
    q = t.filter(t.column("query")).select(["bucket", "label", "hash"])
    f = t.filter(pc.invert(t.column("query"))).select(["bucket", "label", "hash"]) \
        .rename_columns(["bucket", "label_f", "hash_f"])
    # An index's queries meet only new filed hashes (among_earlier): not joined at all.
    q_old = pc.starts_with(q.column("label"), EARLIER)
    f_new = f.filter(pc.invert(pc.starts_with(f.column("label_f"), EARLIER)))
    j = pa.concat_tables([q.filter(pc.invert(q_old)).join(f, "bucket", join_type="inner"),
                          q.filter(q_old).join(f_new, "bucket", join_type="inner")])
    if not j.num_rows:
        return empty
    near = hamming(j.column("hash").to_numpy(), j.column("hash_f").to_numpy()) <= max_distance
    j = j.filter(pa.array(near & pc.not_equal(j.column("label"), j.column("label_f")).to_numpy()))
    a, b = j.column("label"), j.column("label_f")
    lo = pc.if_else(pc.less(a, b), a, b)
    hi = pc.if_else(pc.less(a, b), b, a)
    return pa.table({"_a": lo, "_b": hi}).group_by(["_a", "_b"]).aggregate([])


def _both_ways(pairs: pa.Table) -> pa.Table:
    a, b = pairs.column("_a").to_pylist(), pairs.column("_b").to_pylist()
    return edges_table(a + b, b + a)
