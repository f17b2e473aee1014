"""Chromaprint fingerprints and the stage `dedup_audio`: near-duplicate recordings on Ray.

Fingerprints. Chromaprint (the library behind AcoustID, through pyacoustid's ctypes
module and Debian's libchromaprint) turns audio into 32-bit sub-fingerprints, one per
frame: each bit the sign of a filter over 12-bin chroma across time. Heard at its own
rate it makes 8 a second and needs 2.4 s before the first, so a 3 s clip gets 5:
too few to align. It therefore hears the audio slowed down SLOWDOWN times (resampled
with soxr to 3 x 11,025 Hz and fed as 11,025 Hz): 24 sub-fingerprints a second, the
first after 0.8 s. Every recording is heard alike, so the fingerprints stay
comparable; the band Chromaprint looks at becomes 84 Hz-10.6 kHz of the original.

Matching. Two recordings are near-duplicates when, at the alignment that suits them
best, their sub-fingerprints differ in at most `max_ber` of their bits over at least
`min_overlap` of the shorter one, and the shorter lasts at least
`min_duration_ratio` of the longer (a copy trimmed by 10% at each end is 0.8 of its
original; a 5 s excerpt of a song is not a copy of it). Alignments are tried where
equal sub-fingerprints vote for them (the most voted offsets and their neighbours),
as Chromaprint's own matcher does (short fingerprints try every alignment: exact
equality can miss at 8% of bits wrong). bench/bench_audio_dedup.py: variants (MP3 at 64
kbit/s, 16 kHz, volume, trims of up to 10% per end, trim then MP3) of espeak-ng
speech, chords and shaped noise stay at or under 0.100; distinct recordings start at 0.146,
hence max_ber 0.12, between the two.

Steady sound is not compared. A steady tone or hum gives one sub-fingerprint over and
over, which says only its pitch class (a 220 Hz and a 440 Hz tone print the same; 440
and 1000 Hz differ in 6% of bits). A recording with fewer than `min_distinct` distinct
sub-fingerprints, or fewer than one per ten, is therefore kept without comparison
(exact copies of it are still found by dedup_exact).

Finding pairs without comparing all of them: every distinct sub-fingerprint of a
recording (its low 28 bits: the top bits flip most under re-encoding) is a bucket;
recordings that share a bucket are a candidate pair, verified as above. A bucket
that more than `max_bucket` recordings share (silence, steady tones) pairs each
member with its neighbours in label order only (a chain), so that many copies of one
recording still link up without a quadratic bucket. Then stages.dedup.near:
components, keep rule, index.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from pydantic import Field

from pipeline import media
from pipeline.shuffle import hash_partition, map_tables

from .keep import DedupParams
from .minhash import _mix64
from .near import NearDuplicates, among_earlier, by_column, each_pair, meeting, verify_pairs

CHROMAPRINT_RATE = 11_025  # the rate Chromaprint works at
SLOWDOWN = 3  # Chromaprint hears the audio this many times slower (see the module's docstring)
VALUE_MASK = np.uint32(0x0FFFFFFF)  # the bits a bucket keys on
MAX_OFFSETS = 8  # voted alignments tried per pair (each with its neighbours)
EXHAUSTIVE = 1_000_000  # fingerprints this small (len(a) * len(b), ~40 s each) try every alignment
MAX_REPEATS = 32  # a sub-fingerprint this frequent in one recording does not vote for an alignment


class FingerprintError(Exception):
    """Chromaprint is missing or could not fingerprint a recording."""


def _chromaprint():
    try:
        import chromaprint
    except ImportError as e:  # pyacoustid raises ImportError when libchromaprint is absent
        raise FingerprintError(f"Chromaprint is not available ({e}): install Debian's libchromaprint-tools "
                               "(scripts/install.sh does) and pyacoustid") from None
    return chromaprint


def fingerprint_blocks(blocks: Iterator[np.ndarray], rate: int, max_seconds: float,
                       slowdown: int = SLOWDOWN) -> tuple[np.ndarray, float]:
    """(sub-fingerprints as uint32, seconds heard) of float32 blocks (frames, channels),
    mixed to mono, slowed down and fed to Chromaprint as they come."""
    import soxr

    chromaprint = _chromaprint()
    printer = chromaprint.Fingerprinter()
    printer.start(CHROMAPRINT_RATE, 1)
    resampler = soxr.ResampleStream(rate, CHROMAPRINT_RATE * slowdown, 1, dtype="float32")
    frames, limit = 0, int(max_seconds * rate)

    def feed(x: np.ndarray) -> None:
        if len(x):
            printer.feed(np.clip(np.rint(x * 32767.0), -32768, 32767).astype("<i2").tobytes())

    for block in blocks:
        block = block[: max(0, limit - frames)]
        frames += len(block)
        mono = block.mean(axis=1) if block.ndim == 2 else block
        feed(resampler.resample_chunk(np.nan_to_num(mono.astype(np.float32))))
        if frames >= limit:
            break
    feed(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    try:
        raw, _ = chromaprint.decode_fingerprint(printer.finish())
    except chromaprint.FingerprintError as e:
        raise FingerprintError(f"Chromaprint failed: {e}") from None
    return np.asarray(raw, np.uint32), frames / rate


def fingerprint(samples: np.ndarray, rate: int, max_seconds: float = 4 * 3600.0,
                slowdown: int = SLOWDOWN) -> tuple[np.ndarray, float]:
    """Sub-fingerprints of samples in memory ((frames,) or (frames, channels))."""
    return fingerprint_blocks(iter([samples.reshape(len(samples), -1).astype(np.float32)]), rate, max_seconds,
                              slowdown)


def fingerprint_media(value: dict | bytes, timeout: float, max_seconds: float) -> tuple[np.ndarray, float]:
    """Sub-fingerprints of a stored recording, decoded block by block (libsndfile, else ffmpeg)."""
    from stages.ingest.audio import blocks, probe

    with media.local_path(value) as path:
        found = probe(path, timeout)
        return fingerprint_blocks(blocks(path, found, timeout), found.sample_rate, max_seconds)


def _votes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Offsets i - j for every a[i] == b[j] (masked), leaving out values that repeat more
    than MAX_REPEATS times in either (steady sound: they say nothing of where b sits)."""
    ka, kb = a & VALUE_MASK, b & VALUE_MASK
    va, ca = np.unique(ka, return_counts=True)
    vb, cb = np.unique(kb, return_counts=True)
    rare = np.intersect1d(va[ca <= MAX_REPEATS], vb[cb <= MAX_REPEATS])
    if not len(rare):
        return np.zeros(0, np.int64)
    ia = np.nonzero(np.isin(ka, rare))[0]
    jb = np.nonzero(np.isin(kb, rare))[0]
    order = np.argsort(kb[jb], kind="stable")
    jb, sorted_b = jb[order], kb[jb][order]
    lo, hi = np.searchsorted(sorted_b, ka[ia], "left"), np.searchsorted(sorted_b, ka[ia], "right")
    counts = hi - lo
    first = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
    return np.repeat(ia, counts) - jb[first]


