"""The reference fusion trainer on synthetic shards written by mmcurate itself."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.train import TrainConfig, train
from tests.conftest import ROOT

N, D = 800, 32


def _make_shards(root, missing_text: float = 0.0, seed: int = 0, labels: bool = False,
                 names: tuple[str, ...] = ("clip_image_emb", "clip_text_emb"), prefix: str = "s") -> str:
    """Paired features: text = a noisy linear map of the image (or recording; with three
    names, of the first two together). Clusters of 2 share a cluster_id."""
    from pipeline.job import parse_job
    from pipeline.runner import Runner

    rng = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)  # noqa: E731
    sources = [rng.normal(size=(N, D)) for _ in names[:-1]]  # with three names, the text follows both others
    text = sum(x @ rng.normal(size=(D, D)) for x in sources) + 0.3 * len(sources) * rng.normal(size=(N, D))
    sources, text = [unit(x) for x in sources], unit(text)
    image = sources[0]
    drop = rng.random(N) < missing_text
    rows = {"sample_id": [f"{prefix}{i:04d}" for i in range(N)], "cluster_id": [f"{prefix}c{i // 2}" for i in range(N)],
            **{name: pa.array(list(x), pa.list_(pa.float16())) for name, x in zip(names, sources)},
            names[-1]: pa.array([None if d else t for d, t in zip(drop, text)], pa.list_(pa.float16()))}
    if labels:  # a class from the sign of the first image feature; the positives weigh double
        rows["meta"] = [json.dumps({"label": "pos" if v[0] > 0 else "neg", "sample_weight": 2.0 if v[0] > 0 else 1.0})
                        for v in image]
    os.makedirs(root, exist_ok=True)
    src = os.path.join(root, "features.parquet")
    pq.write_table(pa.table(rows), src)
    job = parse_job({"name": "synthetic", "stages": [{"ingest_table": {"source": src}},
                                                     {"shard_webdataset": {"name": "syn", "samples_per_shard": 200}}]})
    Runner(job, os.path.join(root, "run"), log=lambda *a: None).run()
    return os.path.join(root, "run", "shards", "syn-{000000..000003}.tar")


@pytest.fixture(scope="module")
def shards(ray_session, tmp_path_factory):
    return _make_shards(str(tmp_path_factory.mktemp("syn")))


def _cfg(shards: str, out, **kw) -> TrainConfig:
    base = dict(shards=shards, output=str(out), modalities=["clip_image_emb", "clip_text_emb"], batch_size=64,
                steps=300, lr=3e-3, warmup=20, checkpoint_every=0, eval_percent=20, dim=32, hidden=128)
    return TrainConfig(**{**base, **kw})


def test_audio_text_retrieval_and_a_run_over_image_and_audio_shards(ray_session, shards, tmp_path, capsys):
    """Audio-text shards (clap_audio_emb and a caption embedding), alone and together with
    image-text shards: one caption tower learns from both."""
    audio = _make_shards(str(tmp_path / "audio"), seed=1, names=("clap_audio_emb", "clap_text_emb"), prefix="a")
    alone = train(_cfg(audio, tmp_path / "alone", modalities=["clap_audio_emb", "clap_text_emb"]))
    assert alone["r@1"] >= 10 * alone["chance_r@1"]
    image = _make_shards(str(tmp_path / "image"), seed=2, names=("clip_image_emb", "st_caption_emb"), prefix="i")
    audio2 = _make_shards(str(tmp_path / "audio2"), seed=3, names=("clap_audio_emb", "st_caption_emb"), prefix="b")
    both = train(_cfg([image, audio2], tmp_path / "both", modalities=["clip_image_emb", "clap_audio_emb",
                                                                       "st_caption_emb"], steps=400))
    pairs = both["retrieval"]
    assert set(pairs) == {"clip_image_emb->st_caption_emb", "clap_audio_emb->st_caption_emb"}
    with capsys.disabled():
        print(f"\naudio-text alone: R@1 {alone['r@1']:.3f} (chance {alone['chance_r@1']:.4f}); together: " + "; ".join(
            f"{k} R@1 {v['r@1']:.3f} (chance {v['chance_r@1']:.4f})" for k, v in pairs.items()))
    for result in pairs.values():
        assert result["eval_samples"] > 100 and result["r@1"] >= 10 * result["chance_r@1"]


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_retrieval_far_above_chance(shards, tmp_path, fusion, capsys):
    result = train(_cfg(shards, tmp_path / fusion, fusion=fusion))
    with capsys.disabled():
        print(f"\n{fusion} fusion, 300 steps: R@1 {result['r@1']:.3f}, R@5 {result['r@5']:.3f}, R@10 "
              f"{result['r@10']:.3f} over {result['eval_samples']} held-out samples (chance R@1 "
              f"{result['chance_r@1']:.4f})")
    assert result["eval_samples"] > 100
    assert result["r@1"] > 20 * result["chance_r@1"] and result["r@10"] > 0.8


def test_video_audio_text_late_early_and_hybrid(ray_session, tmp_path, capsys):
    """Video, audio and text as three modalities, the text following both: every fusion mode
    on the same held-out split; hybrid adds the matching head to the late losses."""
    three = _make_shards(str(tmp_path / "vat"), seed=4, names=("clip_video_emb", "clap_audio_emb", "clip_text_emb"),
                         prefix="v")
    modalities = ["clip_video_emb", "clap_audio_emb", "clip_text_emb"]
    results = {f: train(_cfg(three, tmp_path / f, modalities=modalities, fusion=f, steps=400)) for f in
               ("late", "early", "hybrid")}
    with capsys.disabled():
        for f, r in results.items():
            print(f"\n{f:6s} " + "; ".join(f"{k} R@1 {v['r@1']:.3f}" for k, v in r["retrieval"].items()) +
                  f" (chance {r['chance_r@1']:.4f})")
    for f, r in results.items():
        assert set(r["retrieval"]) == {"clip_video_emb->clap_audio_emb", "clip_video_emb->clip_text_emb",
                                       "clap_audio_emb->clip_text_emb"}, f
        video_text = r["retrieval"]["clip_video_emb->clip_text_emb"]
        assert video_text["eval_samples"] > 100 and video_text["r@1"] >= 10 * video_text["chance_r@1"], f
    assert len({r["eval_samples"] for r in results.values()}) == 1  # the same held-out split
    with pytest.raises(SystemExit, match="late, early or hybrid"):
        train(_cfg(three, tmp_path / "bad", modalities=modalities, fusion="middle"))


def test_held_out_split_keeps_clusters_together(shards):
    from jobs.train import _index_rows, expand, in_eval

    split: dict[str, set] = {}
    for url in expand(shards):
        for sid, cluster in _index_rows(url):
            split.setdefault(cluster, set()).add(in_eval({"cluster_id": cluster}, sid, 20))
    assert all(len(v) == 1 for v in split.values())  # never one copy in train and one in eval
    assert 0.1 < sum(True in v for v in split.values()) / len(split) < 0.3


def test_resume_gives_the_same_loss_curve(shards, tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(shards, straight, steps=40, checkpoint_every=20, shuffle_buffer=300))
    resumed = tmp_path / "resumed"
    train(_cfg(shards, resumed, steps=40, checkpoint_every=20, shuffle_buffer=300, max_steps_this_run=25))
    assert os.path.exists(resumed / "checkpoint-00000020.pt")
    for f in resumed.glob("checkpoint-*25*.pt"):
        f.unlink()
    # the interrupted run got to step 25; its last 5 steps are lost with it, as after a crash
    lines = (resumed / "metrics-rank0.jsonl").read_text().splitlines()[:20]
    (resumed / "metrics-rank0.jsonl").write_text("\n".join(lines) + "\n")
    train(_cfg(shards, resumed, steps=40, checkpoint_every=20, shuffle_buffer=300))

    def curve(path):
        return [json.loads(line)["loss"] for line in (path / "metrics-rank0.jsonl").read_text().splitlines()]

    a, b = curve(straight), curve(resumed)
    assert len(a) == len(b) == 40
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_samples_missing_a_modality_do_not_crash(ray_session, tmp_path):
    shards = _make_shards(str(tmp_path), missing_text=0.3, seed=1)
    result = train(_cfg(shards, tmp_path / "out", steps=60))
    assert result["steps"] == 60 and result["eval_samples"] > 50  # eval uses the samples that have both


def test_two_processes_under_torchrun_read_disjoint_shards(shards, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    out = tmp_path / "ddp"
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "jobs.train",
                          "--set", f"shards={shards}", "--set", f"output={out}", "--set",
                          "modalities=[clip_image_emb, clip_text_emb]", "--set", "steps=20", "--set", "batch_size=32"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.load(open(out / f"rank-{r}.json")) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and all(r["steps"] == 20 for r in ranks)
    assert set(ranks[0]["shards_read"]).isdisjoint(ranks[1]["shards_read"])
    assert len(ranks[0]["shards_read"]) + len(ranks[1]["shards_read"]) == 4
    assert (out / "metrics-rank1.jsonl").exists() and "r@1" in json.load(open(out / "eval.json"))


def test_shards_on_s3_are_read(s3_bucket, shards, tmp_path):
    from jobs.train import expand
    from pipeline import fs

    prefix = f"{s3_bucket}/train-shards"
    for url in expand(shards):
        for ext in (".tar", ".parquet"):
            local = url[: -len(".tar")] + ext
            fs.write_bytes(f"{prefix}/{os.path.basename(local)}", open(local, "rb").read())
    result = train(_cfg(f"{prefix}/syn-{{000000..000003}}.tar", tmp_path / "s3", steps=30))
    assert result["steps"] == 30 and result["eval_samples"] > 100


def test_classification_head_and_sample_weights(ray_session, tmp_path):
    shards = _make_shards(str(tmp_path), seed=2, labels=True)
    train(_cfg(shards, tmp_path / "cls", steps=200, label_field="label"))
    records = [json.loads(x) for x in (tmp_path / "cls" / "metrics-rank0.jsonl").read_text().splitlines()]
    losses = [r["loss_class"] for r in records]
    assert len(losses) == 200 and np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])  # it learns the classes


def test_a_crafted_checkpoint_runs_no_code(shards, tmp_path):
    """A checkpoint is data: one that pickles a command must not run it on resume."""
    import pickle

    out = tmp_path / "out"
    out.mkdir()
    proof = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    import torch

    torch.save({"model": Payload(), "step": 5}, out / "checkpoint-00000005.pt", pickle_module=pickle)
    train(_cfg(shards, out, steps=10))
    assert not proof.exists()
    assert json.load(open(out / "rank-0.json"))["steps"] == 10  # it started afresh


def test_steps_per_epoch_beyond_the_data_is_refused(shards, tmp_path):
    with pytest.raises(SystemExit, match=r"steps_per_epoch=500.*only \d+ batches"):
        train(_cfg(shards, tmp_path / "out", steps=20, steps_per_epoch=500))
    result = train(_cfg(shards, tmp_path / "resampled", steps=12, steps_per_epoch=500, resampled=True))
    assert result["steps"] == 12  # with replacement there is no end of the data


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before(shards, tmp_path, capfd):
    out = tmp_path / "out"
    train(_cfg(shards, out, steps=40, checkpoint_every=20, max_steps_this_run=40))
    assert not [p for p in os.listdir(out) if ".tmp-" in p]  # written to a temporary name, then renamed
    newest = out / "checkpoint-00000040.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash mid-write
    capfd.readouterr()
    train(_cfg(shards, out, steps=60, checkpoint_every=20))
    err = capfd.readouterr().err
    assert f"skipping checkpoint {newest}" in err
    assert json.load(open(out / "rank-0.json"))["steps"] == 60
    first = [json.loads(line) for line in open(out / "metrics-rank0.jsonl")]
    assert [r["step"] for r in first].count(21) == 2  # steps 21.. were redone from checkpoint 20
