"""MinHash signatures: bit-for-bit datasketch equivalence, shingling rules, Jaccard estimates."""
from __future__ import annotations

import numpy as np
import pytest
from datasketch import MinHash

from stages.dedup.minhash import shingle_hash, shingle_hashes, shingles, signatures, tokens

DOCS = [
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "Über die Brücke: Straße, Café und Mädchen — naïve façade, résumé! 東京タワー と 大阪城",
    "short doc",  # fewer than 5 tokens: one shingle of all of them
    "",
    "def add(a, b):\n    return a + b  # adds\nclass Foo_Bar: pass",
    "word " * 2000,  # a large, repetitive document
]


@pytest.mark.parametrize("tokenizer,ngram,bits", [
    ("word", 5, 32), ("code", 5, 32), ("char", 5, 32), ("word", 1, 32), ("word", 5, 64)])
def test_bit_for_bit_equal_to_datasketch(tokenizer, ngram, bits):
    ours = signatures(DOCS, num_perm=128, seed=7, tokenizer=tokenizer, ngram=ngram, bits=bits)
    for doc, sig in zip(DOCS, ours):
        m = MinHash(num_perm=128, seed=7, scheme=f"affine{bits}", hashfunc=lambda b: shingle_hash(b, bits))
        for sh in shingles(doc, tokenizer, ngram):
            m.update(sh)
        np.testing.assert_array_equal(sig, m.hashvalues)


@pytest.mark.parametrize("tokenizer,ngram", [("word", 5), ("code", 5), ("word", 1), ("code", 3)])
def test_the_signature_pass_gives_the_same_shingle_sets(tokenizer, ngram):
    """signature_rows takes each document's shingle hashes from the signatures' own pass:
    they must be shingle_hashes' exactly (the index keeps them; a refresh compares with them)."""
    from stages.dedup.minhash import _signatures_fused

    sigs, (values, counts) = _signatures_fused(DOCS, 128, 7, tokenizer, ngram, with_shingles=True)
    np.testing.assert_array_equal(sigs, signatures(DOCS, num_perm=128, seed=7, tokenizer=tokenizer, ngram=ngram))
    ends = np.cumsum(counts)
    for doc, end, count in zip(DOCS, ends, counts):
        np.testing.assert_array_equal(values[end - count:end], shingle_hashes(doc, tokenizer, ngram))


def test_jaccard_of_many_pairs_at_once_equals_jaccard_of_each():
    """verify_pairs' compiled Jaccard gives what `jaccard` gives, pair by pair, including
    empty sets, equal sets, and the rare repeated 32-bit value."""
    import pyarrow as pa

    from stages.dedup.minhash import jaccard, jaccard_at_least

    rng = np.random.default_rng(3)
    sets = [np.array([], np.uint32), np.array([5, 5], np.uint32), np.array([5], np.uint32)]
    sets += [np.unique(rng.integers(0, 60, rng.integers(1, 40))).astype(np.uint32) for _ in range(60)]
    pairs = [(i, j) for i in range(len(sets)) for j in range(len(sets))]
    a = pa.array([sets[i] for i, _ in pairs], pa.list_(pa.uint32()))
    b = pa.array([sets[j] for _, j in pairs], pa.list_(pa.uint32()))
    for threshold in (0.3, 0.5, 0.8):
        expected = [jaccard(sets[i], sets[j]) >= threshold for i, j in pairs]
        assert jaccard_at_least(threshold)(a, b).tolist() == expected
    wide = pa.array([s.astype(np.uint64) << np.uint64(32) for s in sets[3:6]], pa.list_(pa.uint64()))
    assert jaccard_at_least(0.5)(wide, wide).tolist() == [True, True, True]


def test_shingling_rules():
    assert tokens("Hello, World! it's 2026") == ["hello", "world", "it", "s", "2026"]
    assert tokens("foo.bar(baz_1) + Qux", "code") == ["foo", "bar", "baz_1", "Qux"]
    assert len(shingles("one two three")) == 1  # shorter than 5 tokens: one shingle of all
    assert len(shingles("a b c d e f g")) == 3
    assert shingle_hashes("").size == 0 and shingles("") == []
    # case and punctuation do not change word shingles
    np.testing.assert_array_equal(shingle_hashes("A cat, a HAT!"), shingle_hashes("a cat a hat"))


