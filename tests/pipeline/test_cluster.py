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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.cluster
def test_ray_job_submit_and_ray_client_against_a_local_head(demo_data, tmp_path):
    """Both ways the README gives, against a head started with `ray start --head` and Ray
    2.60's token authentication: `ray job submit -- mmcurate run ...`, and
    `mmcurate run --ray-address ray://HEAD:PORT` from outside the cluster (Ray Client)."""
    import secrets
    import signal
    import tempfile
    import time

    bin_dir = os.path.join(ROOT, ".venv", "bin")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    dashboard, client = _free_port(), _free_port()
    ray_tmp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # socket paths must stay short
    head = subprocess.Popen(
        [os.path.join(bin_dir, "ray"), "start", "--head", "--block", f"--port={_free_port()}", "--num-cpus=1",
         f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={_free_port()}",
         f"--metrics-export-port={_free_port()}", f"--ray-client-server-port={client}",
         f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 180
        while subprocess.run([os.path.join(bin_dir, "ray"), "job", "list", "--address", url], env=env,
                             capture_output=True, timeout=60).returncode != 0:
            assert time.time() < deadline and head.poll() is None, "the head did not come up"
            time.sleep(2)
        job = tmp_path / "job.yaml"
        job.write_text(f"name: submitted\nstages:\n  - ingest_image_text: {{source: {demo_data['manifest']}, "
                       f"image_size: 64}}\n  - shard_webdataset: {{name: s, samples_per_shard: 64}}\n")
        out = tmp_path / "out"
        res = subprocess.run([os.path.join(bin_dir, "ray"), "job", "submit", "--address", url, "--",
                              "mmcurate", "run", str(job), "--output", str(out)], env=env, capture_output=True,
                             text=True, timeout=400)
        assert res.returncode == 0 and "succeeded" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]
        audit = ledger.audit(str(out))
        assert audit["ok"] and audit["inputs"] == demo_data["inputs"]

        by_client = tmp_path / "by-client"
        res = subprocess.run([os.path.join(bin_dir, "mmcurate"), "run", str(job), "--output", str(by_client),
                              "--ray-address", f"ray://127.0.0.1:{client}"], env=env, capture_output=True,
                             text=True, timeout=400)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        assert ledger.audit(str(by_client))["ok"]
        assert json.loads((by_client / "shards" / "manifest.json").read_text())["shards"] == \
            json.loads((out / "shards" / "manifest.json").read_text())["shards"]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