def _alignments(a: np.ndarray, b: np.ndarray, need: int) -> set[int]:
    """Offsets of b in a worth trying: all of them for short fingerprints (at 8% bit
    errors exact equality can miss), else the most voted and their neighbours."""
    if len(a) * len(b) <= EXHAUSTIVE:
        return set(range(need - len(b), len(a) - need + 1))
    offsets = _votes(a, b)
    if not len(offsets):
        return {0, len(a) - len(b)}
    values, votes = np.unique(offsets, return_counts=True)
    return {int(o) + d for o in values[np.argsort(-votes, kind="stable")[:MAX_OFFSETS]] for d in (-1, 0, 1)}


def bit_error_rate(a: np.ndarray, b: np.ndarray, min_overlap: float = 0.8) -> tuple[float, int]:
    """(lowest bit error rate, offset of b in a) over the alignments that overlap at least
    min_overlap of the shorter fingerprint: every one for short fingerprints, else those
    that equal sub-fingerprints vote for (and their neighbours); (1.0, 0) when none. With
    no votes (steady sound, or nothing in common) the starts and the ends are aligned."""
    if not len(a) or not len(b):
        return 1.0, 0
    need = max(1, int(np.ceil(min_overlap * min(len(a), len(b)))))
    tried = _alignments(a, b, need)
    best = (1.0, 0)
    for off in sorted(tried):
        start, end = max(0, off), min(len(a), off + len(b))
        if end - start < need:
            continue
        ber = float(np.bitwise_count(a[start:end] ^ b[start - off:end - off]).sum()) / (32 * (end - start))
        if ber < best[0]:
            best = (ber, off)
    return best


