"""The video demo job end to end on embedded Ray: every broken file has its reason, the
multi-scene video becomes its shots, copies go, clips trace to their source, shards are read
back by webdataset, by ray.data and by PyAV, the report shows keyframe strips, and the
trainer learns from the shards."""
from __future__ import annotations

import io
import json
import os
import re

import av
import numpy as np
import pytest

from pipeline import fs, ledger
from pipeline.job import load_job
from pipeline.runner import Runner
from tests.conftest import ROOT
from tests.shards import check_shards


@pytest.fixture(scope="module")
def video_demo(ray_session, video_set, tmp_path_factory):
    job = load_job(os.path.join(ROOT, "jobs", "demo_video.yaml"))
    job.stages[0].params.source = video_set["dir"]
    out = str(tmp_path_factory.mktemp("demo-video-run"))
    summary = Runner(job, out, log=lambda *a: None).run()
    return out, summary, video_set


def _rejects(out: str) -> dict[str, tuple[str, str]]:
    found = {}
    for d in sorted(os.listdir(os.path.join(out, "rejects"))):
        t = fs.read_parquet_dir(os.path.join(out, "rejects", d), ["source_uri", "reject_stage", "reject_reason"])
        for uri, stage, reason in zip(*(t.column(c).to_pylist() for c in t.column_names)) if t is not None else ():
            found[uri.rsplit("/", 1)[1]] = (stage, reason)
    return found


def test_every_video_and_clip_is_kept_or_rejected_with_its_reason(video_demo):
    out, summary, info = video_demo
    audit = ledger.audit(out)
    assert audit["ok"] and audit["inputs"] == info["inputs"], audit
    rejects = _rejects(out)
    assert {n: rejects[n] for n in info["broken"]} == {n: ("ingest_video", r) for n, r in info["broken"].items()}
    # the still picture is near-static; the three copies of the fractal go to dedup_video (keep: largest)
    assert rejects["still.mp4#t=0.000-5.000"] == ("filter_video_quality", "near_static")
    copies = sorted(n.split("#")[0] for n, (stage, _) in rejects.items() if stage == "dedup_video")
    assert copies == sorted(info["variants"])
    assert len(rejects) == len(info["broken"]) + 1 + len(info["variants"])


def test_shards_hold_clips_keyframes_and_embeddings_of_their_source(video_demo):
    import webdataset as wds

    out, summary, info = video_demo
    check_shards(os.path.join(out, "shards"))
    listing = fs.read_parquet_dir(os.path.join(out, "stages", "00-listing"), ["sample_id", "source_uri"])
    source_of = dict(zip(*(listing.column(c).to_pylist() for c in listing.column_names)))
    samples = list(wds.WebDataset(os.path.join(out, "shards", "demo-video-{000000..000001}.tar"),
                                  shardshuffle=False, empty_check=False))
    assert len(samples) == summary["kept"]
    per_source: dict[str, int] = {}
    for s in samples:
        assert {"mp4", "keyframes.jpg", "txt", "json", "clip_video_emb.npy", "clip_text_emb.npy"} <= set(s)
        meta = json.loads(s["json"])
        source = source_of[meta["parent_id"]].rsplit("/", 1)[1]  # every clip names its source
        assert meta["source_uri"].endswith(f"{source}#t={meta['clip_start']:.3f}-{meta['clip_end']:.3f}")
        per_source[source] = per_source.get(source, 0) + 1
        with av.open(io.BytesIO(s["mp4"])) as c:  # decoded by the real decoder
            frames = sum(1 for _ in c.decode(video=0))
        assert abs(frames / meta["fps"] - meta["duration"]) <= 2 / meta["fps"]
        from PIL import Image

        strip = Image.open(io.BytesIO(s["keyframes.jpg"]))
        assert strip.height == 224 and strip.width // meta["keyframe_count"] > 100
        emb = np.load(io.BytesIO(s["clip_video_emb.npy"]))
        assert emb.dtype == np.float16 and abs(float(np.linalg.norm(emb.astype(np.float32))) - 1) < 1e-2
        assert {"motion_score", "luma_std", "width", "height", "fps", "clip_score"} <= set(meta)
        assert ("clap_audio_emb.npy" in s) == meta["has_audio"] == ("flac" in s)
        if meta["has_audio"]:
            assert meta["loudness_lufs"] is not None and "clap_score" in meta
    assert per_source["scenes.mp4"] >= info["scenes"]  # at least one clip per shot
    assert per_source["long.mp4"] == 3  # 24 s of one shot in windows of at most 10 s
    portrait = next(json.loads(s["json"]) for s in samples if "portrait.mp4" in json.loads(s["json"])["source_uri"])
    assert portrait["height"] > portrait["width"]
    scene_texts = [s["txt"].decode() for s in samples if "scenes.mp4" in json.loads(s["json"])["source_uri"]]
    from jobs.demo_video_data import SUBTITLES

    assert sorted(scene_texts) == sorted(SUBTITLES)  # the subtitles cut to each clip


def test_ray_data_reads_the_shards(video_demo):
    import ray

    out, summary, _ = video_demo
    rows = ray.data.read_webdataset(os.path.join(out, "shards"), decoder=None, file_extensions=["tar"]).take_all()
    assert len(rows) == summary["kept"] and all(r["mp4"][4:8] == b"ftyp" for r in rows)


def test_report_shows_keyframe_strips_and_video_metrics(video_demo):
    from pipeline import cli

    out, _, _ = video_demo
    assert cli.main(["report", out]) == 0
    report = json.load(open(os.path.join(out, "report", "report.json")))
    assert {"motion_score", "luma_std", "duration", "width", "clip_score", "loudness_lufs"} <= set(report["metrics"])
    page = open(os.path.join(out, "report", "index.html")).read()
    strips = re.findall(r'<div class="card strip"><img src="data:image/jpeg;base64,', page)
    assert len(strips) >= report["kept"]  # every kept clip, and the clips rejected after measuring
    assert "Rejected: filter_video_quality: near_static" in page and "Rejected: dedup_video: duplicate" in page


def test_the_trainer_reads_the_video_shards(video_demo, tmp_path):
    from jobs.train import TrainConfig, train
    from tests.jobs.test_demo_audio import held_out_percent

    out, _, _ = video_demo
    result = train(TrainConfig(shards=os.path.join(out, "shards", "demo-video-{000000..000001}.tar"),
                               output=str(tmp_path / "t"), modalities=["clip_video_emb", "clap_audio_emb",
                                                                        "clip_text_emb"],
                               fusion="hybrid", batch_size=4, steps=4, checkpoint_every=0, dim=8, hidden=16,
                               eval_percent=held_out_percent(out, "demo-video")))
    assert result["steps"] == 4 and "clip_video_emb->clip_text_emb" in result["retrieval"]
