"""dedup_semantic: k-means clusters of an embedding, pairs at a cosine threshold within them."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli, fs, ledger
from stages.dedup.semantic import DedupSemantic, _roots, _union, homes, kmeans, link_within, unit_rows

DIM = 32


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _at_cosine(v: np.ndarray, cos: float, rng) -> np.ndarray:
    """A unit vector at exactly `cos` to the unit vector v."""
    u = rng.normal(size=v.shape)
    u = _unit(u - np.dot(u, v) * v)
    return cos * v + np.sqrt(1 - cos ** 2) * u


def _corpus(seed: int = 0, n: int = 300) -> dict[str, np.ndarray]:
    """Rows around 30 topics (two of a topic are at cosine ~0.3), and planted pairs at known cosines."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.normal(size=(30, DIM)))
    rows = {f"r{i}": _unit(topics[i % 30] + 0.25 * rng.normal(size=DIM)) for i in range(n)}
    rows["dup_r5"] = _at_cosine(rows["r5"], 0.995, rng)  # a duplicate at 0.99
    rows["copy_r9"] = rows["r9"].copy()  # the very same vector
    rows["miss_r7"] = _at_cosine(rows["r7"], 0.98, rng)  # a duplicate only at 0.97
    a = rows["r11"]
    rows["chain_b"] = _at_cosine(a, 0.993, rng)
    # chain_c: 0.993 to chain_b and about 0.97 to r11 (in the plane away from r11)
    b = rows["chain_b"]
    away = _unit(b - np.dot(b, a) * a)
    rows["chain_c"] = _unit(np.cos(np.arccos(0.993) * 2) * a + np.sin(np.arccos(0.993) * 2) * away)
    return rows


def _truth(rows: dict[str, np.ndarray], threshold: float) -> dict[str, str]:
    """Exact all-pairs: each component's first row (in `rows` order) and what the others duplicate."""
    names = list(rows)
    x = _unit(np.array([rows[k] for k in names], np.float64))
    sims = x @ x.T
    a, b = np.nonzero(np.triu(sims >= threshold, 1))
    parent = np.arange(len(names))
    _union(parent, a, b)
    roots = _roots(parent)
    return {names[i]: names[r] for i, r in enumerate(roots) if r != i}


def _write(path: str, rows: dict[str, np.ndarray], kind=pa.float16(), extra: dict | None = None,
           column: str = "emb") -> str:
    vectors = [v.astype(np.float64).tolist() for v in rows.values()]
    table = pa.table({"name": list(rows), column: pa.array(vectors, pa.list_(kind)), **(extra or {})})
    pq.write_table(table, path)
    return path


def _run(src: str, out: str, *sets: str, against: str | None = None, column: str | None = "emb"
         ) -> dict[str, tuple[str, str]]:
    args = ["stage", "dedup_semantic", "--input", src, "--output", out]
    if column:
        args += ["--set", f"embedding_column={column}"]
    for s in sets:
        args += ["--set", s]
    if against:
        args += ["--against", against]
    assert cli.main(args) == 0
    assert ledger.audit(out)["ok"]
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-dedup_semantic"))
    ids = dict(zip(kept.column("sample_id").to_pylist(), kept.column("name").to_pylist()))
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", "01-dedup_semantic"))
    if rejects is None:
        return {}
    return {n: (why, ids.get(of, of)) for n, why, of in zip(rejects.column("name").to_pylist(),
                                                             rejects.column("reject_reason").to_pylist(),
                                                             rejects.column("duplicate_of").to_pylist())}


def test_the_border_rule_brings_every_close_pair_together():
    """homes: with room to spill, a pair at or above the threshold always shares the home
    of one of the two; without, some are missed (what `spill` is for)."""
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(3000, 24))).astype(np.float32)
    x = np.concatenate([x, _unit(x[:600] + 0.02 * rng.normal(size=(600, 24))).astype(np.float32)])
    threshold = 0.99
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    pairs = list(zip(*np.nonzero(np.triu(sims >= threshold, 1))))
    assert len(pairs) > 500
    centres = kmeans(x[::7], 60, 0)
    met = {}
    for spill in (0, 64):
        joined, home = homes(x, centres, threshold, spill)
        where = {}
        for (row, cluster), h in zip(joined.tolist(), home.tolist()):
            where.setdefault(row, set()).add(cluster)
        at_home = {row: c for (row, c), h in zip(joined.tolist(), home.tolist()) if h}
        assert len(at_home) == len(x)  # every row has one home, its nearest centroid
        assert all(at_home[r] == int(np.argmax(x[r] @ centres.T)) for r in range(0, len(x), 50))
        met[spill] = sum(at_home[b] in where[a] or at_home[a] in where[b] for a, b in pairs) / len(pairs)
    assert met[64] == 1.0 and met[0] < 1.0


