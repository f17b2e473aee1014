"""The demo job end to end on embedded Ray, read back by every reader a trainer might use."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from pipeline import ledger
from pipeline.job import load_job
from pipeline.runner import Runner
from tests.conftest import ROOT
from tests.shards import check_shards



@pytest.fixture(scope="module")
def full_demo_data(tmp_path_factory):
    """The demo set exactly as `make demo` makes it (16 images per photograph)."""
    from jobs.demo_data import make_demo

    out = str(tmp_path_factory.mktemp("full-demo-data"))
    info = make_demo(out)
    info["manifest"] = os.path.join(out, "manifest.jsonl")
    return info


@pytest.fixture(scope="module")
def demo_run(ray_session, full_demo_data, tmp_path_factory):
    job = load_job(os.path.join(ROOT, "jobs", "demo.yaml"))
    job.stages[0].params.source = full_demo_data["manifest"]
    out = str(tmp_path_factory.mktemp("demo-run"))
    summary = Runner(job, out, log=lambda *a: None).run()
    return out, summary


def test_demo_balances_and_names_every_reject(demo_run, full_demo_data):
    out, summary = demo_run
    result = ledger.audit(out)
    assert result["ok"], result
    assert result["inputs"] == full_demo_data["inputs"]
    expected = {}
    for outcome in full_demo_data["expected"].values():
        if outcome != "kept":
            expected[outcome] = expected.get(outcome, 0) + 1
    by_stage = result["rejected_by_stage"]
    assert by_stage["ingest_image_text"] == expected
    assert {"ingest_image_text", "dedup_exact", "dedup_phash", "dedup_semantic", "filter_clip_score"} <= set(by_stage)
    assert set(by_stage["dedup_exact"]) == set(by_stage["dedup_phash"]) == set(by_stage["dedup_semantic"]) == \
        {"duplicate"}
    scored = next(s for s in summary["segments"] if s["segment"].endswith("filter_clip_score"))
    assert by_stage["filter_clip_score"] == {"low_clip_score": scored["in"] - math.ceil(
        0.8 * scored["in"])}  # the top 80% of what reached it
    assert result["kept"] == result["inputs"] - sum(sum(r.values()) for r in by_stage.values())
    assert summary["shards"] >= 4  # the issue asks the demo for at least 4 shards


def test_demo_filter_cases_meet_their_filters(demo_run, full_demo_data):
    from pipeline import fs

    out, _ = demo_run
    first = [d for d in sorted(os.listdir(os.path.join(out, "rejects"))) if d.startswith("01-")][0]
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", first))
    got = {p.rsplit("/", 1)[1]: f"{s}: {r}" for p, s, r in zip(*(rejects.column(c).to_pylist() for c in
                                                               ("path", "reject_stage", "reject_reason")))}
    for fname, outcome in full_demo_data["filtered"].items():
        if outcome.startswith("kept"):
            assert fname not in got
        else:
            assert got.get(fname) == outcome, fname
    kept = fs.read_parquet_dir(os.path.join(out, "stages", first))
    email = [c for p, c in zip(kept.column("path").to_pylist(), kept.column("caption").to_pylist())
             if p.endswith("email.jpg")]
    assert email == ["a cat upside down, write to <EMAIL> for prints"]


def test_demo_dedup_removes_copies_of_the_same_photograph(demo_run):
    """The broken inputs that are valid images are the cat (chelsea) too."""
    from pipeline import fs

    out, _ = demo_run
    photo = {}
    dedup = ("02-dedup_exact", "03-dedup_phash", "05-dedup_semantic")
    for seg in dedup:
        for t in (fs.read_parquet_dir(os.path.join(out, d, seg)) for d in ("stages", "rejects")):
            photo |= dict(zip(t.column("sample_id").to_pylist(), t.column("photo").to_pylist()))
    for seg in dedup:
        rejects = fs.read_parquet_dir(os.path.join(out, "rejects", seg))
        assert rejects.num_rows > 0
        for sid, dup_of in zip(rejects.column("sample_id").to_pylist(), rejects.column("duplicate_of").to_pylist()):
            pair = {photo[sid], photo[dup_of]}
            assert len(pair) == 1 or pair <= {"broken", "chelsea", "filter-case"}, pair
    from jobs.demo_data import PHOTOS

    for seg in ("03-dedup_phash", "05-dedup_semantic"):  # every photograph survives both
        assert set(PHOTOS) <= set(fs.read_parquet_dir(os.path.join(out, "stages", seg)).column("photo").to_pylist())


def test_shards_pass_the_checker(demo_run):
    out, _ = demo_run
    check_shards(os.path.join(out, "shards"))


def test_webdataset_reads_the_shards_with_brace_notation(demo_run):
    import webdataset as wds

    out, summary = demo_run
    manifest = json.load(open(os.path.join(out, "shards", "manifest.json")))
    last = len(manifest["shards"]) - 1
    url = os.path.join(out, "shards", f"demo-{{000000..{last:06d}}}.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False, empty_check=False).decode("pil"))
    assert len(samples) == summary["kept"]
    for s in samples:
        meta = s["json"]
        assert s["jpg"].size == (meta["width"], meta["height"])
        assert max(s["jpg"].size) <= 384
        assert s["txt"].strip() and meta["sample_id"] == s["__key__"]


def test_ray_data_and_tarfile_read_the_shards(demo_run):
    import ray

    out, summary = demo_run
    shard_dir = os.path.join(out, "shards")
    rows = ray.data.read_webdataset(shard_dir, file_extensions=["tar"], decoder=None).take_all()
    assert len(rows) == summary["kept"]
    assert all(isinstance(r["jpg"], bytes) and r["jpg"][:2] == b"\xff\xd8" for r in rows)
    keys = []
    for name in sorted(os.listdir(shard_dir)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(shard_dir, name)) as tf:
                keys += [m.name.split(".", 1)[0] for m in tf if m.name.endswith(".json")]
    assert sorted(keys) == sorted(r["__key__"] for r in rows)


def test_samples_are_ordered_by_hash_across_shards(demo_run):
    import pyarrow as pa

    from stages.shard.webdataset import order_key

    out, _ = demo_run
    shard_dir = os.path.join(out, "shards")
    keys = []
    for name in sorted(os.listdir(shard_dir)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(shard_dir, name)) as tf:
                keys += [m.name.split(".", 1)[0] for m in tf if m.name.endswith(".json")]
    order = order_key(pa.array(keys))
    assert np.all(np.diff(order.astype(np.float64)) > 0)


def test_rejects_table_is_flat_and_keeps_input_columns(demo_run):
    from pipeline import fs

    out, _ = demo_run
    first = [d for d in sorted(os.listdir(os.path.join(out, "rejects"))) if d.startswith("01-")][0]
    assert first.startswith("01-ingest_image_text+filter_datacomp_basic")
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", first))
    for col in ("sample_id", "source_uri", "licence", "photo", "path", "reject_stage", "reject_reason",
                "reject_detail", "duplicate_of", "cluster_id"):
        assert col in rejects.column_names
    from pipeline import media

    # media never travels into the rejects table: a reference to the run's media store does
    assert media.is_ref(rejects.schema.field("image").type)
    assert "ingest_image_text" in set(rejects.column("reject_stage").to_pylist())
    dups = fs.read_parquet_dir(os.path.join(out, "rejects", "03-dedup_phash"))
    assert media.is_ref(dups.schema.field("image").type) and {"photo", "cluster_id", "duplicate_of"} <= set(
        dups.column_names)
    ref = dups.column("image")[0].as_py()
    assert ref["uri"].startswith(os.path.join(out, "media")) and media.read(ref)[:2] == b"\xff\xd8"


def test_demo_report_renders_in_headless_chromium(demo_run, tmp_path):
    """`mmcurate report` writes a self-contained page; Chromium renders it (a real
    screenshot) and the funnel's numbers are in the page it built."""
    import shutil

    from PIL import Image

    from pipeline import cli

    out, summary = demo_run
    assert cli.main(["report", out]) == 0
    page = os.path.join(out, "report", "index.html")
    report = json.load(open(os.path.join(out, "report", "report.json")))
    titles = [s["title"] for s in report["sections"]]
    assert report["kept"] == summary["kept"] and "Random weights" in titles  # tiny-random is labelled
    assert any(t.startswith("Representation") for t in titles)
    assert report["metrics"]["clip_score"]["count"] == summary["kept"]
    assert report["previews"]["kept"] == min(24, summary["kept"]) and report["previews"]["rejected"]["dedup_phash: duplicate"] == 8
    assert {"dedup_exact", "dedup_phash", "dedup_semantic"} <= set(report["pairs"])  # removed beside survivors
    assert all(len(p) == 2 and p[0] != p[1] for p in report["pairs"]["dedup_semantic"])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is installed by scripts/install.sh (apt, as root)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,1600", f"file://{page}"],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([chromium, *flags, "--dump-dom", f"file://{page}"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    im = np.asarray(Image.open(shot).convert("L"))
    assert im.shape[0] > 500 and im.std() > 10  # something was drawn, not a blank page
    assert f'<b id="kept">{summary["kept"]}</b>' in dom and f'<b id="inputs">{summary["inputs"]}</b>' in dom
    for seg in summary["segments"]:
        assert f"<td class=\"n\">{seg['in']}</td><td class=\"n\">{seg['kept']}</td>" in dom
    assert "random weights" in dom and "Rejected: dedup_phash: duplicate" in dom
    assert "Duplicates beside their survivors: dedup_semantic" in dom


