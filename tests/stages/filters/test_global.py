"""Global filters on Ray: the CLIP-score top fraction, cleanlab, representation and rebalancing."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli, fs, ledger
from pipeline.select import at_most, descending_digits, id_digits
from stages.filters.clip_score import FilterClipScore


def _write(tmp_path, name: str, rows: list[dict]) -> str:
    path = str(tmp_path / f"{name}.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _outcome(out: str, segment: str) -> tuple[pa.Table, pa.Table | None]:
    return (fs.read_parquet_dir(os.path.join(out, "stages", segment)),
            fs.read_parquet_dir(os.path.join(out, "rejects", segment)))


def test_top_fraction_is_exact_and_independent_of_layout(ray_session):
    rng = np.random.default_rng(0)
    n = 1000
    scores = np.round(rng.normal(0.25, 0.05, n), 2).astype(np.float32)  # many ties
    table = pa.table({"sample_id": [f"id{i}" for i in range(n)], "clip_score": scores})
    stage = FilterClipScore(fraction=0.3)
    keys = np.concatenate([descending_digits(scores), id_digits(table.column("sample_id").to_pylist())], axis=1)
    order = sorted(range(n), key=lambda i: tuple(keys[i]))
    expected = {f"id{i}" for i in order[:300]}
    for layout in ([n], [7] * 142 + [6], [250] * 4, [1] * 20 + [980]):
        offsets = np.cumsum([0, *layout])
        parts = [ray_session.put(table.slice(a, b - a)) for a, b in zip(offsets[:-1], offsets[1:])]
        cutoff = stage.cutoff(parts, n)
        kept = {sid for sid, inside in zip(table.column("sample_id").to_pylist(), at_most(keys, cutoff)) if inside}
        assert kept == expected, layout
    assert min(scores[order[:300]]) >= max(scores[order[300:]])  # the kept are the best scores


def test_clip_score_filter_modes_through_the_cli(ray_session, tmp_path):
    rows = [{"k": i, "clip_score": s} for i, s in enumerate([0.28, 0.2799, 0.31, None, 0.1, 0.5, 0.3, 0.29, 0.2, 0.27])]
    src = _write(tmp_path, "scores", rows)
    out = str(tmp_path / "thr")
    assert cli.main(["stage", "filter_clip_score", "--input", src, "--output", out, "--set", "threshold=0.28"]) == 0
    kept, rejects = _outcome(out, "01-filter_clip_score")
    assert sorted(kept.column("k").to_pylist()) == [0, 2, 5, 6, 7]
    why = dict(zip(rejects.column("k").to_pylist(), rejects.column("reject_reason").to_pylist()))
    assert why[1] == "low_clip_score" and why[3] == "no_clip_score"
    out = str(tmp_path / "frac")
    assert cli.main(["stage", "filter_clip_score", "--input", src, "--output", out, "--set", "fraction=0.3"]) == 0
    kept, _ = _outcome(out, "01-filter_clip_score")
    assert sorted(kept.column("k").to_pylist()) == [2, 5, 6]  # ceil(0.3 x 9 scored) = 3 best
    assert ledger.audit(out)["ok"]
    assert cli.main(["stage", "filter_clip_score", "--input", src, "--output", out]) == 2  # neither mode: clear error


def test_cleanlab_finds_planted_outliers_and_label_flips(ray_session, tmp_path, capsys):
    rng = np.random.default_rng(1)
    n, k, d = 800, 4, 24
    centers = rng.normal(size=(k, d)) * 3
    truth = rng.integers(0, k, n)
    x = centers[truth] + rng.normal(size=(n, d))
    outliers = rng.choice(n, 16, replace=False)
    x[outliers] = rng.normal(size=(16, d)) * 10
    rest = np.setdiff1d(np.arange(n), outliers)
    flips = rng.choice(rest, 40, replace=False)
    label = truth.copy()
    label[flips] = (truth[flips] + rng.integers(1, k, 40)) % k
    rows = [{"k": int(i), "label": f"class{label[i]}", "emb": x[i].astype(np.float32).tolist()} for i in range(n)]
    out = str(tmp_path / "cl")
    assert cli.main(["stage", "cleanlab_issues", "--input", _write(tmp_path, "cl", rows), "--output", out,
                     "--set", "features=emb", "--set", "label_column=label", "--set", "outlier=drop",
                     "--set", "label=drop"]) == 0
    kept, rejects = _outcome(out, "01-cleanlab_issues")
    rows = pa.concat_tables([kept.select(["k", "cl_is_outlier", "cl_is_label"]),
                             rejects.select(["k", "cl_is_outlier", "cl_is_label"])]).to_pylist()
    flagged_outliers = {r["k"] for r in rows if r["cl_is_outlier"]}
    flagged_labels = {r["k"] for r in rows if r["cl_is_label"]}
    dropped = set(rejects.column("k").to_pylist())
    assert dropped == flagged_outliers | flagged_labels  # drop means every flagged row is rejected
    recall_o = len(flagged_outliers & set(outliers.tolist())) / len(outliers)
    recall_l = len(flagged_labels & set(flips.tolist())) / len(flips)
    precision_o = len(flagged_outliers & set(outliers.tolist())) / max(1, len(flagged_outliers))
    precision_l = len(flagged_labels & set(flips.tolist())) / max(1, len(flagged_labels))
    with capsys.disabled():
        print(f"\ncleanlab on 800 rows: outliers recall {recall_o:.2f} precision {precision_o:.2f}; "
              f"label flips recall {recall_l:.2f} precision {precision_l:.2f}")
    assert recall_o >= 0.8 and recall_l >= 0.8
    assert {"cl_outlier_score", "cl_label_score", "cl_near_duplicate_score"} <= set(kept.column_names)
    assert ledger.audit(out)["ok"]


def test_cleanlab_partitions_depend_on_sample_ids_only(ray_session, tmp_path):
    """max_rows splits the data by a hash of sample_id: the same rows in another order
    (other parts, other blocks) get the very same flags and scores."""
    from pipeline.job import parse_job
    from pipeline.runner import Runner

    rng = np.random.default_rng(2)
    rows = [{"sample_id": f"r{i}", "key": f"r{i}", "emb": rng.normal(size=8).astype(np.float32).tolist()}
            for i in range(300)]  # the input brings its own sample ids
    rows[0]["emb"] = (np.ones(8) * 40).tolist()  # an outlier
    results = []
    for order in (list(range(300)), list(rng.permutation(300))):
        src = _write(tmp_path, f"rows{len(results)}", [rows[i] for i in order])
        job = parse_job({"name": "cl", "stages": [{"ingest_table": {"source": src}},
                                                  {"cleanlab_issues": {"features": "emb", "max_rows": 100}}]})
        out = str(tmp_path / f"run{len(results)}")
        Runner(job, out, log=lambda *a: None).run()
        kept, _ = _outcome(out, "01-cleanlab_issues")
        results.append(sorted(zip(kept.column("key").to_pylist(), kept.column("cl_outlier_score").to_pylist(),
                                  kept.column("cl_is_outlier").to_pylist())))
    assert len(results[0]) == 300 and results[0] == results[1]


CAPTIONS = (["a woman reading a book"] * 60 + ["a man riding a bike"] * 20 + ["a man and a woman talking"] * 10
            + ["a red bicycle"] * 10)


def test_audit_representation_counts_and_imbalance(ray_session, tmp_path):
    out = str(tmp_path / "rep")
    src = _write(tmp_path, "caps", [{"caption": c} for c in CAPTIONS + ["an elderly muslim man", "a baby"]])
    assert cli.main(["stage", "audit_representation", "--input", src, "--output", out]) == 0
    rep = json.loads(fs.read_bytes(os.path.join(out, "representation", "01-audit_representation.json")))
    gender = rep["categories"]["gender"]
    assert gender["counts"] == {"female": 70, "male": 31} and gender["imbalance_ratio"] == pytest.approx(70 / 31)
    assert rep["categories"]["age"]["counts"]["elderly"] == 1 and rep["categories"]["age"]["counts"]["child"] == 1
    assert rep["categories"]["religion"]["counts"]["muslim"] == 1
    kept, _ = _outcome(out, "01-audit_representation")
    assert kept.num_rows == len(CAPTIONS) + 2 and kept.column("mentions")[0].as_py() == ["gender:female"]


def test_rebalance_downsample_reaches_its_target(ray_session, tmp_path):
    out = str(tmp_path / "down")
    src = _write(tmp_path, "caps", [{"caption": c, "k": i} for i, c in enumerate(CAPTIONS)])
    assert cli.main(["stage", "rebalance", "--input", src, "--output", out, "--set", "category=gender"]) == 0
    kept, rejects = _outcome(out, "01-rebalance")
    caps = kept.column("caption").to_pylist()
    female, male = caps.count("a woman reading a book"), caps.count("a man riding a bike")
    assert (female, male) == (30, 20) and female / male <= 1.5  # floor(1.5 x 20)
    assert caps.count("a man and a woman talking") == 10 and caps.count("a red bicycle") == 10  # left alone
    assert set(rejects.column("reject_reason").to_pylist()) == {"rebalanced"} and rejects.num_rows == 30
    assert ledger.audit(out)["ok"]


def test_rebalance_weights_average_one(ray_session, tmp_path):
    out = str(tmp_path / "w")
    src = _write(tmp_path, "caps", [{"caption": c} for c in CAPTIONS])
    assert cli.main(["stage", "rebalance", "--input", src, "--output", out, "--set", "mode=weight"]) == 0
    kept, _ = _outcome(out, "01-rebalance")
    weights = {}
    for cap, meta in zip(kept.column("caption").to_pylist(), kept.column("meta").to_pylist()):
        weights.setdefault(cap, set()).add(json.loads(meta)["sample_weight"])
    w_f, = weights["a woman reading a book"]
    w_m, = weights["a man riding a bike"]
    assert w_f == pytest.approx(80 / (2 * 60)) and w_m == pytest.approx(80 / (2 * 20))
    assert (60 * w_f + 20 * w_m) / 80 == pytest.approx(1)  # mean 1 over the rows of a group
    assert weights["a red bicycle"] == {1.0} and kept.num_rows == len(CAPTIONS)
    assert 60 * w_f == pytest.approx(20 * w_m)  # each group weighs the same in total
