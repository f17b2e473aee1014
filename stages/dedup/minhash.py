"""MinHash signatures, vectorised: shingling, shingle hashing and permutations in numpy.

No Python loop per token or shingle on the hot path. A document's tokens come from
one `re.findall`; their UTF-8 bytes, joined by NUL, are hashed all at once with a
polynomial prefix-sum hash (mod 2^64: numpy's wraparound is the modulo), word
n-grams are combined from token hashes by shifted arrays, and the permutations
run over the shingles of many documents at once with `np.minimum.reduceat`.

Permutations follow datasketch 2.0's affine schemes ("affine32" / "affine64":
fmix pre-mix, then a*h + b in uint32 / uint64), with datasketch's own parameters for
a seed, so `shingle_hash` passed as datasketch's `hashfunc` gives the very same
signatures (tests/stages/dedup/test_minhash.py proves it bit for bit).

The stage `dedup_minhash` at the end builds on these: LSH banding, exact-Jaccard
verification and connected components, as Ray task shuffles, and a persisted index.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.shuffle import hash_partition, map_tables
from pipeline.watchdog import gather

from .keep import DedupParams
from .near import (NearDuplicates, _having, _remote, among_earlier, by_column, edges_table, label_of, meeting,
                   smallest_in_components, verify_pairs)

Tokenizer = Literal["word", "code", "char"]
_WORD = re.compile(r"\w+")  # maximal runs of Unicode word characters
_CODE = re.compile(r"[A-Za-z_0-9]+")  # The Stack: split on [^A-Za-z_0-9]
_SPACES = re.compile(r"\s+")

_P = np.uint64(0x100000001B3)  # odd multipliers: invertible mod 2^64
_Q = np.uint64(0x9E3779B97F4A7C15)
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_FMIX = {32: (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16),
         64: (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33)}


def tokens(text: str, tokenizer: Tokenizer = "word") -> list[str]:
    if tokenizer == "code":
        return _CODE.findall(text)
    if tokenizer == "char":  # NUL separates tokens below, so it cannot be one
        return list(_SPACES.sub(" ", unicodedata.normalize("NFC", text.lower().replace("\0", ""))).strip())
    return _WORD.findall(text.lower())


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the polynomial hash over all 64 bits."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def _token_hashes(toks: list[str]) -> np.ndarray:
    """64-bit hash of every token's UTF-8 bytes, all tokens at once."""
    if not toks:
        return np.zeros(0, dtype=np.uint64)
    data = np.frombuffer("\0".join(toks).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    n = data.size
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(n, _P, dtype=np.uint64))  # P^1 .. P^n
        inverse = np.cumprod(np.full(n + 1, _P_INV, dtype=np.uint64))  # P^-1 .. P^-(n+1)
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(data.astype(np.uint64) * powers, dtype=np.uint64)))
        ends = np.append(np.flatnonzero(data == 0), n)
        starts = np.concatenate(([0], ends[:-1] + 1))
        # sum over the token of b_j * P^(j+1), shifted to start at P^1: position-free
        raw = (prefix[ends] - prefix[starts]) * inverse[starts]
    return _mix64(raw)


