"""The same job on a real 2-node Ray cluster (one machine, two raylets) with its inputs and
run directory on S3 (moto's server on 127.0.0.1): tasks run on both nodes, the audit
balances, and the shards are byte for byte those of a single-node run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline import fs, ledger
from pipeline.runner import Runner
from tests.conftest import ROOT
from tests.pipeline.cluster_job import cluster_job_stages
from tests.pipeline.helpers import NodeNote, make_job
from tests.pipeline.test_s3 import _upload


@pytest.mark.cluster
def test_a_job_on_two_nodes_matches_one(ray_session, s3_bucket, demo_data, tmp_path):
    src = f"{s3_bucket}/cluster-inputs"
    _upload(demo_data["dir"], src)
    notes = tmp_path / "notes"
    notes.mkdir()
    out = f"{s3_bucket}/cluster-run"
    res = subprocess.run([sys.executable, "-m", "tests.pipeline.cluster_job", f"{src}/manifest.jsonl", out,
                          str(notes)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    reported = json.loads(res.stdout.strip().splitlines()[-1])
    assert reported["nodes"] == 2
    nodes = {name.split("-", 1)[0] for name in os.listdir(notes)}
    assert len(nodes) == 2, nodes  # batches ran on both raylets
    audit = ledger.audit(out)
    assert audit["ok"] and audit["inputs"] == demo_data["inputs"]

    single = str(tmp_path / "single")
    os.makedirs(tmp_path / "notes-single")
    ingest, shards = cluster_job_stages(f"{src}/manifest.jsonl")
    Runner(make_job(ingest, NodeNote(folder=str(tmp_path / "notes-single")), shards), single,
           log=lambda *a: None).run()
    on_two = json.loads(fs.read_bytes(f"{out}/shards/manifest.json"))["shards"]
    on_one = json.loads(fs.read_bytes(f"{single}/shards/manifest.json"))["shards"]
    assert on_two == on_one and len(on_one) >= 2  # names, sample counts, sizes and sha256 alike
