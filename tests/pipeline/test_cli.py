"""The mmcurate command: help everywhere, stage listing, one stage on a file, clear errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from pipeline import cli, fs
from pipeline.stage import register
from tests.conftest import ROOT
from tests.pipeline.helpers import RejectOdd

MMCURATE = os.path.join(ROOT, ".venv", "bin", "mmcurate")


def _run(*args):
    return subprocess.run([MMCURATE, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("cmd", [[], ["run"], ["stage"], ["stages"], ["audit"], ["report"], ["train"]])
def test_help_on_every_command(cmd):
    res = _run(*cmd, "--help")
    assert res.returncode == 0 and "usage: mmcurate" in res.stdout


def test_stages_lists_parameters_defaults_and_bounds():
    res = _run("stages")
    assert res.returncode == 0
    assert "ingest_image_text" in res.stdout and "shard_webdataset" in res.stdout
    assert "quality: int = 90 [>=1 <=100]" in res.stdout
    assert "source: str (required)" in res.stdout


def test_bad_job_file_is_one_clear_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nstages:\n  - ingest_image_text: {source: m.jsonl, qualty: 3}\n")
    res = _run("run", str(job), "--output", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "stage 'ingest_image_text'" in res.stderr and "unknown key 'qualty'" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_source_is_a_clear_error(tmp_path):
    res = _run("stage", "ingest_image_text", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture()
def rows_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    with open(path, "w") as f:
        for i in range(20):
            f.write(json.dumps({"n": i, "text": f"row {i}", "tag": "abc"[i % 3]}) + "\n")
    return str(path)


def test_stage_command_keeps_every_input_column(ray_session, rows_file, tmp_path):
    register(RejectOdd)
    out = str(tmp_path / "out")
    assert cli.main(["stage", "test_reject_odd", "--input", rows_file, "--output", out, "--set", "column=n"]) == 0
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-test_reject_odd"))
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", "01-test_reject_odd"))
    assert sorted(kept.column("n").to_pylist()) == list(range(0, 20, 2))
    assert sorted(rejects.column("n").to_pylist()) == list(range(1, 20, 2))
    for table in (kept, rejects):
        assert {"n", "text", "tag", "sample_id", "ordinal"} <= set(table.column_names)
    assert set(rejects.column("reject_reason").to_pylist()) == {"odd"}
    assert set(rejects.column("reject_stage").to_pylist()) == {"test_reject_odd"}
    assert "7 is odd" in rejects.column("reject_detail").to_pylist()
    assert {"duplicate_of", "cluster_id"} <= set(rejects.column_names)
    assert cli.main(["audit", out]) == 0


def test_stage_command_limit(ray_session, rows_file, tmp_path):
    register(RejectOdd)
    out = str(tmp_path / "out")
    assert cli.main(["stage", "test_reject_odd", "--input", rows_file, "--output", out, "--limit", "5"]) == 0
    from pipeline.ledger import audit
    assert audit(out)["inputs"] == 5


def test_audit_fails_on_missing_or_duplicated_samples(ray_session, demo_data, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert cli.main(["stage", "ingest_image_text", "--input", demo_data["manifest"], "--output", out,
                     "--set", "image_size=64"]) == 0
    assert cli.main(["audit", out]) == 0
    capsys.readouterr()
    kept_dir = os.path.join(out, "stages", "01-ingest_image_text")
    part = next(f for f in sorted(os.listdir(kept_dir)) if f.endswith(".parquet"))
    shutil.copy(os.path.join(kept_dir, part), os.path.join(kept_dir, "copy-" + part))
    assert cli.main(["audit", out]) == 1
    assert json.loads(capsys.readouterr().out)["duplicated"] > 0
    os.remove(os.path.join(kept_dir, "copy-" + part))
    shutil.rmtree(os.path.join(out, "rejects"))
    assert cli.main(["audit", out]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] == len(
        [v for v in demo_data["expected"].values() if v != "kept"])


def test_bad_set_value_is_a_clear_error(tmp_path, demo_data):
    res = _run("stage", "ingest_image_text", "--input", demo_data["manifest"], "--output", str(tmp_path / "o"),
               "--set", "quality=[1")
    assert res.returncode == 2 and "not valid YAML" in res.stderr and "Traceback" not in res.stderr
