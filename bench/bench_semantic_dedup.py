"""dedup_semantic against exact all-pairs cosine similarity, in the same run.

    .venv/bin/python bench/bench_semantic_dedup.py [--quality 50000] [--rows 1000000] [--dim 384]

Embeddings (float16 lists, as mmcurate's embedding stages write them) are unit vectors
around topics: two members of a topic sit at cosine ~0.5, as unrelated captions or
photographs of one kind do in a real embedding. Planted on top: near-duplicates of
earlier rows at known cosines drawn from [0.99, 0.999] (10% of rows) and hard
negatives at [0.95, 0.985] (2%). The stage runs with its defaults (threshold 0.99,
clusters sqrt(rows), spill 2) as `mmcurate stage dedup_semantic` on embedded Ray, 2 CPUs.

1. Quality, on --quality rows: truth is every pair at or above the threshold by exact
   all-pairs cosine (blocked float64-checked matrix products, one process):
     recall    = true pairs that are not both kept        (goal >= 0.95)
     precision = removed rows that have a true partner    (goal >= 0.99)
2. Throughput, on --rows rows of --dim: seconds, rows/s, peak memory of the driver and
   of the largest worker, what Ray spilled; against the single-process exact all-pairs
   baseline (every row against every row, blocked matrix products with all rows in
   memory), timed on its first 2,000 query rows against all rows and scaled to all of
   them (running it whole would take hours here: the printed figure says so).
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from bench_dedup_scale import WorkerPeak, spilled_mib  # noqa: E402

THRESHOLD = 0.99


def make(folder: str, n: int, dim: int, seed: int = 0, rows_per_file: int = 20_000) -> np.ndarray:
    """The embeddings, written as parquet parts of (i, emb: list<float16>); returns them as
    float32 unit vectors of the stored float16 values (what the stage compares)."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(max(1, n // 500), dim)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    os.makedirs(folder, exist_ok=True)
    for start in range(0, n, rows_per_file):
        m = min(rows_per_file, n - start)
        x = topics[rng.integers(len(topics), size=m)] + rng.normal(size=(m, dim)).astype(np.float32) / np.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        kind = rng.random(m)
        for j in np.flatnonzero((kind < 0.12) & (np.arange(m) + start > 0)):
            src = out[rng.integers(start)] if start else x[rng.integers(max(1, j))]
            cos = rng.uniform(0.99, 0.999) if kind[j] < 0.10 else rng.uniform(0.95, 0.985)
            u = rng.normal(size=dim).astype(np.float32)
            u -= np.dot(u, src) * src
            u /= np.linalg.norm(u)
            x[j] = cos * src + math.sqrt(1 - cos * cos) * u
        half = x.astype(np.float16)
        stored = half.astype(np.float32)
        out[start:start + m] = stored / np.linalg.norm(stored, axis=1, keepdims=True)
        offsets = pa.array(np.arange(0, (m + 1) * dim, dim, dtype=np.int32))
        emb = pa.ListArray.from_arrays(offsets, pa.array(half.reshape(-1), pa.float16()))
        pq.write_table(pa.table({"i": pa.array(np.arange(start, start + m)), "emb": emb}),
                       os.path.join(folder, f"part-{start // rows_per_file:05d}.parquet"))
    return out