def _ngrams(th: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the n-grams of a token-hash sequence (one gram of all tokens when shorter)."""
    k = min(n, th.size)
    with np.errstate(over="ignore"):
        h = th[: th.size - k + 1].copy()
        for j in range(1, k):
            h = h * _Q + th[j: th.size - k + 1 + j]
    return _mix64(h)


def shingle_hashes(text: str, tokenizer: Tokenizer = "word", ngram: int = 5, bits: int = 32) -> np.ndarray:
    """The distinct shingle hashes of one document (uint32 or uint64)."""
    th = _token_hashes(tokens(text, tokenizer))
    if th.size == 0:
        return np.zeros(0, dtype=np.uint32 if bits == 32 else np.uint64)
    h = np.unique(_ngrams(th, ngram))
    return (h >> np.uint64(32)).astype(np.uint32) if bits == 32 else h


def shingles(text: str, tokenizer: Tokenizer = "word", ngram: int = 5) -> list[bytes]:
    """The shingles themselves, as NUL-joined token bytes (the reference for `shingle_hash`)."""
    toks = tokens(text, tokenizer)
    if not toks:
        return []
    k = min(ngram, len(toks))
    return sorted({"\0".join(toks[i:i + k]).encode("utf-8", "surrogatepass") for i in range(len(toks) - k + 1)})


def shingle_hash(shingle: bytes, bits: int = 32) -> int:
    """One shingle's hash, computed like the vectorised path: datasketch's `hashfunc`."""
    toks = shingle.decode("utf-8", "surrogatepass").split("\0")
    h = int(_ngrams(_token_hashes(toks), len(toks))[0])
    return h >> 32 if bits == 32 else h


def permutations(num_perm: int, seed: int, bits: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine permutation parameters for this seed."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32" if bits == 32 else "affine64").permutations
    return a, b


def _fmix(h: np.ndarray, bits: int) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX[bits]
    dtype = h.dtype.type
    with np.errstate(over="ignore"):
        h = h ^ (h >> dtype(s1))
        h = h * dtype(m1)
        h = h ^ (h >> dtype(s2))
        h = h * dtype(m2)
        return h ^ (h >> dtype(s3))


def signatures(texts: list[str], num_perm: int = 128, seed: int = 1, tokenizer: Tokenizer = "word",
               ngram: int = 5, bits: int = 32, chunk_shingles: int = 1 << 16) -> np.ndarray:
    """(len(texts), num_perm) MinHash signatures; an empty document gets the maximum value."""
    if tokenizer in ("word", "code") and bits == 32:
        return _signatures_fused(texts, num_perm, seed, tokenizer, ngram)
    dtype = np.uint32 if bits == 32 else np.uint64
    a, b = (x.astype(dtype)[:, None] for x in permutations(num_perm, seed, bits))
    out = np.full((len(texts), num_perm), np.iinfo(dtype).max, dtype=dtype)
    docs = [shingle_hashes(t, tokenizer, ngram, bits) for t in texts]
    i = 0
    while i < len(docs):  # a chunk of documents whose shingles fit one (num_perm x S) matrix
        j, total = i, 0
        while j < len(docs) and (total == 0 or total + docs[j].size <= chunk_shingles):
            total += docs[j].size
            j += 1
        sizes = np.array([d.size for d in docs[i:j]])
        nonempty = np.flatnonzero(sizes)
        if nonempty.size:
            hv = _fmix(np.concatenate(docs[i:j]).astype(dtype), bits)
            with np.errstate(over="ignore"):
                phv = a * hv[None, :] + b  # wraps in uint32/uint64: that is the modulo
            offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))[nonempty]
            out[i + nonempty] = np.minimum.reduceat(phv, offsets, axis=1).T
        i = j
    return out


# -- the fused byte-level kernel (word and code tokens, 32-bit) ---------------------------
def _word_bytes(text: str, tokenizer: Tokenizer) -> bytes:
    """Bytes in which the kernel's token rule equals the tokenizer's: ASCII text as it is
    (ASCII \\w is [A-Za-z0-9_]); other text as its \\w tokens joined by spaces."""
    if tokenizer == "code":
        return text.encode("ascii", "replace") if not text.isascii() else text.encode()
    low = text.lower()
    if low.isascii():
        return low.encode()
    return " ".join(_WORD.findall(low)).encode("utf-8", "surrogatepass")


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(cache=True, nogil=True)
        def kernel(data, offsets, ngram, a, b, out, high_is_word, kept, kept_end):  # pragma: no cover
            # kept (when it has room): every shingle's 64-bit hash, document d's ending at kept_end[d]
            P, Q = np.uint64(0x100000001B3), np.uint64(0x9E3779B97F4A7C15)
            ring = np.zeros(64, dtype=np.uint64)
            keep = kept.size > 0
            at = 0
            for d in range(offsets.size - 1):
                count = 0  # tokens seen
                h = np.uint64(0)
                pw = np.uint64(1)
                in_tok = False
                for i in range(offsets[d], offsets[d + 1] + 1):
                    c = data[i] if i < offsets[d + 1] else 32
                    word = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95 or \
                        (high_is_word and c >= 128)
                    if word:
                        h += np.uint64(c) * pw
                        pw *= P
                        in_tok = True
                    elif in_tok:
                        t = h
                        t = (t ^ (t >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                        t = (t ^ (t >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                        t = t ^ (t >> np.uint64(31))
                        ring[count % 64] = t
                        count += 1
                        h, pw, in_tok = np.uint64(0), np.uint64(1), False
                        if count >= ngram:
                            g = _shingle(ring, count - ngram, ngram, a, b, out, d, Q)
                            if keep:
                                kept[at] = g
                                at += 1
                if 0 < count < ngram:  # a short document: one shingle of all its tokens
                    g = _shingle(ring, 0, count, a, b, out, d, Q)
                    if keep:
                        kept[at] = g
                        at += 1
                if keep:
                    kept_end[d] = at

        @numba.njit(cache=True, nogil=True, inline="always")
        def _shingle(ring, start, k, a, b, out, d, Q):  # pragma: no cover - compiled
            g = ring[start % 64]
            for j in range(1, k):
                g = g * Q + ring[(start + j) % 64]
            g = (g ^ (g >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            g = (g ^ (g >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            g = g ^ (g >> np.uint64(31))
            # 32-bit arithmetic, masked by hand: numba widens uint32 products to 64 bits.
            m = np.uint64(0xFFFFFFFF)
            hv = g >> np.uint64(32)
            hv = hv ^ (hv >> np.uint64(16))
            hv = (hv * np.uint64(0x85EBCA6B)) & m
            hv = hv ^ (hv >> np.uint64(13))
            hv = (hv * np.uint64(0xC2B2AE35)) & m
            hv = hv ^ (hv >> np.uint64(16))
            for p in range(a.size):
                v = (np.uint64(a[p]) * hv + np.uint64(b[p])) & m
                if v < out[d, p]:
                    out[d, p] = v
            return g

        @numba.njit(cache=True, nogil=True)
        def distinct(kept, kept_end, values, counts):  # pragma: no cover - compiled
            # each document's shingle hashes sorted and distinct, top 32 bits (as shingle_hashes)
            at, start = 0, 0
            for d in range(kept_end.size):
                mine = np.sort(kept[start:kept_end[d]])
                for i in range(mine.size):
                    if i == 0 or mine[i] != mine[i - 1]:
                        values[at] = np.uint32(mine[i] >> np.uint64(32))
                        at += 1
                        counts[d] += 1
                start = kept_end[d]

        _KERNEL = kernel, distinct
    return _KERNEL


def _signatures_fused(texts: list[str], num_perm: int, seed: int, tokenizer: Tokenizer, ngram: int,
                      with_shingles: bool = False):
    """Signatures; with_shingles: also every document's shingle_hashes, from the same pass,
    as (values, counts): document i's are the counts[i] values after those of the ones before."""
    if ngram > 64:
        raise ValueError("ngram is at most 64 words")
    chunks = [_word_bytes(t, tokenizer) for t in texts]
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    offsets = np.concatenate(([0], np.cumsum([len(c) for c in chunks]))).astype(np.int64)
    a, b = (x.astype(np.uint32) for x in permutations(num_perm, seed, 32))
    out = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    kernel, distinct = _kernel()
    kept = np.zeros(data.size + len(texts) if with_shingles else 0, np.uint64)  # >= one shingle per token
    kept_end = np.zeros(len(texts) if with_shingles else 0, np.int64)
    kernel(data, offsets, ngram, a, b, out, tokenizer == "word", kept, kept_end)
    if not with_shingles:
        return out
    values, counts = np.zeros(kept.size, np.uint32), np.zeros(len(texts), np.int64)
    distinct(kept, kept_end, values, counts)
    return out, (values[:counts.sum()], counts)


# -- LSH banding and verification --------------------------------------------------------
def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """P(a pair with this Jaccard shares at least one band) = 1 - (1 - J^rows)^bands."""
    return 1.0 - (1.0 - jaccard ** rows) ** bands


def choose_bands(threshold: float, num_perm: int, min_recall: float = 0.95) -> tuple[int, int]:
    """bands x rows <= num_perm for verified LSH: recall first, then precision for free.

    With exact-Jaccard verification a false candidate costs only a comparison, so we
    want every pair at `threshold` to become a candidate with probability >=
    min_recall, and among those settings the most rows per band (fewest candidates).
    """
    best = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if bands and candidate_probability(threshold, bands, rows) >= min_recall:
            best = (bands, rows)
    if best is None:
        raise ValueError(f"no bands x rows <= {num_perm} reaches recall {min_recall} at J={threshold}; "
                         "raise num_perm")
    return best


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: one hash per band of each signature (band index mixed in)."""
    n = sigs.shape[0]
    parts = sigs[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    with np.errstate(over="ignore"):
        h = np.broadcast_to(np.arange(bands, dtype=np.uint64) * _Q, (n, bands)).copy()
        for r in range(rows):
            h = _mix64(h * _P + parts[:, :, r])
    return h


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted, distinct shingle-hash arrays."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def jaccard_at_least(threshold: float):
    """verify_pairs' `similar` for shingle-hash lists: jaccard(a, b) >= threshold for every
    pair at once, in one compiled loop over the flat values (the same intersection count as
    jaccard's: equal neighbours in the merged order)."""
    def similar(a: pa.Array, b: pa.Array) -> np.ndarray:
        flat = [(pc.list_flatten(x).to_numpy(), np.concatenate(([0], np.cumsum(
            pc.list_value_length(x).fill_null(0).to_numpy()))).astype(np.int64)) for x in (a, b)]
        kind = np.uint64 if any(v.dtype == np.uint64 for v, _ in flat) else np.uint32
        out = np.zeros(len(a), np.bool_)
        (av, ao), (bv, bo) = flat
        _jaccard_kernel()(av.astype(kind, copy=False), ao, bv.astype(kind, copy=False), bo, threshold, out)
        return out
    return similar


_JACCARD = None


def _jaccard_kernel():
    global _JACCARD
    if _JACCARD is None:
        import numba

        @numba.njit(cache=True, nogil=True)
        def kernel(av, ao, bv, bo, threshold, out):  # pragma: no cover - compiled
            for p in range(out.size):
                i, ie, j, je = ao[p], ao[p + 1], bo[p], bo[p + 1]
                size = (ie - i) + (je - j)
                if size == 0:
                    out[p] = 1.0 >= threshold
                    continue
                inter = 0
                have = False
                last = av[0] if ie > i else bv[j]
                while i < ie or j < je:
                    if j >= je or (i < ie and av[i] <= bv[j]):
                        v = av[i]
                        i += 1
                    else:
                        v = bv[j]
                        j += 1
                    if have and v == last:
                        inter += 1
                    last, have = v, True
                out[p] = inter / (size - inter) >= threshold

        _JACCARD = kernel
    return _JACCARD


# -- the stage ------------------------------------------------------------------------------

# Each member of a bucket is paired with its first ANCHORS members only: a bucket of k
# copies makes k x ANCHORS candidates, not k^2 (a cluster needs a spanning tree, and
# the other bands, whose buckets differ, add the pairs that one band leaves out).
ANCHORS = 10


class DedupMinhashParams(DedupParams):
    text_column: str = Field("text", description="text column to compare")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard at or above which two texts are near-duplicates "
                                                          "(0.8: ANCHORS side-by-side; The Stack v1 used 0.85)")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    ngram: int = Field(5, ge=1, le=64, description="shingle size in tokens (word 5-grams: Gopher, datatrove)")
    tokenizer: Literal["word", "code", "char"] = Field("word", description="word = lowercase \\w+ runs; code = "
                                                       "split on [^A-Za-z_0-9]; char = character n-grams")
    seed: int = Field(1, ge=0, description="permutation seed (datasketch's)")
    bits: Literal[32, 64] = Field(32, description="hash width")
    bands: int = Field(0, ge=0, description="LSH bands; 0 = chosen so that a pair at threshold is a candidate "
                                            "with probability >= 0.95")
    rows: int = Field(0, ge=0, description="rows per band (with bands)")
    max_component_size: int = Field(20_000, ge=2, description="the most samples sharing buckets that one task "
                                    "verifies together (their shingle sets, ~1 KB each for 1 KB texts); a larger "
                                    "set is verified pair by pair, each pair carrying one side's shingles")


class DedupMinhash(NearDuplicates):
    """Near-duplicate texts by MinHash LSH, every candidate pair verified by exact Jaccard.

    Connected components and the keep rule come from stages.dedup.near."""

    name = "dedup_minhash"
    Params = DedupMinhashParams
    cluster_prefix = "m"

    def banding(self) -> tuple[int, int]:
        p = self.params
        if p.bands and p.rows:
            if p.bands * p.rows > p.num_perm:
                raise ValueError(f"bands x rows = {p.bands * p.rows} > num_perm {p.num_perm}")
            return p.bands, p.rows
        return choose_bands(p.threshold, p.num_perm)

    @property
    def similarity(self) -> str:
        return f"near-duplicate (Jaccard >= {self.params.threshold})"

    def describe(self) -> str:
        bands, rows = self.banding()
        p = candidate_probability(self.params.threshold, bands, rows)
        return (f"LSH {bands} bands x {rows} rows; a pair at J={self.params.threshold} becomes a candidate "
                f"with probability {p:.4f}")

    def index_settings(self) -> dict[str, Any]:
        p = self.params
        bands, rows = self.banding()
        return {"num_perm": p.num_perm, "seed": p.seed, "bits": p.bits, "tokenizer": p.tokenizer, "ngram": p.ngram,
                "bands": bands, "rows": rows}

    def payload_columns(self) -> list[str]:
        return [self.params.text_column]

    @property
    def size_columns(self) -> list[str]:
        return [self.params.text_column]

    def size_of(self, table: pa.Table) -> list[int]:
        return [len(t or "") for t in table.column(self.params.text_column).to_pylist()]

    def rows_per_sample(self) -> int:
        return self.banding()[0]

    def signature_rows(self, table: pa.Table) -> pa.Table:
        """Per non-empty document: its label, band hashes and shingle hashes (what the index keeps).
        Built as Arrow lists from flat arrays: no Python list per document."""
        p = self.params
        bands, rows = self.banding()
        texts = [t or "" for t in table.column(p.text_column).to_pylist()]
        if p.tokenizer in ("word", "code") and p.bits == 32:  # shingles from the signatures' own pass
            sigs, (values, counts) = _signatures_fused(texts, p.num_perm, p.seed, p.tokenizer, p.ngram,
                                                       with_shingles=True)
        else:
            sigs = signatures(texts, p.num_perm, p.seed, p.tokenizer, p.ngram, p.bits)
            shingle_sets = [shingle_hashes(t, p.tokenizer, p.ngram, p.bits) for t in texts]
            counts = np.array([s.size for s in shingle_sets], np.int64)
            values = np.concatenate(shingle_sets) if shingle_sets else np.zeros(0, np.uint32)
        bh = band_hashes(sigs, bands, rows)
        shingles = pa.ListArray.from_arrays(pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32)),
                                            pa.array(values))
        band_lists = pa.ListArray.from_arrays(pa.array(np.arange(0, (len(texts) + 1) * bands, bands, dtype=np.int32)),
                                              pa.array(bh.reshape(-1)))
        keep = pa.array(np.flatnonzero(counts))  # an empty text has no near-duplicates
        return pa.table({"_sig": pa.array(self.labels_of(table), pa.string()).take(keep),
                         "_bands": band_lists.take(keep), "_shingles": shingles.take(keep)})

    def find_edges(self, sigs: list, n: int, old: list = ()) -> list:
        # Candidate pairs come in cliques (every copy of a text with every other one): 5 million
        # pairs for 1 million documents of which a fifth are copies, 5 GB of shingles if each pair
        # carried one side's set to the other. So the candidate graph's components come first, on
        # labels alone; each component then meets whole in one task, every shingle set once, where
        # its pairs are made again as the buckets made them, verified, and joined by a union-find.
        # The edges are stars from each sample to its set's smallest label.
        # A component of more than max_component_size samples (chains of buckets can make one) is
        # verified the way that moves payloads per pair instead, so that no task holds it whole.
        rows = map_tables(sigs, _band_rows)
        rows += meeting(rows, ["bucket"], map_tables(list(old), _band_rows), "bucket")
        links = hash_partition(rows, n, by_column("bucket", n, numeric=True), _bucket_links, fetch=False)
        groups = hash_partition(links, 1, lambda t: np.zeros(t.num_rows, np.int64),
                                _link_components(self.params.max_component_size), fetch=False)
        members = hash_partition(groups + list(sigs) + meeting(groups, ["_node"], list(old), "_sig"), n,
                                 label_of("_node", n), _in_group, fetch=False)
        similar = jaccard_at_least(self.params.threshold)
        edges = hash_partition(members, n, by_column("_group", n), _verified(similar), fetch=False)
        count, large = _large_members.options(num_returns=2).remote(groups[0])
        if gather([count])[0]:
            large_rows = [_having.remote(r, "label", large) for r in rows]
            pairs = hash_partition(large_rows, n, by_column("bucket", n, numeric=True), _candidates, fetch=False)
            edges += verify_pairs(pairs, sigs + meeting(pairs, ["_a", "_b"], list(old), "_sig"), n, "_shingles",
                                  similar)
        return edges