def test_a_large_cluster_is_split_without_losing_pairs_and_copies_collapse():
    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(2500, 16))).astype(np.float32)
    x = np.concatenate([x, _unit(x[:500] + 0.02 * rng.normal(size=(500, 16))).astype(np.float32)])
    old = np.zeros(len(x), bool)
    whole, split = np.arange(len(x)), np.arange(len(x))
    link_within(x, np.arange(len(x)), np.arange(len(x)), old, 0.99, whole, 64, 100_000, 0)
    link_within(x, np.arange(len(x)), np.arange(len(x)), old, 0.99, split, 64, 400, 0)
    assert np.array_equal(_roots(whole), _roots(split))
    assert len(set(_roots(whole).tolist())) < len(x) - 400  # the planted pairs were found
    # two of an index's samples are never paired
    old[:] = True
    alone = np.arange(len(x))
    link_within(x, np.arange(len(x)), np.arange(len(x)), old, 0.99, alone, 64, 100_000, 0)
    assert np.array_equal(_roots(alone), np.arange(len(x)))


def test_unit_rows_takes_every_list_of_numbers_and_skips_unusable_vectors():
    col = pa.array([[3.0, 4.0], None, [0.0, 0.0], [float("nan"), 1.0], [1.0, 0.0, 0.0], []], pa.list_(pa.float16()))
    ok, vectors = unit_rows(col)
    assert ok.tolist() == [True, False, False, False, True, False]
    assert np.allclose(vectors[0], [0.6, 0.8])
    for kind in (pa.list_(pa.float32()), pa.large_list(pa.float64()), pa.list_(pa.float32(), 2)):
        ok, vectors = unit_rows(pa.array([[3.0, 4.0], [1.0, 1.0]], kind))
        assert ok.all() and np.allclose(vectors[0], [0.6, 0.8])
    with pytest.raises(ValueError, match="lists of numbers"):
        unit_rows(pa.array(["a", "b"]))


@pytest.mark.parametrize("threshold", [0.99, 0.97])
def test_dedup_semantic_finds_exactly_the_pairs_at_the_threshold(ray_session, tmp_path, threshold):
    """Against exact all-pairs cosine: duplicates at 0.995 and copies are removed at 0.99,
    a pair at 0.98 only at 0.97; a chain joins one cluster; unusable vectors stay, uncompared."""
    rows = _corpus()
    src = _write(str(tmp_path / "emb.parquet"), rows)
    table = pq.read_table(src)
    extra = pa.table({"name": ["none", "zeros", "nan"],
                      "emb": pa.array([None, [0.0] * DIM, [float("nan")] * DIM], pa.list_(pa.float16()))})
    pq.write_table(pa.concat_tables([table, extra]), src)
    got = _run(src, str(tmp_path / "out"), f"threshold={threshold}")
    truth = _truth({k: v.astype(np.float16).astype(np.float64) for k, v in rows.items()}, threshold)
    assert {k: of for k, (_, of) in got.items()} == truth
    assert {why for why, _ in got.values()} == {"duplicate"}
    expected = {"dup_r5": "r5", "copy_r9": "r9", "chain_b": "r11", "chain_c": "r11"}
    if threshold == 0.97:
        expected["miss_r7"] = "r7"
    assert {k: truth[k] for k in expected} == expected
    kept = fs.read_parquet_dir(os.path.join(str(tmp_path / "out"), "stages", "01-dedup_semantic"))
    cluster = dict(zip(kept.column("name").to_pylist(), kept.column("cluster_id").to_pylist()))
    assert cluster["r5"] and cluster["r5"].startswith("e") and cluster["r6"] is None
    assert cluster["none"] is None and cluster["zeros"] is None and cluster["nan"] is None