def test_estimates_follow_true_jaccard():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(3000)]
    base = list(rng.choice(words, 400))
    near = base[:]  # edit ~5% of positions
    for i in rng.choice(len(near), 20, replace=False):
        near[i] = "edited"
    other = list(rng.choice(words, 400))
    texts = [" ".join(base), " ".join(near), " ".join(other)]
    sets = [set(shingles(t)) for t in texts]
    sig = signatures(texts, num_perm=256)

    def est(i, j):
        return float(np.mean(sig[i] == sig[j]))

    def true(i, j):
        return len(sets[i] & sets[j]) / len(sets[i] | sets[j])

    assert abs(est(0, 1) - true(0, 1)) < 0.1
    assert est(0, 2) < 0.05 and true(0, 2) < 0.05


def test_bands_are_chosen_for_recall():
    from stages.dedup.minhash import candidate_probability, choose_bands

    bands, rows = choose_bands(0.8, 128)
    assert bands * rows <= 128
    assert candidate_probability(0.8, bands, rows) >= 0.95
    # one more row per band would lose the recall goal
    assert candidate_probability(0.8, 128 // (rows + 1), rows + 1) < 0.95
    # datatrove's 9x13 at 0.8 finds a pair only 40% of the time (ANCHORS.md)
    assert abs(candidate_probability(0.8, 9, 13) - 0.40) < 0.01
    with pytest.raises(ValueError):
        choose_bands(0.1, 4, 0.999999)


def test_near_duplicates_share_a_band_and_verify():
    from stages.dedup.minhash import band_hashes, choose_bands, jaccard

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(5000)]
    base = list(rng.choice(words, 300))
    near = base[:]
    near[150] = "edited"  # one edit: Jaccard about 0.94
    texts = [" ".join(base), " ".join(near), " ".join(rng.choice(words, 300))]
    bands, rows = choose_bands(0.8, 128)
    bh = band_hashes(signatures(texts), bands, rows)
    assert (bh[0] == bh[1]).any() and not (bh[0] == bh[2]).any()
    assert bh.shape == (3, bands) and len(set(bh[0])) == bands  # the band index is mixed in
    sets = [shingle_hashes(t) for t in texts]
    assert jaccard(sets[0], sets[1]) > 0.9 and jaccard(sets[0], sets[2]) < 0.05
    assert jaccard(sets[0], sets[0]) == 1.0


def _edit(words, positions, tag):
    out = list(words)
    for p in positions:
        out[p] = f"{tag}{p}"
    return out


@pytest.mark.parametrize("others,rows_per_partition,limit", [(20, 200_000, 20_000), (300, 500, 20_000), (300, 500, 2)],
                         ids=["one-partition", "many-parts-and-partitions", "components-verified-pair-by-pair"])