def _band_rows(sig: pa.Table) -> pa.Table:
    """One small row per (document, band): the bucket it falls in."""
    counts = pc.list_value_length(sig.column("_bands")).to_numpy()
    idx = pa.array(np.repeat(np.arange(sig.num_rows), counts))
    return pa.table({"bucket": pc.list_flatten(sig.column("_bands")), "label": pc.take(sig.column("_sig"), idx)})


def _candidates(_: int, t: pa.Table) -> pa.Table:
    """Pairs that share a bucket (a < b), once each however many buckets they share."""
    a, b = [], []
    if t.num_rows:
        t = t.take(pc.sort_indices(t, [("bucket", "ascending"), ("label", "ascending")]))
        buckets = t.column("bucket").to_numpy()
        labels = t.column("label").to_pylist()
        starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], len(buckets)]):
            for i in range(s, min(e, s + ANCHORS)):
                for j in range(i + 1, e):
                    if labels[i] != labels[j] and not among_earlier(labels[i], labels[j]):
                        a.append(labels[i])
                        b.append(labels[j])
    pairs = pa.table({"_a": pa.array(a, pa.string()), "_b": pa.array(b, pa.string())})
    return pairs.group_by(["_a", "_b"]).aggregate([]) if pairs.num_rows else pairs


def _bucket_links(_: int, t: pa.Table) -> pa.Table:
    """The buckets of this partition as links (`_node`, `_peer`) from each sample to the smallest
    label it shares a bucket with here, directly or through others: the candidate graph's
    components without its pairs (which _verified makes again)."""
    if not t.num_rows:
        return edges_table([], [])
    t = t.take(pc.sort_indices(t, [("bucket", "ascending"), ("label", "ascending")]))
    buckets = t.column("bucket").to_numpy()
    hub = np.maximum.accumulate(np.where(np.r_[True, buckets[1:] != buckets[:-1]], np.arange(len(buckets)), 0))
    return _stars(t.column("label").take(pa.array(hub)), t.column("label"))