def test_media_is_written_once_and_no_global_shuffle_moves_it(demo_run, full_demo_data):
    """Bytes written before the shards stay within 1.3x the ingested image bytes (3.6x when
    every segment rewrote the images), and global stages shuffle only narrow columns."""
    from pipeline import fs, shuffle

    out, summary = demo_run
    first = [d for d in sorted(os.listdir(os.path.join(out, "stages"))) if d.startswith("01-")][0]
    import pyarrow.compute as pc

    ingested = sum(pc.sum(t.column("image_bytes")).as_py() or 0
                   for t in (fs.read_parquet_dir(os.path.join(out, d, first), ["image_bytes"])
                             for d in ("stages", "rejects")) if t is not None)

    def size(folder: str) -> int:
        return sum(os.path.getsize(os.path.join(b, f)) for b, _, fs_ in os.walk(os.path.join(out, folder))
                   for f in fs_)

    before_shards = sum(size(d) for d in ("stages", "rejects", "expanded", "media", "index"))
    assert before_shards <= 1.3 * ingested, (before_shards, ingested)
    assert sum(s["bytes_written"] for s in summary["segments"][:-1]) <= before_shards
    global_shuffles = [s for s in shuffle.recent if s["reduce"] != "_SliceWriter"]
    assert global_shuffles and all(s["columns"] is not None and "image" not in s["columns"] for s in global_shuffles)


def test_the_readmes_runnable_snippets_run(demo_run, tmp_path):
    """Every README code block marked `<!-- runnable: after make demo -->` runs as written,
    against the demo's run directory."""
    import re

    out, _ = demo_run
    readme = open(os.path.join(ROOT, "README.md")).read()
    snippets = re.findall(r"<!-- runnable: after make demo -->\n```python\n(.*?)```", readme, re.S)
    assert len(snippets) >= 2
    (tmp_path / "runs").mkdir()
    os.symlink(out, tmp_path / "runs" / "demo")
    for code in snippets:
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": ROOT})
        assert res.returncode == 0, f"{code}\n{res.stderr[-2000:]}"