def true_pairs(x: np.ndarray, threshold: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j at or above the threshold, exactly (float32 products, float64 near it)."""
    a_all, b_all = [], []
    for s in range(0, len(x), block):
        sims = x[s:s + block] @ x.T
        i, j = np.nonzero(sims >= threshold - 1e-4)
        i = i + s
        keep = j > i
        i, j = i[keep], j[keep]
        exact = np.einsum("ij,ij->i", x[i].astype(np.float64), x[j].astype(np.float64)) >= threshold
        a_all.append(i[exact])
        b_all.append(j[exact])
    return np.concatenate(a_all), np.concatenate(b_all)


def all_pairs_rate(x: np.ndarray, threshold: float, queries: int = 2000, block: int = 500) -> float:
    """Rows per second of the exact all-pairs baseline (one process): query rows against all rows."""
    t0 = time.perf_counter()
    found = 0
    for s in range(0, queries, block):
        found += int(np.count_nonzero(x[s:s + block] @ x.T >= threshold))
    return queries / (time.perf_counter() - t0)


def run_stage(folder: str, out: str) -> tuple[float, set[int]]:
    from pipeline import cli, fs

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    assert cli.main(["stage", "dedup_semantic", "--input", folder, "--output", out,
                     "--set", "embedding_column=emb"]) == 0
    seconds = time.perf_counter() - t0
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", "01-dedup_semantic"), ["i"])
    return seconds, set(rejects.column("i").to_pylist()) if rejects is not None else set()


def _took(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", type=int, default=50_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    a = ap.parse_args()
    import ray

    from pipeline.runner import connect_ray

    connect_ray(num_cpus=2, object_store_mb=4096)
    ray.data.DataContext.get_current().enable_progress_bars = False
    data = os.path.join(HERE, "_data", "semantic")
    shutil.rmtree(data, ignore_errors=True)

    x = make(os.path.join(data, "quality"), a.quality, a.dim)
    t0 = time.perf_counter()
    ta, tb = true_pairs(x, THRESHOLD)
    truth_s = time.perf_counter() - t0
    seconds, removed = run_stage(os.path.join(data, "quality"), os.path.join(data, "quality-out"))
    recall = float(np.mean([p in removed or q in removed for p, q in zip(ta.tolist(), tb.tolist())])) if len(ta) else 1.0
    partnered = set(ta.tolist()) | set(tb.tolist())
    precision = len(removed & partnered) / max(1, len(removed))
    print(f"# {a.quality:,} embeddings of {a.dim} (float16), {len(ta):,} true pairs at cosine >= {THRESHOLD} "
          f"(exact all-pairs in {truth_s:.1f}s, one process)")
    print(f"1. dedup_semantic removed {len(removed):,} in {seconds:.1f}s: recall {recall:.4f} (goal >= 0.95), "
          f"precision {precision:.4f} (goal >= 0.99)", flush=True)
    record("semantic_dedup", f"dedup_semantic vs exact all-pairs cosine, {a.quality:,} x {a.dim}",
           f"recall {recall:.4f}, precision {precision:.4f}", goal="recall >= 0.95 at precision >= 0.99",
           met=recall >= 0.95 and precision >= 0.99)
    shutil.rmtree(os.path.join(data, "quality"), ignore_errors=True)
    del x

    if not a.rows:
        return
    t0 = time.perf_counter()
    x = make(os.path.join(data, "scale"), a.rows, a.dim, seed=1)
    made = time.perf_counter() - t0
    rate = all_pairs_rate(x, THRESHOLD)
    baseline_s = a.rows / rate
    del x
    peak = WorkerPeak()
    peak.start()
    seconds, removed = run_stage(os.path.join(data, "scale"), os.path.join(data, "scale-out"))
    peak.stop = True
    spilled = spilled_mib()
    print(f"2. {a.rows:,} x {a.dim} (made in {made:.0f}s): dedup_semantic {seconds:.0f}s, {a.rows / seconds:,.0f} "
          f"rows/s on 2 CPUs, removed {len(removed):,}; driver private {peak.driver:,} MiB (max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024:,} MiB: it also built the data), "
          f"largest worker private {peak.private:,} MiB; spilled {spilled:.0f} MiB. Exact all-pairs, one process: "
          f"{rate:,.0f} rows/s (timed on 2,000 query rows x {a.rows:,}), so {_took(baseline_s)} for all: "
          f"{baseline_s / seconds:.0f}x slower", flush=True)
    record("semantic_dedup", f"dedup_semantic, {a.rows:,} x {a.dim}", f"{seconds:.0f} s, {a.rows / seconds:,.0f} rows/s; "
           f"driver {peak.driver:,} MiB, worker {peak.private:,} MiB, spilled {spilled:.0f} MiB",
           baseline=f"exact all-pairs, one process: {rate:,.0f} rows/s ({_took(baseline_s)})",
           ratio=baseline_s / seconds)


if __name__ == "__main__":
    main()
