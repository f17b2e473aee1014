"""Stages that chain: a job run whole, in two halves (--until / --from), and stage by stage."""
from __future__ import annotations

import json
import os
import subprocess

import yaml

from pipeline import ledger
from tests.conftest import ROOT

MMCURATE = os.path.join(ROOT, ".venv", "bin", "mmcurate")


def _run(*args, ok: bool = True):
    res = subprocess.run([MMCURATE, *args], capture_output=True, text=True, timeout=300)
    assert (res.returncode == 0) == ok, res.stderr[-3000:]
    return res


def _shards(out: str) -> list:
    return json.load(open(os.path.join(out, "shards", "manifest.json")))["shards"]


def test_whole_halves_and_stage_by_stage_give_the_same_shards(ray_session, demo_data, tmp_path):
    stages = [{"ingest_image_text": {"source": demo_data["manifest"], "image_size": 64}},
              {"dedup_exact": {"key": "content"}}, {"shard_webdataset": {"samples_per_shard": 25}}]
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "chain", "stages": stages}))
    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    _run("run", str(job), "--output", whole)

    res = _run("run", str(job), "--output", halves, "--until", "dedup_exact")
    assert not os.path.exists(os.path.join(halves, "shards"))
    status = _run("status", halves, ok=False).stdout  # not complete: exit 1
    assert "done     01-ingest_image_text" in status and "pending  03-shard_webdataset" in status
    _run("run", str(job), "--output", halves, "--from", "shard_webdataset")
    assert "complete" in _run("status", halves).stdout

    one, two, three = (str(tmp_path / n) for n in ("s1", "s2", "s3"))
    res = _run("stage", "ingest_image_text", "--input", demo_data["manifest"], "--output", one, "--set", "image_size=64")
    assert f"next: mmcurate stage STAGE --input {one}" in res.stdout
    _run("stage", "dedup_exact", "--input", one, "--output", two, "--set", "key=content")
    _run("stage", "shard_webdataset", "--input", two, "--output", three, "--set", "samples_per_shard=25")

    assert _shards(whole) == _shards(halves) == _shards(three)
    for out in (whole, halves):
        assert ledger.audit(out)["ok"]


def test_from_needs_the_segments_before_it(ray_session, demo_data, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "x", "stages": [
        {"ingest_image_text": {"source": demo_data["manifest"], "image_size": 64}}, {"dedup_exact": {}},
        {"shard_webdataset": {}}]}))
    res = _run("run", str(job), "--output", str(tmp_path / "o"), "--from", "shard_webdataset", ok=False)
    assert "segment 01-ingest_image_text before it is not committed" in res.stderr and "Traceback" not in res.stderr
    res = _run("run", str(job), "--output", str(tmp_path / "o"), "--until", "nope", ok=False)
    assert "no stage 'nope' in this job" in res.stderr


def test_input_can_be_a_segment_folder_or_a_glob(ray_session, demo_data, tmp_path):
    one = str(tmp_path / "s1")
    _run("stage", "ingest_image_text", "--input", demo_data["manifest"], "--output", one, "--set", "image_size=64")
    segment = os.path.join(one, "stages", "01-ingest_image_text")
    kept = ledger.audit(one)["kept"]
    for given in (segment, os.path.join(segment, "*.parquet")):
        out = str(tmp_path / f"o{len(given)}")
        _run("stage", "filter_datacomp_basic", "--input", given, "--output", out)
        result = ledger.audit(out)
        assert result["ok"] and result["inputs"] == kept  # every row of every part, not one file of them
