"""dedup_video: aligned frame-hash sequences find re-encoded, resized, trimmed and brightened
copies, not different clips; on Ray with the keep rule and an index for --against."""
from __future__ import annotations

import os

import numpy as np
import pytest

from stages.dedup.video import DedupVideo, mean_distance
from stages.features.video import MeasureVideo


@pytest.fixture(scope="module")
def hashes(video_set):
    out = {}
    for name in ("fractal.mp4", *video_set["variants"], "pattern.mp4", "silent.mp4", "long.mp4", "scenes.mp4"):
        data = open(os.path.join(video_set["dir"], name), "rb").read()
        m = MeasureVideo({"audio": "skip"}).measure({"video": data, "source_uri": name})
        out[name] = {"seconds": len(m["frame_phash"]) / 4.0, "items": np.array(m["frame_phash"], np.uint64)}
    return out


def test_variants_match_and_different_clips_do_not(video_set, hashes):
    stage = DedupVideo({})
    original = hashes["fractal.mp4"]
    for variant in video_set["variants"]:
        assert stage.near(original, hashes[variant]), variant
    others = [n for n in hashes if n != "fractal.mp4" and n not in video_set["variants"]]
    for i, a in enumerate(others):
        for b in others[i + 1:] + ["fractal.mp4"]:
            assert not stage.near(hashes[a], hashes[b]), (a, b)


def test_one_shared_frame_is_not_a_duplicate():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 24, dtype=np.uint64)
    b = rng.integers(0, 2**63, 24, dtype=np.uint64)
    b[:3] = a[:3]  # the same opening, then other content
    assert mean_distance(a, b, 0.8) > 20
    shifted = np.concatenate([rng.integers(0, 2**63, 4, dtype=np.uint64), a[:20]])  # a trimmed copy, later
    assert mean_distance(a, shifted, 0.8) == 0.0
    assert mean_distance(a, a[:10], 0.8) == 0.0 and mean_distance(a, np.zeros(0, np.uint64), 0.8) == 64.0


def test_on_ray_with_the_keep_rule_and_an_index(ray_session, video_set, tmp_path):
    from pipeline import fs, ledger
    from pipeline.runner import Runner
    from stages.ingest.video_text import IngestVideo
    from tests.pipeline.helpers import make_job

    names = ["fractal.mp4", *video_set["variants"], "pattern.mp4", "silent.mp4"]
    first = tmp_path / "first"
    first.mkdir()
    for n in names:
        os.link(os.path.join(video_set["dir"], n), first / n)
    out = str(tmp_path / "run")
    Runner(make_job(IngestVideo({"source": str(first)}), MeasureVideo({"audio": "skip"}),
                    DedupVideo({"keep": "largest"})), out, log=lambda *a: None).run()
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", "02-dedup_video"), ["source_uri", "reject_reason"])
    gone = sorted(u.rsplit("/", 1)[1] for u in rejects.column("source_uri").to_pylist())
    kept_of_family = {"fractal.mp4", *video_set["variants"]} - set(gone)
    assert len(kept_of_family) == 1 and set(gone) <= {"fractal.mp4", *video_set["variants"]}
    assert kept_of_family == {"fractal.mp4"}  # keep: largest (the variants are smaller or shorter)
    assert ledger.audit(out)["ok"]
    # a refresh: a new copy against the first run's index is a duplicate, a new clip is not
    second = tmp_path / "second"
    second.mkdir()
    os.link(os.path.join(video_set["dir"], "fractal_bright.mp4"), second / "again.mp4")
    os.link(os.path.join(video_set["dir"], "long.mp4"), second / "long.mp4")
    out2 = str(tmp_path / "run2")
    Runner(make_job(IngestVideo({"source": str(second)}), MeasureVideo({"audio": "skip"}),
                    DedupVideo({"against": [os.path.join(out, "index", "dedup_video")]})), out2,
           log=lambda *a: None).run()
    r2 = fs.read_parquet_dir(os.path.join(out2, "rejects", "02-dedup_video"), ["source_uri", "reject_reason"])
    assert [u.rsplit("/", 1)[1] for u in r2.column("source_uri").to_pylist()] == ["again.mp4"]