class DedupAudioParams(DedupParams):
    audio_column: str = Field("audio", description="audio column")
    max_ber: float = Field(0.12, gt=0, lt=0.5, description="bit error rate of aligned fingerprints at or below "
                                                            "which two recordings are near-duplicates")
    min_overlap: float = Field(0.8, gt=0, le=1, description="share of the shorter fingerprint the alignment must "
                                                            "cover")
    min_duration_ratio: float = Field(0.75, ge=0, le=1, description="the shorter recording lasts at least this "
                                                                    "share of the longer (excerpts are not copies)")
    min_distinct: int = Field(8, ge=1, description="recordings with fewer distinct sub-fingerprints (steady tones, "
                                                  "hum) are not compared")
    max_bucket: int = Field(200, ge=2, le=100_000, description="recordings sharing one sub-fingerprint beyond "
                                                              "which they are chained rather than all paired")
    max_seconds: float = Field(4 * 3600.0, gt=0, description="seconds of each recording fingerprinted at most")
    decode_timeout: float = Field(600.0, gt=0, le=86_400, description="seconds an ffmpeg decode may take")


class DedupAudio(NearDuplicates):
    """Near-duplicate recordings by Chromaprint fingerprints (re-encoded, resampled, louder or softer, trimmed)."""

    name = "dedup_audio"
    Params = DedupAudioParams
    cluster_prefix = "a"
    placement = frozenset({"decode_timeout"})
    size_columns = ["original_bytes", "duration"]

    @property
    def similarity(self) -> str:
        return f"near-duplicate recording (fingerprint bit error rate <= {self.params.max_ber})"

    def describe(self) -> str:
        return (f"Chromaprint fingerprints ({SLOWDOWN}x slowed: about {8 * SLOWDOWN} a second), one bucket per "
                f"distinct sub-fingerprint (low 28 bits, chained beyond {self.params.max_bucket} recordings), "
                f"pairs verified at bit error rate <= {self.params.max_ber}")

    def index_settings(self) -> dict[str, Any]:
        return {"fingerprint": f"chromaprint-slowed-{SLOWDOWN}x", "max_seconds": self.params.max_seconds}

    def payload_columns(self) -> list[str]:
        return [self.params.audio_column]

    def streams(self) -> list[str]:
        return [self.params.audio_column]  # long recordings are decoded from their files, block by block

    def size_of(self, table: pa.Table) -> list[int]:
        for column in self.size_columns:
            if column in table.column_names:
                return [int(v or 0) if column == "original_bytes" else int(1000 * (v or 0))
                        for v in table.column(column).to_pylist()]
        return [0] * table.num_rows

    def rows_per_sample(self) -> int:
        return 24 * 30  # distinct sub-fingerprints of a 30 s recording, about

    def setup(self) -> None:
        _chromaprint()  # a missing library is one clear error, not one per recording

    def signature_rows(self, table: pa.Table) -> pa.Table:
        """Per recording that fingerprints: its label and {seconds, items}. One that does not
        decode (ingest rejects those) or is too short to fingerprint is not compared."""
        p = self.params
        labels = self.labels_of(table)
        found, prints = [], []
        for i, value in enumerate(table.column(p.audio_column).to_pylist()):
            if value is None:
                continue
            try:
                items, seconds = fingerprint_media(value, p.decode_timeout, p.max_seconds)
            except FingerprintError:
                raise
            except Exception:  # noqa: BLE001 - any undecodable recording is simply not compared
                continue
            if informative(items, p.min_distinct):
                found.append(labels[i])
                prints.append({"seconds": seconds, "items": items})
        kind = pa.struct([("seconds", pa.float64()), ("items", pa.list_(pa.uint32()))])
        return pa.table({"_sig": pa.array(found, pa.string()), "_fp": pa.array(prints, kind)})

    def find_edges(self, sigs: list, n: int, old: list = ()) -> list:
        p = self.params
        rows = map_tables(sigs, _bucket_rows)
        rows += meeting(rows, ["bucket"], map_tables(list(old), _bucket_rows), "bucket")
        pairs = hash_partition(rows, n, by_column("bucket", n, numeric=True),
                               lambda _, t: _pairs(t, p.max_bucket), fetch=False)
        return verify_pairs(pairs, sigs + meeting(pairs, ["_a", "_b"], list(old), "_sig"), n, "_fp", each_pair(self.near))

    def near(self, a: dict, b: dict) -> bool:
        """Two fingerprints ({seconds, items}) are of near-duplicate recordings."""
        p = self.params
        short, long_ = sorted((a["seconds"], b["seconds"]))
        if long_ <= 0 or short / long_ < p.min_duration_ratio:
            return False
        ber, _ = bit_error_rate(np.asarray(a["items"], np.uint32), np.asarray(b["items"], np.uint32), p.min_overlap)
        return ber <= p.max_ber


