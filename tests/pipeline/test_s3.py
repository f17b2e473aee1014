"""s3:// end to end against moto's S3 server on 127.0.0.1: inputs, run directory, shards."""
from __future__ import annotations

import json
import os
import subprocess

import yaml

from pipeline import fs, ledger
from pipeline.job import load_job
from pipeline.runner import Runner
from tests.conftest import ROOT
from tests.shards import check_shards



def _upload(local_dir: str, uri: str) -> None:
    for base, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                fs.write_bytes(fs.join(uri, os.path.relpath(path, local_dir)), f.read())


def _shards_read_back(shard_uri: str, expected: int, tmp_path) -> None:
    import webdataset as wds

    from stages.shard.webdataset import register_gopen

    manifest = json.loads(fs.read_bytes(fs.join(shard_uri, "manifest.json")))
    names = [s["name"] for s in manifest["shards"]]
    first, last = names[0][-10:-4], names[-1][-10:-4]
    prefix = names[0][:-11]
    register_gopen()
    url = fs.join(shard_uri, f"{prefix}-{{{first}..{last}}}.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False, empty_check=False))
    assert len(samples) == expected == sum(s["samples"] for s in manifest["shards"])
    assert all(s["jpg"][:2] == b"\xff\xd8" for s in samples)
    # The shared checker reads local files: copy the shard folder down and check it.
    local = tmp_path / "shards"
    local.mkdir()
    for info in fs.list_files(shard_uri):
        name = info.path.rsplit("/", 1)[1]
        (local / name).write_bytes(fs.read_bytes(fs.join(shard_uri, name)))
    check_shards(str(local))


def test_demo_job_with_output_on_s3(s3_bucket, demo_data, tmp_path):
    """`mmcurate run jobs/demo.yaml --output s3://...`, as a user runs it (its own embedded Ray)."""
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    os.symlink(demo_data["dir"], work / "runs" / "demo-data")
    out = f"{s3_bucket}/demo-cli"
    demo = yaml.safe_load(open(os.path.join(ROOT, "jobs", "demo.yaml")))
    demo["stages"] = [demo["stages"][0], {"dedup_phash": {}}, demo["stages"][-1]]  # what touches storage
    job_file = work / "demo-s3.yaml"
    job_file.write_text(yaml.safe_dump(demo))
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "mmcurate"), "run", str(job_file),
                          "--output", out], cwd=work, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MMCURATE_RAY_TMPDIR": "/tmp"})
    assert res.returncode == 0, res.stderr[-3000:]
    result = ledger.audit(out)
    assert result["ok"] and result["inputs"] == demo_data["inputs"]
    _shards_read_back(f"{out}/shards", result["kept"], tmp_path)
    leftovers = [i.path for i in fs.list_files(out, recursive=True) if "/.tmp-" in i.path]
    assert leftovers == []


def test_inputs_and_run_directory_on_s3(ray_session, s3_bucket, demo_data, tmp_path):
    src = f"{s3_bucket}/inputs"
    _upload(demo_data["dir"], src)
    job = load_job(os.path.join(ROOT, "jobs", "demo.yaml"))
    job.stages = [job.stages[0], job.stages[-1]]  # ingest and shards: what touches storage
    job.stages[0].params.source = f"{src}/manifest.jsonl"  # relative image paths resolve on S3
    job.stages[-1].params.samples_per_shard = 16
    out = f"{s3_bucket}/run"
    first = Runner(job, out, log=lambda *a: None).run()
    result = ledger.audit(out)
    assert result["ok"] and result["inputs"] == demo_data["inputs"]
    kept_sources = fs.read_parquet_dir(f"{out}/stages/01-ingest_image_text").column("source_uri").to_pylist()
    assert all(s.startswith(f"{src}/images/") for s in kept_sources)
    _shards_read_back(f"{out}/shards", first["kept"], tmp_path)
    again = Runner(job, out, log=lambda *a: None).run()  # markers on S3 make the rerun a no-op
    assert [s["skipped"] for s in again["segments"]] == [True, True, True]
    from pipeline import cli

    assert cli.main(["report", out]) == 0  # the report reads and writes the run directory on S3
    assert b"Funnel" in fs.read_bytes(f"{out}/report/index.html")


def test_webdataset_tars_on_s3_as_input(s3_bucket, tmp_path):
    import io
    import tarfile

    from PIL import Image

    from jobs.demo_data import jpeg, photos
    from stages.ingest.image_text import IngestImageText

    buf = io.BytesIO()
    img = jpeg(Image.fromarray(photos()["coffee"]))
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for key in ("a", "b"):
            for ext, data in (("jpg", img), ("txt", f"coffee {key}".encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    fs.write_bytes(f"{s3_bucket}/tars/in-000.tar", buf.getvalue())
    stage = IngestImageText(source=f"{s3_bucket}/tars/in-{{000..000}}.tar", image_size=64)
    stage.ensure_setup()
    (table,) = list(stage.list_inputs())
    out = stage.process(table.drop_columns(["reject"])).to_pylist()
    assert [r["caption"] for r in out] == ["coffee a", "coffee b"]
    assert all(r["reject"] is None and r["width"] == 64 for r in out)  # read by byte range from S3


def test_storage_settings_in_the_job_file(monkeypatch):
    from pipeline.job import parse_job

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    job = parse_job({"name": "s", "storage": {"endpoint_url": "http://127.0.0.1:9", "region": "eu-west-1"},
                     "stages": [{"ingest_image_text": {"source": "s3://b/m.jsonl"}}]})
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # restored after the test, as is the endpoint
    job.storage.apply()
    assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:9" and os.environ["AWS_REGION"] == "eu-west-1"
