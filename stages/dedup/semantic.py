"""Stage `dedup_semantic`: semantic duplicates by any embedding column (SemDeDup), on Ray.

SemDeDup (Abbas et al., 2023, arXiv:2303.09540) clusters the embeddings with k-means and
compares samples only within a cluster; a pair at or above a cosine similarity is a
duplicate. It works on any unit-normalised embedding: `clip_image_emb`,
`clip_video_emb`, `clap_audio_emb`, `st_<column>_emb`, or a column of an ingested table.

Default threshold 0.99: NeMo Curator's SemDeDup configuration (`eps_to_extract: 0.01`,
cosine >= 1 - eps), whose paper-scale settings remove a fifth to a half of web data;
lower it (0.95, 0.9) to remove more. Default `clusters`: the square root of the row
count (at most 50,000, SemDeDup's LAION-440M setting), which balances the cost of
assigning every sample to a centroid (N k) against comparing within clusters (N^2 / k).

How, without gathering the embeddings anywhere:
1. k-means is fit in one task on a sample of about SAMPLE_PER_CLUSTER rows per cluster
   (scikit-learn's KMeans, seeded); the sample is chosen by a hash of each sample id and
   sorted by label, so it does not depend on parts, blocks or workers.
2. Assignment by tasks: each sample joins its nearest centroid (its *home*), and also, up
   to `spill` more, every centroid c with |x - c| <= |x - home| + 2r, r = sqrt(2 (1 - t))
   the distance of two unit vectors at cosine t. By the triangle inequality, if y is
   within r of x and y's home is c, then x joined c: every pair at or above the threshold
   meets in the home of one of them, unless `spill` cut x's list short (bench/
   bench_semantic_dedup.py measures what that costs).
3. A shuffle by cluster; within a cluster every home member is compared with every
   member in blocks (one matrix product per block), and pairs at or above the threshold
   are joined by a union-find there, so a cluster of m copies sends m edges, not m^2.
   A cluster larger than `max_cluster_size` is split again by k-means inside its task
   (the same rule, so its pairs are still found) instead of being compared whole.
4. stages.dedup.near: components, keep rule, `cluster_id`, `duplicate_of`, the index
   and `against`, exactly as for the other dedup stages.

Similarities are computed in float32 and those within 1e-4 of the threshold again in
float64, one pair at a time, so a decision never depends on how rows were batched.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.shuffle import hash_partition, map_tables

from .keep import EARLIER, DedupParams
from .near import NearDuplicates, by_column, edges_table, meeting, smallest_in_components

SAMPLE_PER_CLUSTER = 40  # rows k-means is fit on, per cluster
MAX_CLUSTERS = 50_000
BLOCK = 512  # home rows compared at once within a cluster
BAND = 1e-4  # float32 similarities this near the threshold are computed again in float64


class DedupSemanticParams(DedupParams):
    embedding_column: str = Field("clip_image_emb", description="the embedding column to compare (any list of floats: "
                                                                "clip_image_emb, clap_audio_emb, st_caption_emb, ...)")
    threshold: float = Field(0.99, gt=0, le=1, description="cosine similarity at or above which two samples are "
                                                          "duplicates (NeMo Curator's SemDeDup default, eps 0.01)")
    clusters: int | None = Field(None, ge=1, le=1_000_000, description="k of k-means (default: the square root of the "
                                                                      "row count, at most 50,000)")
    seed: int = Field(0, description="seed of the k-means sample's fit")
    spill: int = Field(2, ge=0, le=64, description="other clusters a sample near a border also joins, at most")
    max_cluster_size: int = Field(20_000, ge=100, description="a cluster larger than this is split again by k-means "
                                                              "rather than compared whole")


class DedupSemantic(NearDuplicates):
    """Semantic duplicates: k-means clusters of an embedding, pairs at a cosine threshold within them."""

    name = "dedup_semantic"
    Params = DedupSemanticParams
    cluster_prefix = "e"
    size_columns = ["original_bytes"]

    @property
    def similarity(self) -> str:
        return f"semantic duplicate (cosine >= {self.params.threshold:g} of {self.params.embedding_column})"

    def describe(self) -> str:
        p = self.params
        return (f"k-means on a sample ({p.clusters or 'sqrt(rows)'} clusters, seed {p.seed}), each sample in its "
                f"nearest cluster and up to {p.spill} more near a border, pairs at cosine >= {p.threshold:g} "
                "within clusters")

    def index_settings(self) -> dict[str, Any]:
        return {"signature": "unit-embedding", "embedding_column": self.params.embedding_column}

    def payload_columns(self) -> list[str]:
        return [self.params.embedding_column]

    def size_of(self, table: pa.Table) -> list[int]:
        if "original_bytes" in table.column_names:  # any modality's ingest records it
            return [int(v or 0) for v in table.column("original_bytes").to_pylist()]
        return [0] * table.num_rows  # no sizes: every sample ties, the first survives

    def rows_per_sample(self) -> int:
        return 1 + self.params.spill

    def signature_rows(self, table: pa.Table) -> pa.Table:
        """`_sig` and `_emb` (unit float32) of every row whose embedding is usable: present,
        finite and not all zeros; the others are not compared."""
        labels = self.labels_of(table)
        ok, vectors = unit_rows(table.column(self.params.embedding_column))
        found = np.flatnonzero(ok)
        return pa.table({"_sig": pa.array([labels[i] for i in found], pa.string()),
                         "_emb": _list_column(vectors, found)})

    def find_edges(self, sigs: list, n: int, old: list = ()) -> list:
        import ray

        p = self.params
        rows = sum(ray.get([_num_rows.remote(s) for s in sigs]))
        if rows == 0:
            return []
        k = min(p.clusters or math.ceil(math.sqrt(rows)), MAX_CLUSTERS, rows)
        fraction = min(1.0, max(k * SAMPLE_PER_CLUSTER, 1000) / rows)
        centroids = _fit.remote(k, p.seed, *[_sample.remote(s, fraction) for s in sigs])
        assign = lambda t: _assign(t, ray.get(centroids), p.threshold, p.spill)  # noqa: E731
        members = map_tables(sigs, assign)
        members += meeting(members, ["bucket"], map_tables(list(old), assign), "bucket")
        compare = lambda _, t: _edges(t, p.threshold, p.spill, p.max_cluster_size, p.seed)  # noqa: E731
        return hash_partition(members, n, by_column("bucket", n, numeric=True), compare, fetch=False)


# -- vectors ----------------------------------------------------------------------------------
def unit_rows(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[np.ndarray]]:
    """Which rows hold a usable vector, and each such row's vector scaled to unit length
    (float32; lengths may differ between rows: _assign keeps those of the centroids')."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):
        raise ValueError(f"the embedding column must hold lists of numbers, not {column.type}")
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(column)
    if not (pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type)):
        raise ValueError(f"the embedding column must hold lists of numbers, not {column.type}")
    values = pc.fill_null(flat, float("nan")).to_numpy(zero_copy_only=False).astype(np.float32)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    ok = np.zeros(len(column), bool)
    out: list[np.ndarray] = []
    for i, (s, m) in enumerate(zip(starts, lengths)):
        v = values[s:s + m]
        norm = float(np.sqrt(np.dot(v, v))) if m else 0.0
        if m and np.isfinite(norm) and norm > 0:
            ok[i] = True
            out.append(v / np.float32(norm))
        else:
            out.append(v)
    return ok, out


