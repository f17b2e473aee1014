"""The audio demo job end to end on embedded Ray: every broken file has its reason, copies
go, segments trace to their recording, shards are read back and the report plays."""
from __future__ import annotations

import base64
import io
import json
import os
import re

import pytest
import soundfile as sf

from pipeline import fs, ledger
from pipeline.job import load_job
from pipeline.runner import Runner
from tests.conftest import ROOT
from tests.shards import check_shards


@pytest.fixture(scope="module")
def audio_demo(ray_session, tmp_path_factory):
    from jobs.demo_audio_data import make_audio_demo

    data = str(tmp_path_factory.mktemp("demo-audio-data"))
    info = make_audio_demo(data)
    job = load_job(os.path.join(ROOT, "jobs", "demo_audio.yaml"))
    job.stages[0].params.source = data
    out = str(tmp_path_factory.mktemp("demo-audio-run"))
    summary = Runner(job, out, log=lambda *a: None).run()
    return out, summary, info


def _rejects(out: str) -> dict[str, tuple[str, str]]:
    found = {}
    for d in sorted(os.listdir(os.path.join(out, "rejects"))):
        t = fs.read_parquet_dir(os.path.join(out, "rejects", d), ["source_uri", "reject_stage", "reject_reason"])
        if t is None:  # a segment that rejected nothing
            continue
        for uri, stage, reason in zip(*(t.column(c).to_pylist() for c in t.column_names)):
            found[uri.rsplit("/", 1)[1]] = (stage, reason)
    return found


def test_every_input_is_kept_or_rejected_with_its_reason(audio_demo):
    out, summary, info = audio_demo
    audit = ledger.audit(out)
    assert audit["ok"], audit
    assert audit["inputs"] == info["inputs"] and audit["expanded"] == 1 and audit["derived"] == 6
    rejects = _rejects(out)
    broken = {name: reason for name, reason in info["expected"].items() if reason != "kept"}
    assert {n: rejects[n] for n in broken} == {n: ("ingest_audio", r) for n, r in broken.items()}
    assert {n for n, (s, r) in rejects.items() if s == "filter_audio_quality"} == \
        {"telephone.wav", "tone_440.flac", "tone_1000.flac"}  # narrowband
    copies = {n: r for n, r in rejects.items() if r[0].startswith("dedup")}
    # speech_00 and its copies: one of the biggest files survives (keep: largest), the re-mux of
    # another goes to dedup_exact, the rest to dedup_audio
    group = {"speech_00.wav", "remux_copy.flac", "variant_mp3_64k.mp3", "variant_16k.wav", "variant_quiet.wav",
             "variant_opus.opus", "variant_aac.m4a", "variant_trimmed.wav"}
    assert set(copies) <= group and len(group - set(copies)) == 1
    assert (group - set(copies)) <= {"speech_00.wav", "variant_quiet.wav"}  # the two WAVs of full length
    assert sorted(s for s, _ in copies.values()) == ["dedup_audio"] * 6 + ["dedup_exact"]


def test_shards_hold_audio_metrics_embeddings_and_segments_of_their_recording(audio_demo, tmp_path):
    import numpy as np
    import webdataset as wds

    out, summary, _ = audio_demo
    check_shards(os.path.join(out, "shards"))
    listing = fs.read_parquet_dir(os.path.join(out, "stages", "00-listing"), ["sample_id", "source_uri"])
    talk_id = next(i for i, u in zip(*(listing.column(c).to_pylist() for c in listing.column_names))
                   if u.endswith("long_talk.wav"))
    samples = list(wds.WebDataset(os.path.join(out, "shards", "demo-audio-{000000..000001}.tar"), shardshuffle=False,
                                  empty_check=False))
    assert len(samples) == summary["kept"]
    segments = 0
    for s in samples:
        assert {"flac", "txt", "json", "clap_audio_emb.npy", "clap_text_emb.npy"} <= set(s)
        meta = json.loads(s["json"])
        audio, rate = sf.read(io.BytesIO(s["flac"]))  # decoded by the real decoder
        assert abs(len(audio) / rate - meta["duration"]) < 0.01 and rate == meta["sample_rate"]
        assert {"loudness_lufs", "true_peak_dbtp", "snr_db", "bandwidth_hz", "clap_score"} <= set(meta)
        emb = np.load(io.BytesIO(s["clap_audio_emb.npy"]))
        assert emb.dtype == np.float16 and abs(float(np.linalg.norm(emb.astype(np.float32))) - 1) < 1e-2
        assert meta["meta"]["features"]["clap_audio_emb"]["random_weights"] is True
        if meta.get("parent_id"):
            segments += 1
            assert meta["parent_id"] == talk_id and "long_talk.wav#t=" in meta["source_uri"]
            assert meta["text_scope"] == "segment" and meta["segment_end"] > meta["segment_start"]
            assert s["txt"].decode() in meta["transcript_segments"]
    assert segments == 6


def test_report_shows_audio_metrics_waveforms_and_players(audio_demo):
    from pipeline import cli

    out, summary, _ = audio_demo
    assert cli.main(["report", out]) == 0
    report = json.load(open(os.path.join(out, "report", "report.json")))
    assert {"loudness_lufs", "snr_db", "bandwidth_hz", "clipping_ratio", "clap_score"} <= set(report["metrics"])
    page = open(os.path.join(out, "report", "index.html")).read()
    clips = re.findall(r'<audio controls preload="none" src="data:audio/ogg;base64,([^"]+)"', page)
    assert len(clips) >= summary["kept"] and page.count("data:image/png;base64,") >= len(clips)
    data, rate = sf.read(io.BytesIO(base64.b64decode(clips[0])))
    assert rate == 16_000 and 1.0 < len(data) / rate <= 8.0


def test_the_trainer_reads_the_audio_shards(audio_demo, tmp_path):
    from jobs.train import TrainConfig, train

    out, _, _ = audio_demo
    result = train(TrainConfig(shards=os.path.join(out, "shards", "demo-audio-{000000..000001}.tar"),
                               output=str(tmp_path / "t"), modalities=["clap_audio_emb", "clap_text_emb"],
                               batch_size=4, steps=4, eval_percent=held_out_percent(out, "demo-audio"),
                               checkpoint_every=0, dim=8, hidden=16))
    assert result["steps"] == 4 and "clap_audio_emb->clap_text_emb" in result["retrieval"]


def held_out_percent(out: str, name: str, least: int = 2, train_least: int = 4) -> float:
    """The smallest eval_percent that holds out at least `least` samples and leaves
    `train_least` to train on. The split hashes sample ids, and the demo's ids follow its
    folder (a pytest temporary one): a fixed percent could hold out too few."""
    import glob

    import pyarrow.parquet as pq

    from jobs.train import in_eval

    rows = [r for f in sorted(glob.glob(os.path.join(out, "shards", f"{name}-*.parquet")))
            for r in pq.read_table(f, columns=["__key__", "cluster_id"]).to_pylist()]
    for percent in range(20, 85, 5):
        held = sum(in_eval({"cluster_id": r["cluster_id"]}, r["__key__"], percent) for r in rows)
        if held >= least and len(rows) - held >= train_least:
            return float(percent)
    raise AssertionError(f"no split of {len(rows)} samples holds out {least} and trains on {train_least}")
