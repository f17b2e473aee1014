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


def test_inspection_commands(ray_session, demo_data, tmp_path):
    """status, rejects and plan on a real run; plan names the part of a fingerprint that changed."""
    import yaml

    job = tmp_path / "job.yaml"
    stages = [{"ingest_image_text": {"source": demo_data["manifest"], "image_size": 64}},
              {"filter_datacomp_basic": {}}, {"shard_webdataset": {"samples_per_shard": 30}}]
    job.write_text(yaml.safe_dump({"name": "i", "stages": stages}))
    out = str(tmp_path / "run")
    assert cli.main(["run", str(job), "--output", out]) == 0
    res = _run("status", out)
    assert res.returncode == 0 and "complete" in res.stdout and "done     02-shard_webdataset" in res.stdout
    res = _run("rejects", out, "--reason", "missing_file", "--show", "5")
    assert "1 rejected" in res.stdout and "ingest_image_text: missing_file" in res.stdout
    assert "missing.jpg" in res.stdout
    res = _run("rejects", out, "--json")
    assert json.loads(res.stdout)["total"] == len([v for v in demo_data["expected"].values() if v != "kept"]) + 3
    res = _run("plan", str(job), "--output", out)
    assert res.returncode == 0 and res.stdout.count("-> skip") == 3, res.stdout
    stages[1]["filter_datacomp_basic"]["min_side"] = 100
    job.write_text(yaml.safe_dump({"name": "i", "stages": stages}))
    plan = json.loads(_run("plan", str(job), "--output", out, "--json").stdout)
    would = {s["segment"]: s["would"] for s in plan["segments"]}
    assert would["00-listing"].startswith("skip") and would["01-ingest_image_text+filter_datacomp_basic"] == \
        "redo: filter_datacomp_basic: its parameters changed"
    assert would["02-shard_webdataset"] == "redo: an earlier segment changed"
    assert plan["segments"][1]["needs"]["cpus"] == 1.0


def test_stage_help_one_stage_and_version():
    res = _run("stage", "dedup_minhash", "--help")
    assert res.returncode == 0 and "threshold" in res.stdout and "reads: text" in res.stdout
    res = _run("stages", "embed_clip")
    assert "cpus=0.5" in res.stdout and "dedup_minhash" not in res.stdout
    assert "Near-duplicate texts by MinHash LSH" in _run("stages", "dedup_minhash").stdout
    assert _run("--version").stdout.startswith("mmcurate ")
    assert _run("stages", "nope").returncode == 2


def test_an_empty_run_warns_and_can_fail(ray_session, tmp_path, capsys):
    rows = tmp_path / "urls.jsonl"
    rows.write_text("".join(json.dumps({"url": f"http://127.0.0.1:9/x{i}.jpg", "caption": "x"}) + "\n"
                            for i in range(4)))
    out = str(tmp_path / "run")
    args = ["stage", "ingest_image_text", "--input", str(rows), "--output", out, "--set", "retries=0"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "warning: the run kept 0 of 4 samples" in printed
    assert "warning: 4 of 4 inputs were rejected by ingest_image_text as blocked_address " \
           "(allow_private_networks: true" in printed
    assert cli.main(args + ["--fail-if-empty"]) == 1


def test_status_names_a_failed_segment(ray_session, demo_data, tmp_path):
    import pytest

    from pipeline.inspect import format_status, status
    from pipeline.runner import Runner
    from stages.ingest.image_text import IngestImageText
    from tests.pipeline.helpers import FailGlobal, make_job

    out = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="always fails"):
        Runner(make_job(IngestImageText(source=demo_data["manifest"], image_size=48), FailGlobal()), out,
               log=lambda *a: None).run()
    result = status(out)
    assert not result["complete"] and [s["state"] for s in result["segments"]] == ["done", "done", "failed"]
    assert "FAILED   02-test_fail_global: RuntimeError: this stage always fails" in format_status(result)
