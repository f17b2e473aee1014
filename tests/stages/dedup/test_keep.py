"""The keep rule as a label: larger values first, None last, ties by ordinal; and
max:<column> in dedup_minhash end to end."""
from __future__ import annotations

import json
import os

import pyarrow as pa

from stages.dedup.minhash import DedupMinhash
from stages.dedup.keep import descending as _descending


def test_descending_orders_numbers_and_puts_none_last():
    values = [3.5, -2, 0, None, 1e300, -1e-300, 7, float("nan")]
    order = sorted(range(len(values)), key=lambda i: _descending(values[i]))
    assert [values[i] for i in order[:6]] == [1e300, 7, 3.5, 0, -1e-300, -2]
    assert {str(values[i]) for i in order[6:]} == {"None", "nan"}


def test_labels_follow_the_keep_rule():
    table = pa.table({"sample_id": ["a", "b", "c"], "ordinal": [0, 1, 2], "text": ["x", "xxx", "xx"],
                      "score": [0.5, None, 0.9]})
    first = DedupMinhash({"text_column": "text"}).labels_of(table)
    largest = DedupMinhash({"text_column": "text", "keep": "largest"}).labels_of(table)
    best = DedupMinhash({"text_column": "text", "keep": "max:score"}).labels_of(table)
    assert min(first).endswith("|a") and min(largest).endswith("|b") and min(best).endswith("|c")
    assert max(best).endswith("|b")  # None ranks last


def test_minhash_keep_max_column(ray_session, tmp_path):
    from pipeline import cli, fs

    text = " ".join(f"word{i}" for i in range(60))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": text, "score": s, "n": i}) + "\n"
                            for i, s in enumerate([0.2, 0.9, None, 0.5])))
    out = str(tmp_path / "out")
    assert cli.main(["stage", "dedup_minhash", "--input", str(docs), "--output", out, "--set", "text_column=text",
                     "--set", "keep=max:score"]) == 0
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-dedup_minhash"))
    assert kept.column("n").to_pylist() == [1]