def _list_column(vectors: list[np.ndarray], rows) -> pa.Array:
    chosen = [vectors[i] for i in rows]
    offsets = np.concatenate(([0], np.cumsum([len(v) for v in chosen]))).astype(np.int32)
    flat = np.concatenate(chosen).astype(np.float32) if chosen else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()))


def _matrix(column, dim: int) -> np.ndarray:
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)


def _id_hash(label: str) -> int:
    return int.from_bytes(hashlib.blake2b(label.split("|", 1)[1].encode(), digest_size=8).digest(), "big")


# -- k-means ----------------------------------------------------------------------------------
def _remote(fn):
    import ray

    return ray.remote(fn)


@_remote
def _num_rows(t: pa.Table) -> int:
    return t.num_rows


@_remote
def _sample(t: pa.Table, fraction: float) -> pa.Table:
    """The rows whose id hashes below the fraction: the same rows whatever the layout."""
    if fraction >= 1.0 or not t.num_rows:
        return t
    limit = int(fraction * 2 ** 64)
    return t.filter(pa.array([_id_hash(s) < limit for s in t.column("_sig").to_pylist()], pa.bool_()))


@_remote
def _fit(k: int, seed: int, *samples: pa.Table) -> np.ndarray:
    """Unit centroids of k-means on the sample (at most k; the most common vector length)."""
    table = pa.concat_tables(samples)
    if not table.num_rows:
        return np.zeros((0, 0), np.float32)
    table = table.take(pc.sort_indices(table, [("_sig", "ascending")]))
    lengths = pc.list_value_length(table.column("_emb")).to_numpy(zero_copy_only=False)
    values, counts = np.unique(lengths, return_counts=True)
    dim = int(values[counts == counts.max()].max())
    table = table.filter(pa.array(lengths == dim))
    return kmeans(_matrix(table.column("_emb").combine_chunks(), dim), k, seed)


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Unit centroids of x's k-means (scikit-learn, one init, seeded); x itself when k >= its rows."""
    if len(x) <= k:
        return x.copy()
    from sklearn.cluster import KMeans

    centres = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=50).fit(x).cluster_centers_
    norms = np.linalg.norm(centres, axis=1, keepdims=True)
    return np.ascontiguousarray(centres / np.where(norms > 0, norms, 1), dtype=np.float32)