def test_dedup_minhash_on_ray(ray_session, tmp_path, monkeypatch, others, rows_per_partition, limit):
    """Exact, near (J~0.9) and non (J~0.5) duplicates, a chain that forms one cluster,
    an empty and a one-word document, through `mmcurate stage dedup_minhash`; the same when
    every set of samples sharing buckets is too large to be verified whole (max_component_size)."""
    import json
    import os

    import stages.dedup.near

    monkeypatch.setattr(stages.dedup.near, "ROWS_PER_PARTITION", rows_per_partition)

    from pipeline import cli, fs, ledger
    from stages.dedup.minhash import DedupMinhash, jaccard

    rng = np.random.default_rng(3)
    vocab = [f"v{i}" for i in range(20000)]
    base = list(rng.choice(vocab, 200))
    chain_a = list(rng.choice(vocab, 200))
    chain_b = _edit(chain_a, [20, 60, 100], "b")
    chain_c = _edit(chain_b, [140, 170, 190], "c")
    docs = {
        "base": base, "exact": base, "near": _edit(base, [50, 150], "n"),
        "half": base[:100] + list(rng.choice(vocab, 100)),
        "chain_a": chain_a, "chain_b": chain_b, "chain_c": chain_c, "empty": [], "one": ["lonely"],
        **{f"other{i}": list(rng.choice(vocab, 200)) for i in range(others)},
    }
    j = lambda a, b: jaccard(shingle_hashes(" ".join(docs[a])), shingle_hashes(" ".join(docs[b])))  # noqa: E731
    assert j("base", "near") > 0.85 and j("base", "half") < 0.6
    assert j("chain_a", "chain_b") >= 0.8 and j("chain_b", "chain_c") >= 0.8 and j("chain_a", "chain_c") < 0.8
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for name, words in docs.items():
            f.write(json.dumps({"name": name, "text": " ".join(words)}) + "\n")
    out = str(tmp_path / "out")
    assert cli.main(["stage", "dedup_minhash", "--input", str(path), "--output", out,
                     "--set", "text_column=text", "--set", "threshold=0.8",
                     "--set", f"max_component_size={limit}"]) == 0
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-dedup_minhash"))
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", "01-dedup_minhash"))
    removed = dict(zip(rejects.column("name").to_pylist(), rejects.column("duplicate_of").to_pylist()))
    ids = dict(zip(kept.column("name").to_pylist(), kept.column("sample_id").to_pylist()))
    assert removed == {"exact": ids["base"], "near": ids["base"], "chain_b": ids["chain_a"], "chain_c": ids["chain_a"]}
    clusters = dict(zip(kept.column("name").to_pylist(), kept.column("cluster_id").to_pylist()))
    assert clusters["base"] and clusters["chain_a"] and clusters["half"] is None and clusters["empty"] is None
    assert set(rejects.column("cluster_id").to_pylist()) == {clusters["base"], clusters["chain_a"]}
    assert ledger.audit(out)["ok"]
    assert DedupMinhash(threshold=0.8).banding() == (18, 7)


@pytest.mark.parametrize("reason", ["duplicate", "contaminated"])
def test_index_round_trip_and_decontamination(ray_session, tmp_path, reason):
    """Run 1 writes its index; run 2 (pointed at it) removes exactly its overlap with run 1:
    exact copies and edited near-copies. With against_reason=contaminated this is
    decontamination against an evaluation set."""
    import json
    import os

    from pipeline import cli, fs, ledger

    rng = np.random.default_rng(5)
    vocab = [f"v{i}" for i in range(20000)]
    first = {f"a{i}": list(rng.choice(vocab, 150)) for i in range(30)}
    second = {f"b{i}": list(rng.choice(vocab, 150)) for i in range(30)}  # new
    second |= {"copy_a3": first["a3"], "copy_a7": first["a7"],  # exact copies
               "near_a11": _edit(first["a11"], [40], "x"), "near_a20": _edit(first["a20"], [75, 120], "y")}

    def write(name, docs):
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            for key, words in docs.items():
                f.write(json.dumps({"key": key, "text": " ".join(words)}) + "\n")
        return str(path)

    run1, run2 = str(tmp_path / "run1"), str(tmp_path / "run2")
    assert cli.main(["stage", "dedup_minhash", "--input", write("first", first), "--output", run1,
                     "--set", "text_column=text"]) == 0
    index = os.path.join(run1, "index", "dedup_minhash")
    assert json.loads(fs.read_bytes(os.path.join(index, "index.json")))["bands"] == 18
    assert cli.main(["stage", "dedup_minhash", "--input", write("second", second), "--output", run2,
                     "--set", "text_column=text", "--set", f"against_reason={reason}", "--against", index]) == 0
    rejects = fs.read_parquet_dir(os.path.join(run2, "rejects", "01-dedup_minhash"))
    removed = dict(zip(rejects.column("key").to_pylist(), rejects.column("reject_reason").to_pylist()))
    assert removed == {k: reason for k in ("copy_a3", "copy_a7", "near_a11", "near_a20")}
    run1_ids = dict(zip(*(fs.read_parquet_dir(os.path.join(run1, "stages", "01-dedup_minhash")).column(c).to_pylist()
                          for c in ("key", "sample_id"))))
    dup_of = dict(zip(rejects.column("key").to_pylist(), rejects.column("duplicate_of").to_pylist()))
    assert dup_of["copy_a3"] == run1_ids["a3"] and dup_of["near_a20"] == run1_ids["a20"]
    assert ledger.audit(run2)["ok"]
    # run 2's own index holds only its survivors: the 30 new documents
    assert fs.read_parquet_dir(os.path.join(run2, "index", "dedup_minhash")).num_rows == 30