def test_the_result_does_not_depend_on_parts_partitions_clusters_or_seed(ray_session, tmp_path, monkeypatch):
    import pipeline.runner
    import pipeline.shuffle
    import stages.dedup.near

    rows = _corpus(seed=4, n=400)
    src = _write(str(tmp_path / "emb.parquet"), rows)
    outcomes = []
    layouts = [(100_000, 200_000, 32, "clusters=1"), (7, 60, 3, "clusters=40"), (64, 200_000, 32, "seed=7"),
               (33, 25, 5, "spill=0")]
    for i, (rows_per_part, rows_per_partition, map_tasks, setting) in enumerate(layouts):
        monkeypatch.setattr(pipeline.runner, "LISTING_ROWS_PER_PART", rows_per_part)
        monkeypatch.setattr(stages.dedup.near, "ROWS_PER_PARTITION", rows_per_partition)
        monkeypatch.setattr(pipeline.shuffle, "MAP_TASKS", map_tasks)
        outcomes.append(_run(src, str(tmp_path / f"out{i}"), setting))
    assert outcomes[0] == {k: ("duplicate", of) for k, of in _truth(
        {k: v.astype(np.float16).astype(np.float64) for k, v in rows.items()}, 0.99).items()}
    assert all(o == outcomes[0] for o in outcomes[1:])


def test_keep_rule_and_each_embedding_column_kind(ray_session, tmp_path):
    rows = _corpus(seed=5, n=120)
    quality = pa.array([float(i % 7) for i in range(len(rows))])
    names = list(rows)
    # what embed_clip (images, video), embed_clap and embed_text write (float16 lists), and a table's own
    kinds = [("clip_image_emb", pa.float16(), None), ("clip_video_emb", pa.float16(), "clip_video_emb"),
             ("clap_audio_emb", pa.float16(), "clap_audio_emb"), ("st_caption_emb", pa.float16(), "st_caption_emb"),
             ("emb", pa.float32(), "emb"), ("emb", pa.float64(), "emb")]
    for name, kind, setting in kinds:  # None: the default column, clip_image_emb
        src = _write(str(tmp_path / f"{name}-{kind}.parquet"), rows, kind, column=name)
        got = _run(src, str(tmp_path / f"out-{name}-{kind}"), column=setting)
        assert got["dup_r5"] == ("duplicate", "r5") and got["copy_r9"] == ("duplicate", "r9"), (name, kind)
    # keep=max:quality: of each set, the highest quality survives
    q = dict(zip(names, quality.to_pylist()))
    q["dup_r5"], q["r5"] = 9.0, 1.0
    got = _run(_write(str(tmp_path / "q.parquet"), rows, extra={"quality": pa.array([q[k] for k in names])}),
               str(tmp_path / "out-q"), "keep=max:quality")
    assert got["r5"] == ("duplicate", "dup_r5")


def test_an_index_removes_copies_of_an_earlier_run_and_must_match(ray_session, tmp_path):
    first = _corpus(seed=6, n=100)
    rng = np.random.default_rng(9)
    second = {f"new{i}": _unit(rng.normal(size=DIM)) for i in range(40)}
    second |= {"again_r3": first["r3"].copy(), "near_r20": _at_cosine(first["r20"], 0.996, rng)}
    run1, run2 = str(tmp_path / "run1"), str(tmp_path / "run2")
    _run(_write(str(tmp_path / "first.parquet"), first), run1)
    index = os.path.join(run1, "index", "dedup_semantic")
    made = json.loads(fs.read_bytes(os.path.join(index, "index.json")))
    assert made["embedding_column"] == "emb"
    assert fs.read_parquet_dir(index).num_rows == len(first) - len(_truth(first, 0.99))  # the survivors
    got = _run(_write(str(tmp_path / "second.parquet"), second), run2, "against_reason=contaminated",
               against=index)
    r1 = fs.read_parquet_dir(os.path.join(run1, "stages", "01-dedup_semantic"))
    ids = dict(zip(r1.column("name").to_pylist(), r1.column("sample_id").to_pylist()))
    assert got == {"again_r3": ("contaminated", ids["r3"]), "near_r20": ("contaminated", ids["r20"])}
    # an index of another embedding column is refused
    args = ["stage", "dedup_semantic", "--input", str(tmp_path / "second.parquet"), "--output", str(tmp_path / "r3"),
            "--set", "embedding_column=emb", "--against", index]
    with open(os.path.join(index, "index.json"), "w") as f:
        json.dump(made | {"embedding_column": "clip_image_emb"}, f)
    assert cli.main(args) != 0


def test_clusters_default_from_rows_and_params_are_checked():
    stage = DedupSemantic()
    assert stage.params.threshold == 0.99 and stage.params.clusters is None and stage.params.spill == 2
    with pytest.raises(ValueError):
        DedupSemantic(threshold=1.5)
    with pytest.raises(ValueError):
        DedupSemantic(clusters=0)