def homes(x: np.ndarray, centroids: np.ndarray, threshold: float, spill: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's clusters, (row, cluster) pairs, and whether each is the row's home: the
    nearest centroid, and up to `spill` more within 2r further (r: the distance at the threshold).
    The nearest few are found in float32 and ranked again in float64, row by row."""
    k = len(centroids)
    if not len(x) or not k:
        return np.zeros((0, 2), np.int64), np.zeros(0, bool)
    if len(x) > 4096:  # bounded memory: (rows x k) similarities at a time
        found = [homes(x[i:i + 4096], centroids, threshold, spill) for i in range(0, len(x), 4096)]
        shifted = [np.column_stack([f[0][:, 0] + i * 4096, f[0][:, 1]]) for i, f in enumerate(found)]
        return np.concatenate(shifted), np.concatenate([f[1] for f in found])
    near = min(k, spill + 3)
    sims = x @ centroids.T
    top = np.argpartition(-sims, near - 1, axis=1)[:, :near] if near < k else np.tile(np.arange(k), (len(x), 1))
    exact = np.einsum("ij,ikj->ik", x.astype(np.float64), centroids.astype(np.float64)[top])
    order = np.lexsort((top, -exact), axis=1)  # most similar first, the lower cluster on ties
    top, exact = np.take_along_axis(top, order, 1), np.take_along_axis(exact, order, 1)
    dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * exact))
    reach = 2 * math.sqrt(2 * (1 - threshold))
    joins = dist <= dist[:, :1] + reach
    joins[:, 1 + spill:] = False
    rows, cols = np.nonzero(joins)
    return np.stack([rows, top[rows, cols]], axis=1), cols == 0


def _assign(t: pa.Table, centroids: np.ndarray, threshold: float, spill: int) -> pa.Table:
    """One row per (sample, cluster it joins): bucket, label, home, the vector."""
    if not centroids.size:
        t = t.slice(0, 0)
    dim = centroids.shape[1]
    lengths = pc.list_value_length(t.column("_emb")).to_numpy(zero_copy_only=False) if t.num_rows else np.zeros(0)
    t = t.filter(pa.array(lengths == dim)) if t.num_rows else t
    x = _matrix(t.column("_emb"), dim) if t.num_rows else np.zeros((0, dim), np.float32)
    pairs, home = homes(x, centroids, threshold, spill)
    take = pa.array(pairs[:, 0])
    return pa.table({"bucket": pa.array(pairs[:, 1].astype(np.uint64), pa.uint64()),
                     "label": t.column("_sig").take(take) if t.num_rows else pa.array([], pa.string()),
                     "home": pa.array(home, pa.bool_()),
                     "_emb": t.column("_emb").take(take) if t.num_rows else pa.array([], pa.list_(pa.float32()))})


# -- pairs within clusters --------------------------------------------------------------------
def _edges(t: pa.Table, threshold: float, spill: int, max_size: int, seed: int) -> pa.Table:
    """Every cluster of this partition compared; edges from each member to its group's root."""
    if not t.num_rows:
        return edges_table([], [])
    t = t.take(pc.sort_indices(t, [("bucket", "ascending"), ("label", "ascending")]))
    buckets = t.column("bucket").to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], buckets[1:] != buckets[:-1])))
    ends = np.append(starts[1:], len(buckets))
    dim = len(t.column("_emb")[0].values)
    x = _matrix(t.column("_emb"), dim)
    labels = t.column("label")
    home = t.column("home").to_numpy(zero_copy_only=False)
    old = pc.starts_with(labels, EARLIER).to_numpy(zero_copy_only=False)
    src, dst = [], []
    for s, e in zip(starts, ends):
        parent = np.arange(e - s)
        first, at_home, all_old = _copies(x[s:e], home[s:e], old[s:e], parent)
        link_within(x[s:e], first[at_home], first, all_old, threshold, parent, spill, max_size, seed)
        roots = _roots(parent)
        moved = np.flatnonzero(roots != np.arange(e - s))
        src.append(moved + s)
        dst.append(roots[moved] + s)
    a, b = np.concatenate(src), np.concatenate(dst)
    return pa.table({"_node": pa.concat_arrays([labels.take(a).combine_chunks(), labels.take(b).combine_chunks()]),
                     "_peer": pa.concat_arrays([labels.take(b).combine_chunks(), labels.take(a).combine_chunks()])})