def test_only_index_rows_that_can_meet_a_new_row_enter_the_shuffle(ray_session):
    """near.meeting: an index's bucket rows pass only where a new row has the bucket, its
    signature rows only where a candidate pair names them; nothing new, nothing passes."""
    import pyarrow as pa
    import ray

    from stages.dedup.near import meeting

    def buckets(*values):
        return pa.array(list(values), pa.uint64())

    new = [ray.put(pa.table({"bucket": buckets(1, 2, 2)})), ray.put(pa.table({"bucket": buckets()}))]
    old = [ray.put(pa.table({"bucket": buckets(2, 3, 1, 4), "label": ["a", "b", "c", "d"]})),
           ray.put(pa.table({"bucket": buckets(5), "label": ["e"]}))]
    passed = [ray.get(r) for r in meeting(new, ["bucket"], old, "bucket")]
    assert passed[0].column("label").to_pylist() == ["a", "c"] and passed[1].num_rows == 0
    assert meeting(new, ["bucket"], [], "bucket") == []
    nothing_new = meeting([ray.put(pa.table({"bucket": buckets()}))], ["bucket"], old, "bucket")
    assert [ray.get(r).num_rows for r in nothing_new] == [0, 0]
    pairs = [ray.put(pa.table({"_a": ["x"], "_b": ["!|y"]})), ray.put(pa.table({"_a": ["!|w"], "_b": ["v"]}))]
    sigs = [ray.put(pa.table({"_sig": ["!|y", "!|z", "!|w"]}))]
    assert ray.get(meeting(pairs, ["_a", "_b"], sigs, "_sig")[0]).column("_sig").to_pylist() == ["!|y", "!|w"]


def test_no_pair_is_made_among_an_index_own_samples():
    """An index was deduplicated when it was written: its samples meet new ones only."""
    import pyarrow as pa

    from stages.dedup.audio import _pairs
    from stages.dedup.minhash import _candidates
    from stages.dedup.phash import _match

    rows = pa.table({"bucket": pa.array([7, 7, 7, 7], pa.uint64()), "label": ["!|a", "!|b", "0|c", "0|d"]})
    expected = [("!|a", "0|c"), ("!|a", "0|d"), ("!|b", "0|c"), ("!|b", "0|d"), ("0|c", "0|d")]
    assert sorted(zip(*_candidates(0, rows).to_pydict().values())) == expected
    assert sorted(zip(*_pairs(rows, 10).to_pydict().values())) == expected
    probes = pa.table({"bucket": pa.array([7] * 8, pa.uint64()), "label": ["!|a", "!|b", "0|c", "0|d"] * 2,
                       "hash": pa.array([1] * 8, pa.uint64()), "query": [True] * 4 + [False] * 4})
    assert sorted(zip(*_match(probes, 8).to_pydict().values())) == expected


def test_an_index_made_differently_is_refused(ray_session, tmp_path):
    import json
    import os

    from pipeline import cli

    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document number {i} with some words in it"}) + "\n"
                            for i in range(5)))
    assert cli.main(["stage", "dedup_minhash", "--input", str(docs), "--output", str(tmp_path / "r1"),
                     "--set", "text_column=text"]) == 0
    index = os.path.join(str(tmp_path / "r1"), "index", "dedup_minhash")
    assert cli.main(["stage", "dedup_minhash", "--input", str(docs), "--output", str(tmp_path / "r2"),
                     "--set", "text_column=text", "--set", "num_perm=64", "--against", index]) == 2