def informative(items: np.ndarray, min_distinct: int) -> bool:
    """A fingerprint that changes enough to be compared (not a steady tone or hum)."""
    distinct = len(np.unique(np.asarray(items, np.uint32) & VALUE_MASK))
    return distinct >= min_distinct and distinct * 10 >= len(items)


def buckets_of(items: np.ndarray) -> np.ndarray:
    """The buckets a fingerprint is filed under: its distinct masked sub-fingerprints."""
    return _mix64(np.unique(np.asarray(items, np.uint32) & VALUE_MASK).astype(np.uint64))


def _bucket_rows(sig: pa.Table) -> pa.Table:
    """One row per distinct masked sub-fingerprint of each recording."""
    buckets, labels = [], []
    for label, fp in zip(sig.column("_sig").to_pylist(), sig.column("_fp").to_pylist()):
        values = buckets_of(fp["items"])
        buckets.append(values)
        labels += [label] * len(values)
    return pa.table({"bucket": pa.array(np.concatenate(buckets) if buckets else np.zeros(0, np.uint64), pa.uint64()),
                     "label": pa.array(labels, pa.string())})


def _pairs(t: pa.Table, max_bucket: int) -> pa.Table:
    """The candidate pairs of each bucket (a < b): all of them, or a chain in label order
    when the bucket is crowded."""
    a, b = [], []
    if t.num_rows:
        groups = t.group_by("bucket").aggregate([("label", "distinct")])
        for members in groups.column("label_distinct").to_pylist():
            if len(members) < 2:
                continue
            members.sort()
            if len(members) <= max_bucket:
                for i in range(len(members)):
                    a += [members[i]] * (len(members) - i - 1)
                    b += members[i + 1:]
            else:
                a += members[:-1]
                b += members[1:]
    keep = [i for i in range(len(a)) if not among_earlier(a[i], b[i])]
    return pa.table({"_a": pa.array([a[i] for i in keep], pa.string()),
                     "_b": pa.array([b[i] for i in keep], pa.string())})
