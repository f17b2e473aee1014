"""Stage `dedup_video`: near-duplicate clips on Ray, by sequences of frame hashes.

Signature. measure_video hashes a frame every 1/hash_fps seconds (4 a second by
default) with dedup_phash's 64-bit pHash: a clip is the sequence of its frames'
hashes. Re-encoding and resizing move a frame's hash by a few bits; a trimmed copy is
the same sequence shifted.

Matching. Two clips are near-duplicates when, at the alignment that suits them best,
their aligned frames differ by at most `max_mean_distance` bits on average (each frame
of the one against the other's frame at that position or either neighbour, so a trim
between two sampling steps still lines up), over at least `min_overlap` of the
shorter clip, and the shorter lasts at least `min_duration_ratio` of the longer. The
mean is over every aligned frame, so two clips that share one frame (the same opening
title, a cut to the same still shot) are not duplicates: they are judged by their
content over time, not by a single frame. bench/bench_video_dedup.py, on 250 generated
clips (50 originals: zooms into two corners of each of scikit-image's photographs, and
ffmpeg's moving sources; variants re-encoded small at crf 38, trimmed, brightened,
trimmed and small): true pairs' mean distances are 2.4 at the median and 13.4 at the
95th percentile, different clips' 20.5 at the least and 24.1 at the 1st percentile,
hence 14 (recall 0.960, precision 1.000). A per-frame rule (80% of frames within 10
bits) reached recall 0.83 there, and 2 hashes a second 0.92: trimmed copies of busy
content line up only at the finer step.

Finding pairs without comparing all of them: every distinct frame hash of a clip is
filed under its four 16-bit quarters (multi-index hashing); clips that share a
bucket are candidates, verified as above. A near-duplicate shares many frames, so one
exact quarter among them is all it takes. A bucket that more than `max_bucket` clips
share is chained in label order (as dedup_audio does). Then stages.dedup.near:
components, keep rule, index, `against`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline.shuffle import hash_partition, map_tables

from .audio import DedupAudio, _pairs
from .keep import DedupParams
from .minhash import _mix64
from .near import NearDuplicates, by_column, each_pair, meeting, verify_pairs

QUARTERS = 4  # 16-bit pieces of a 64-bit hash that a bucket keys on


class DedupVideoParams(DedupParams):
    hash_column: str = Field("frame_phash", description="the column of frame hash sequences (measure_video's)")
    max_mean_distance: float = Field(14.0, ge=0, le=32, description="mean bits (of 64) by which aligned frames may "
                                                                    "differ")
    min_overlap: float = Field(0.8, gt=0, le=1, description="share of the shorter clip the alignment must cover")
    min_duration_ratio: float = Field(0.5, ge=0, le=1, description="the shorter clip lasts at least this share of the "
                                                                   "longer (an excerpt is not a copy)")
    min_frames: int = Field(3, ge=1, description="clips with fewer hashed frames are not compared")
    max_bucket: int = Field(200, ge=2, le=100_000, description="clips sharing one bucket beyond which they are "
                                                              "chained rather than all paired")


class DedupVideo(NearDuplicates):
    """Near-duplicate clips (re-encoded, resized, trimmed) by aligned sequences of frame pHashes."""

    name = "dedup_video"
    Params = DedupVideoParams
    cluster_prefix = "v"
    size_columns = ["original_bytes", "duration"]

    @property
    def similarity(self) -> str:
        return f"near-duplicate clip (aligned frame hashes within {self.params.max_mean_distance:g} bits on average)"

    def describe(self) -> str:
        return (f"sequences of frame pHashes, one bucket per 16-bit quarter of each distinct hash (chained beyond "
                f"{self.params.max_bucket} clips), pairs verified at best alignment")

    def index_settings(self) -> dict[str, Any]:
        return {"signature": "frame-phash-sequence", "hash_column": self.params.hash_column}

    def payload_columns(self) -> list[str]:
        return [self.params.hash_column, "duration"]

    size_of = DedupAudio.size_of  # bytes, else duration: the same rule as for recordings

    def rows_per_sample(self) -> int:
        return QUARTERS * 40  # buckets of a 10 s clip at 4 hashes a second, about

    def signature_rows(self, table: pa.Table) -> pa.Table:
        p = self.params
        labels = self.labels_of(table)
        durations = table.column("duration").to_pylist() if "duration" in table.column_names else [None] * len(labels)
        found, prints = [], []
        for i, hashes in enumerate(table.column(p.hash_column).to_pylist()):
            if hashes is None or len(hashes) < p.min_frames:
                continue
            found.append(labels[i])
            prints.append({"seconds": float(durations[i] or 0.0), "items": hashes})
        kind = pa.struct([("seconds", pa.float64()), ("items", pa.list_(pa.uint64()))])
        return pa.table({"_sig": pa.array(found, pa.string()), "_fp": pa.array(prints, kind)})

    def find_edges(self, sigs: list, n: int, old: list = ()) -> list:
        p = self.params
        rows = map_tables(sigs, _bucket_rows)
        rows += meeting(rows, ["bucket"], map_tables(list(old), _bucket_rows), "bucket")
        pairs = hash_partition(rows, n, by_column("bucket", n, numeric=True),
                               lambda _, t: _pairs(t, p.max_bucket), fetch=False)
        return verify_pairs(pairs, sigs + meeting(pairs, ["_a", "_b"], list(old), "_sig"), n, "_fp", each_pair(self.near))

    def near(self, a: dict, b: dict) -> bool:
        p = self.params
        short, long_ = sorted((a["seconds"], b["seconds"]))
        if long_ > 0 and short / long_ < p.min_duration_ratio:
            return False
        return mean_distance(np.asarray(a["items"], np.uint64), np.asarray(b["items"], np.uint64),
                             p.min_overlap) <= p.max_mean_distance


def mean_distance(a: np.ndarray, b: np.ndarray, min_overlap: float) -> float:
    """The lowest mean Hamming distance of aligned frames (each against the other's frame
    there or either neighbour) over the alignments covering at least min_overlap of the
    shorter sequence; 64 when there is none."""
    if not len(a) or not len(b):
        return 64.0
    if len(a) < len(b):
        a, b = b, a
    need = max(1, int(np.ceil(min_overlap * len(b))))
    d = np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.float32)  # (len a, len b): small for clips
    near = d.copy()
    near[1:] = np.minimum(near[1:], d[:-1])
    near[:-1] = np.minimum(near[:-1], d[1:])
    best = 64.0
    for o in range(need - len(b), len(a) - need + 1):
        j = np.arange(max(0, -o), min(len(b), len(a) - o))
        if len(j) >= need:
            best = min(best, float(near[j + o, j].mean()))
    return best


def _bucket_rows(sig: pa.Table) -> pa.Table:
    """One row per (quarter, value) of each clip's distinct frame hashes."""
    buckets, labels = [], []
    for label, fp in zip(sig.column("_sig").to_pylist(), sig.column("_fp").to_pylist()):
        hashes = np.unique(np.asarray(fp["items"], np.uint64))
        quarters = np.concatenate([(np.uint64(q) << np.uint64(16)) | ((hashes >> np.uint64(16 * q)) & np.uint64(0xFFFF))
                                   for q in range(QUARTERS)])
        values = _mix64(np.unique(quarters))
        buckets.append(values)
        labels += [label] * len(values)
    return pa.table({"bucket": pa.array(np.concatenate(buckets) if buckets else np.zeros(0, np.uint64), pa.uint64()),
                     "label": pa.array(labels, pa.string())})
