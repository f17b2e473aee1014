"""Feature extraction: tiny-random CLIP and the real MiniLM, as plain classes and as
actor pools on Ray, through shards and back."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs.demo_data import PHOTOS, photos
from pipeline import fs, ledger
from stages.features.clip import ClipEncoder, EmbedClip, clip_pixels
from stages.features.models import ModelError, load_clip, save_tiny_clip
from stages.features.text import EmbedText, TextEncoder
from tests.conftest import ROOT
from tests.shards import check_shards



def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pairs() -> pa.Table:
    arrays = photos()
    names = list(PHOTOS)[:8]
    return pa.table({"sample_id": [f"s{i}" for i in range(len(names))], "ordinal": list(range(len(names))),
                     "image": pa.array([_jpeg(arrays[n]) for n in names], pa.large_binary()),
                     "caption": [PHOTOS[n] for n in names], "meta": [None] * len(names)})


def test_tiny_random_is_deterministic_and_unit_norm(pairs):
    a, b = EmbedClip(), EmbedClip()
    a.ensure_setup()
    b.ensure_setup()
    out_a, out_b = a.process(pairs), b.process(pairs)
    for col in ("clip_image_emb", "clip_text_emb"):
        x = np.stack(out_a.column(col).to_numpy(zero_copy_only=False))
        assert x.dtype == np.float16 and x.shape == (pairs.num_rows, 32)
        np.testing.assert_array_equal(x, np.stack(out_b.column(col).to_numpy(zero_copy_only=False)))
        np.testing.assert_allclose(np.linalg.norm(x.astype(np.float32), axis=1), 1, atol=2e-3)
    img = np.stack(out_a.column("clip_image_emb").to_numpy(zero_copy_only=False)).astype(np.float32)
    txt = np.stack(out_a.column("clip_text_emb").to_numpy(zero_copy_only=False)).astype(np.float32)
    np.testing.assert_allclose(out_a.column("clip_score").to_numpy(), np.sum(img * txt, axis=1), atol=1e-5)
    assert len(set(map(tuple, img.tolist()))) == pairs.num_rows  # different images, different features
    meta = json.loads(out_a.column("meta")[0].as_py())["features"]
    assert meta["clip_image_emb"] == {"model": "tiny-random", "sha256": a.encoder.loaded.sha256,
                                      "random_weights": True}
    assert len(meta["clip_image_emb"]["sha256"]) == 64 and "__tmp_clip_pixels" not in out_a.column_names


def test_saved_tiny_model_loads_back_with_the_same_features(tmp_path, pairs):
    path = save_tiny_clip(str(tmp_path / "tiny-clip"))
    in_process, from_disk = ClipEncoder("tiny-random"), ClipEncoder(path)
    assert from_disk.loaded.random_weights is False  # a directory is taken as it is: the user names it
    pixels = np.stack([clip_pixels(b, 32) for b in pairs.column("image").to_pylist()])
    np.testing.assert_array_equal(in_process.encode_images(pixels), from_disk.encode_images(pixels))
    texts = pairs.column("caption").to_pylist()
    np.testing.assert_array_equal(from_disk.encode_texts(texts), ClipEncoder(path).encode_texts(texts))
    assert load_clip(path).sha256 == load_clip(path).sha256


@pytest.mark.parametrize("make,message", [
    (lambda d: None, "does not exist"),
    (lambda d: os.makedirs(d), "no config.json"),
    (lambda d: (os.makedirs(d), open(os.path.join(d, "config.json"), "w").write("{not json")), "not valid JSON"),
    (lambda d: (os.makedirs(d), open(os.path.join(d, "config.json"), "w").write('{"model_type": "clip"}')),
     "no weight files"),
])
def test_a_bad_model_directory_is_a_clear_error_before_any_data(tmp_path, make, message):
    from pipeline.job import JobError, parse_job

    bad = str(tmp_path / "model")
    make(bad)
    with pytest.raises(JobError) as e:
        parse_job({"name": "x", "stages": [{"ingest_table": {"source": "x.jsonl"}}, {"embed_clip": {"model": bad}}]},
                  "job.yaml")
    assert message in str(e.value) and "embed_clip" in str(e.value) and bad in str(e.value)
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "stage", "embed_clip", "--input", "x.jsonl",
                          "--output", str(tmp_path / "o"), "--set", f"model={bad}"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(ModelError):
        load_clip(bad)


def test_minilm_ranks_paraphrases_above_unrelated_text():
    enc = TextEncoder("minilm", device="cpu")
    pairs = [("A cat is sleeping on the sofa.", "A kitten naps on the couch."),
             ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
             ("How do I bake bread at home?", "What is a recipe for homemade bread?")]
    left = enc.encode([a for a, _ in pairs]).astype(np.float32)
    right = enc.encode([b for _, b in pairs]).astype(np.float32)
    sim = left @ right.T
    assert left.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(left, axis=1), 1, atol=2e-3)
    for i in range(3):
        assert sim[i, i] > 0.5 and sim[i, i] > max(np.delete(sim[i], i)) + 0.3, sim


def test_embed_text_records_the_model(pairs):
    stage = EmbedText(text_column="caption")
    stage.ensure_setup()
    out = stage.process(pairs)
    assert out.column("st_caption_emb").type == pa.list_(pa.float16())
    meta = json.loads(out.column("meta")[0].as_py())["features"]["st_caption_emb"]
    assert meta["model"].startswith("all-MiniLM-L6-v2") and meta["random_weights"] is False


def test_embed_text_can_leave_missing_text_without_an_embedding():
    rows = pa.table({"docstring": ["Add two numbers.", None, "Return the sum."]})
    out = EmbedText(text_column="docstring", skip_missing=True)
    out.ensure_setup()
    vectors = out.process(rows).column("st_docstring_emb").to_pylist()
    assert vectors[1] is None and len(vectors[0]) == len(vectors[2]) == 384
    a, c = np.array(vectors[0], np.float32), np.array(vectors[2], np.float32)
    assert float(a @ c) > 0.3  # two docstrings about sums, embedded for real
    dense = EmbedText(text_column="docstring")
    dense.ensure_setup()
    assert dense.process(rows).column("st_docstring_emb").to_pylist()[1] is not None  # the empty string's


def test_an_undecodable_image_is_rejected_alone(pairs):
    stage = EmbedClip()
    stage.ensure_setup()
    broken = pairs.slice(0, 3).set_column(2, "image", pa.array([b"not an image", pairs["image"][1].as_py(),
                                                                pairs["image"][2].as_py()], pa.large_binary()))
    out = stage.process(broken)
    live, dead = ledger.split_live(out)
    assert live.num_rows == 2 and dead.column("reject")[0].as_py()["reason"] == "undecodable_image"


def test_actor_pool_of_two_then_shards_carry_the_features(ray_session, demo_data, tmp_path):
    """ingest -> embed_clip (2 actors on half a CPU each, CPU tasks preparing pixels)
    -> embed_text -> shards; read back by webdataset and the checker."""
    import webdataset as wds

    from pipeline.job import parse_job
    from pipeline.runner import Runner

    job = parse_job({"name": "features", "stages": [
        {"ingest_image_text": {"source": demo_data["manifest"], "image_size": 96}},
        {"embed_clip": {"concurrency": 2, "num_cpus": 0.5, "batch_size": 8}},
        {"embed_text": {"num_cpus": 0.5, "batch_size": 16}},
        {"shard_webdataset": {"name": "f", "samples_per_shard": 20}}]})
    out = str(tmp_path / "run")
    summary = Runner(job, out, log=lambda *a: None).run()
    assert ledger.audit(out)["ok"]
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-ingest_image_text+embed_clip+embed_text"))
    assert {"clip_image_emb", "clip_text_emb", "clip_score", "st_caption_emb"} <= set(kept.column_names)
    assert not [c for c in kept.column_names if c.startswith("__tmp_")]
    by_id = {r["sample_id"]: r for r in kept.select(["sample_id", "clip_image_emb", "clip_score"]).to_pylist()}
    manifest = json.load(open(os.path.join(out, "shards", "manifest.json")))
    url = os.path.join(out, "shards", f"f-{{000000..{len(manifest['shards']) - 1:06d}}}.tar")
    n = 0
    for s in wds.WebDataset(url, shardshuffle=False, empty_check=False).decode():
        emb = s["clip_image_emb.npy"]
        assert emb.dtype == np.float16 and s["st_caption_emb.npy"].shape == (384,)
        np.testing.assert_array_equal(emb, np.array(by_id[s["__key__"]]["clip_image_emb"], np.float16))
        assert s["json"]["clip_score"] == pytest.approx(by_id[s["__key__"]]["clip_score"])
        assert s["json"]["meta"]["features"]["clip_image_emb"]["random_weights"] is True
        n += 1
    assert n == summary["kept"]
    index = fs.read_parquet_dir(os.path.join(out, "shards"))
    assert {"clip_image_emb", "clip_score", "st_caption_emb"} <= set(index.column_names)
    check_shards(os.path.join(out, "shards"))


def test_a_sentence_transformers_directory_loads(tmp_path):
    """MiniLM saved as a sentence-transformers directory and loaded by path: same embeddings."""
    packaged = TextEncoder("minilm", device="cpu")
    packaged.loaded.model.save(str(tmp_path / "minilm"))
    texts = ["a cat on a sofa", "stock prices fell"]
    from_dir = TextEncoder(str(tmp_path / "minilm"), device="cpu")
    np.testing.assert_allclose(from_dir.encode(texts).astype(np.float32), packaged.encode(texts).astype(np.float32),
                               atol=2e-3)
    assert from_dir.loaded.name == "minilm" and len(from_dir.loaded.sha256) == 64


@pytest.mark.gpu
def test_gpu_half_precision_matches_cpu(pairs):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (CI has none; run with -m gpu on a GPU machine)")
    pixels = np.stack([clip_pixels(b, 32) for b in pairs.column("image").to_pylist()])
    cpu, gpu = ClipEncoder("tiny-random", device="cpu"), ClipEncoder("tiny-random", device="cuda")
    assert gpu.dtype in (torch.float16, torch.bfloat16)
    np.testing.assert_allclose(gpu.encode_images(pixels).astype(np.float32),
                               cpu.encode_images(pixels).astype(np.float32), atol=0.05)