def _copies(x: np.ndarray, home: np.ndarray, old: np.ndarray, parent: np.ndarray):
    """Rows with the very same vector joined at once, so that only one of each is compared
    (a cluster of 10,000 copies is one row, not 10^8 pairs). Returns the first row of each
    vector, whether any of its copies is at home here, and whether all of them are an index's."""
    keys = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1])))[:, 0]
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    copy = np.flatnonzero(first[group] != np.arange(len(x)))
    both_old = old[copy] & old[first[group[copy]]]
    _union(parent, copy[~both_old], first[group[copy[~both_old]]])
    at_home = np.zeros(len(first), bool)
    np.logical_or.at(at_home, group, home)
    all_old = np.ones(len(first), bool)
    np.logical_and.at(all_old, group, old)
    old_of = np.zeros(len(x), bool)
    old_of[first] = all_old
    return first, at_home, old_of


def _roots(parent: np.ndarray) -> np.ndarray:
    roots = parent.copy()
    while True:
        up = roots[roots]
        if np.array_equal(up, roots):
            return roots
        roots = up


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Join the groups of every pair (a[i], b[i]); the lower index (the smaller label) is the root."""
    if len(a) > 256:  # many pairs (a cluster of copies): their components first, then one join per member
        nodes, at = np.unique(np.concatenate([a, b]), return_inverse=True)
        a, b = nodes, nodes[smallest_in_components(len(nodes), at[:len(a)], at[len(a):])]
    for i, j in zip(a.tolist(), b.tolist()):
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)


def link_within(x: np.ndarray, queries: np.ndarray, members: np.ndarray, old: np.ndarray, threshold: float,
                parent: np.ndarray, spill: int, max_size: int, seed: int) -> None:
    """Union every (query, member) pair at or above the threshold, queries and members being
    row numbers of x. Too many members: split them by k-means and recurse, each query
    going to the sub-clusters it joins (the same rule as `homes`)."""
    if not len(queries):
        return
    if len(members) > max_size:
        parts = max(2, math.ceil(2 * len(members) / max_size))
        centres = kmeans(x[members[::max(1, len(members) // (parts * SAMPLE_PER_CLUSTER))]], parts, seed)
        joined, home = homes(x[members], centres, threshold, spill)
        groups = [joined[joined[:, 1] == c, 0] for c in range(len(centres))]
        if max(len(g) for g in groups) < 0.9 * len(members):  # it did split: each part on its own
            for c, group in enumerate(groups):  # a pair meets where one of the two is at home (see homes)
                homed = joined[(joined[:, 1] == c) & home, 0]
                link_within(x, members[homed], members[group], old, threshold, parent, spill, max_size, seed)
            return
    xm = x[members]
    for b in range(0, len(queries), BLOCK):
        q = queries[b:b + BLOCK]
        sims = x[q] @ xm.T
        qi, mj = np.nonzero(sims >= threshold - BAND)
        if not len(qi):
            continue
        a, c = q[qi], members[mj]
        unsure = sims[qi, mj] < threshold + BAND
        if unsure.any():  # near the threshold: the decision from float64, pair by pair
            sure = ~unsure
            exact = np.einsum("ij,ij->i", x[a[unsure]].astype(np.float64), x[c[unsure]].astype(np.float64))
            sure[np.flatnonzero(unsure)] = exact >= threshold
            a, c = a[sure], c[sure]
        keep = (a != c) & ~(old[a] & old[c])  # two of an index's samples are never paired (among_earlier)
        _union(parent, a[keep], c[keep])