def _link_components(limit: int):
    def components(_: int, t: pa.Table) -> pa.Table:
        """Every sample of the candidate graph with its component's smallest label, in one task
        (the links are few: at most one per sample and partition, and short; a union-find settles
        at once what label propagation takes dozens of rounds for on chains of buckets), and
        `_large`: its component has more than `limit` samples."""
        stars = _stars(t.column("_node"), t.column("_peer")) if t.num_rows else edges_table([], [])
        label = stars.column("_peer")
        sizes = pc.value_counts(label)
        big = sizes.field("values").filter(pc.greater(sizes.field("counts"), limit))
        return pa.table({"_node": stars.column("_node"), "_label": label, "_large": pc.is_in(label, value_set=big)})
    return components


@_remote
def _large_members(groups: pa.Table) -> tuple[int, pa.Array | None]:
    """How many samples are in components over the limit, and their labels."""
    large = groups.filter(groups.column("_large"))
    return large.num_rows, large.column("_node").combine_chunks() if large.num_rows else None


def _stars(a: pa.ChunkedArray | pa.Array, b: pa.ChunkedArray | pa.Array) -> pa.Table:
    """The components of the graph of label pairs (a[i], b[i]): a row (`_node`, `_peer`) for every
    label of a component of two or more, `_peer` the component's smallest label (itself included)."""
    a, b = (x.combine_chunks() if isinstance(x, pa.ChunkedArray) else x for x in (a, b))
    same = pc.equal(a, b).to_numpy(zero_copy_only=False)
    a, b = a.filter(pa.array(~same)), b.filter(pa.array(~same))
    if not len(a):
        return edges_table([], [])
    nodes = pc.unique(pa.concat_arrays([a, b]))
    nodes = nodes.take(pc.sort_indices(nodes))  # index order = label order
    ia, ib = pc.index_in(a, value_set=nodes).to_numpy(), pc.index_in(b, value_set=nodes).to_numpy()
    root = smallest_in_components(len(nodes), ia, ib)
    return pa.table({"_node": nodes, "_peer": nodes.take(pa.array(root))})


