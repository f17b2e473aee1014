"""dedup_exact: keep rules, keys, clusters, and a run through `mmcurate stage` on Ray."""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from pipeline import cli, fs, ledger
from stages.dedup.exact import DedupExact, text_key


def _table(texts, sha=None, sizes=None):
    n = len(texts)
    cols = {"sample_id": [f"s{i}" for i in range(n)], "ordinal": list(range(n)), "caption": texts,
            "content_sha256": sha or [f"h{i}" for i in range(n)]}
    if sizes:
        cols["original_bytes"] = sizes
    return pa.table(cols)


def _outcome(table):
    return [(r["reject"]["reason"], r["reject"]["duplicate_of"]) if r["reject"] else ("kept", None)
            for r in table.to_pylist()]


def test_text_key_ignores_case_unicode_form_and_spaces():
    assert text_key("Caf\u00e9  au\tLAIT ") == text_key("cafe\u0301 au lait")
    assert text_key("a cat") != text_key("a dog")


def test_first_largest_and_max_rules():
    t = _table(["x", "X ", "y", "x"], sizes=[10, 30, 5, 20])
    assert _outcome(DedupExact(key="text").mark(t)) == [
        ("kept", None), ("duplicate", "s0"), ("kept", None), ("duplicate", "s0")]
    assert _outcome(DedupExact(key="text", keep="largest").mark(t)) == [
        ("duplicate", "s1"), ("kept", None), ("kept", None), ("duplicate", "s1")]
    t = t.append_column("score", pa.array([0.1, None, 0.0, 0.9]))
    assert _outcome(DedupExact(key="text", keep="max:score").mark(t)) == [
        ("duplicate", "s3"), ("duplicate", "s3"), ("kept", None), ("kept", None)]
    with pytest.raises(ValueError):
        DedupExact(keep="smallest")


def test_keys_content_text_and_both_and_clusters():
    t = _table(["a", "a", "b", "a"], sha=["h1", "h1", "h1", "h2"])
    assert [o[0] for o in _outcome(DedupExact(key="content").mark(t))] == ["kept", "duplicate", "duplicate", "kept"]
    assert [o[0] for o in _outcome(DedupExact(key="text").mark(t))] == ["kept", "duplicate", "kept", "duplicate"]
    both = DedupExact(key="both").mark(t)
    assert [o[0] for o in _outcome(both)] == ["kept", "duplicate", "kept", "kept"]
    clusters = both.column("cluster_id").to_pylist()
    assert clusters[0] == clusters[1] is not None and clusters[2] is None and clusters[3] is None
    assert both.column("reject")[1].as_py()["cluster_id"] == clusters[0]


def test_empty_and_one_row_inputs():
    assert DedupExact().mark(_table([])).num_rows == 0
    assert _outcome(DedupExact().mark(_table(["only"]))) == [("kept", None)]


def test_stage_command_on_ray_keeps_input_columns(ray_session, tmp_path, monkeypatch):
    import stages.dedup.exact

    monkeypatch.setattr(stages.dedup.exact, "ROWS_PER_PARTITION", 150)  # several partitions
    docs = tmp_path / "docs.jsonl"
    texts = ["the same text", "The  same text", "another one", "the same TEXT", "unique"]
    with open(docs, "w") as f:
        for i, t in enumerate(texts * 120):  # 600 rows in 3 parts: copies meet across parts
            f.write(json.dumps({"text": f"{t} {i // len(texts)}" if i % 7 else t, "n": i}) + "\n")
    out = str(tmp_path / "out")
    assert cli.main(["stage", "dedup_exact", "--input", str(docs), "--output", out,
                     "--set", "key=text", "--set", "text_column=text"]) == 0
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-dedup_exact"))
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", "01-dedup_exact"))
    keys = [text_key(t) for t in kept.column("text").to_pylist()]
    assert len(keys) == len(set(keys))  # nothing left twice
    all_keys = {text_key(json.loads(line)["text"]) for line in open(docs)}
    assert set(keys) == all_keys  # and every text still once
    assert {"text", "n", "reject_reason", "duplicate_of", "cluster_id"} <= set(rejects.column_names)
    assert set(rejects.column("reject_reason").to_pylist()) == {"duplicate"}
    kept_ids = set(kept.column("sample_id").to_pylist())
    assert set(rejects.column("duplicate_of").to_pylist()) <= kept_ids
    assert ledger.audit(out)["ok"]


def test_an_index_and_against_remove_copies_of_an_earlier_run(ray_session, tmp_path):
    def docs(name, texts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        return str(path)

    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    assert cli.main(["stage", "dedup_exact", "--input", docs("a.jsonl", ["alpha", "beta", "beta"]), "--output", first,
                     "--set", "key=text", "--set", "text_column=text"]) == 0
    index = os.path.join(first, "index", "dedup_exact")
    assert fs.parquet_rows(index) == 2 and json.loads(fs.read_bytes(os.path.join(index, "index.json")))["key"] == "text"
    assert cli.main(["stage", "dedup_exact", "--input", docs("b.jsonl", ["Alpha ", "gamma", "gamma", "delta"]),
                     "--output", second, "--set", "key=text", "--set", "text_column=text",
                     "--set", "against_reason=contaminated", "--against", index]) == 0
    rejects = fs.read_parquet_dir(os.path.join(second, "rejects", "01-dedup_exact")).to_pylist()
    assert sorted((r["text"], r["reject_reason"]) for r in rejects) == [("Alpha ", "contaminated"),
                                                                       ("gamma", "duplicate")]
    earlier = [r for r in rejects if r["reject_reason"] == "contaminated"][0]
    assert "in an earlier index" in earlier["reject_detail"] and earlier["duplicate_of"]
    assert ledger.audit(second)["ok"]
    # an index made with another key is refused
    assert cli.main(["stage", "dedup_exact", "--input", docs("c.jsonl", ["x"]), "--output", str(tmp_path / "c"),
                     "--set", "key=content", "--against", index]) == 2


def test_key_pcm_finds_a_remuxed_recording_that_content_misses(tmp_path):
    import numpy as np
    import soundfile as sf

    from stages.ingest.audio_text import IngestAudio

    t = np.arange(3 * 16_000) / 16_000
    x = (9000 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t)).astype(np.int16)
    sf.write(tmp_path / "a.wav", x, 16_000, subtype="PCM_16")
    sf.write(tmp_path / "a_copy.flac", x, 16_000, subtype="PCM_16")  # the same samples, another container
    sf.write(tmp_path / "b.wav", x[::-1].copy(), 16_000, subtype="PCM_16")
    stage = IngestAudio(source=str(tmp_path))
    (listed,) = list(stage.list_inputs())
    rows = stage.process(ledger.ensure_reject_column(listed).drop_columns(["reject"])).drop_columns(["reject"])
    names = [u.rsplit("/", 1)[1] for u in rows.column("source_uri").to_pylist()]
    assert [o[0] for o in _outcome(DedupExact(key="content").mark(rows))] == ["kept"] * 3
    by_pcm = dict(zip(names, _outcome(DedupExact(key="pcm").mark(rows))))
    assert by_pcm == {"a.wav": ("kept", None), "a_copy.flac": ("duplicate", rows.column("sample_id")[0].as_py()),
                      "b.wav": ("kept", None)}
    assert DedupExact(key="pcm").reads() == ["pcm_sha256"]