def _in_group(_: int, t: pa.Table) -> pa.Table:
    """The signature rows of the samples in a candidate component, with the component's label."""
    names = t.column_names
    is_sig = pc.is_valid(t.column("_sig")) if "_sig" in names else pa.array([False] * t.num_rows)
    groups, sig = t.filter(pc.invert(is_sig)), t.filter(is_sig)
    if "_large" in names:
        groups = groups.filter(pc.invert(groups.column("_large")))
    if not sig.num_rows or not groups.num_rows:
        return pa.table({"_sig": pa.array([], pa.string()), "_group": pa.array([], pa.string())})
    at = pc.index_in(sig.column("_sig"), value_set=groups.column("_node").combine_chunks())
    found = pc.is_valid(at)
    sig = sig.filter(found).select(["_sig", "_bands", "_shingles"])
    return sig.append_column("_group", groups.column("_label").combine_chunks().take(at.filter(found)))


def _verified(similar):
    def verify(_: int, t: pa.Table) -> pa.Table:
        """The candidate components of this partition: their pairs, made again as the shuffle by
        bucket made them (a bucket's samples are all in one component), verified by exact
        Jaccard; edges from each sample of a set of near-duplicates to its smallest label."""
        if not t.num_rows or "_bands" not in t.column_names:
            return edges_table([], [])
        pairs = _candidates(0, _band_rows(t))
        if not pairs.num_rows:
            return edges_table([], [])
        labels, shingles = t.column("_sig").combine_chunks(), t.column("_shingles").combine_chunks()
        a = pc.index_in(pairs.column("_a"), value_set=labels)
        b = pc.index_in(pairs.column("_b"), value_set=labels)
        ok = pa.array(np.asarray(similar(shingles.take(a), shingles.take(b)), bool))
        stars = _stars(pairs.column("_a").filter(ok), pairs.column("_b").filter(ok))
        moved = stars.filter(pc.not_equal(stars.column("_node"), stars.column("_peer")))
        src, dst = moved.column("_node"), moved.column("_peer")
        return pa.table({"_node": pa.chunked_array(src.chunks + dst.chunks, pa.string()),
                         "_peer": pa.chunked_array(dst.chunks + src.chunks, pa.string())})
    return verify
