"""The code demo job end to end on embedded Ray: real repositories and a hostile one; no
hook runs, every hostile file has its reason, licences are found, secrets never reach the
shards, functions come with their documentation, the checker passes and the audit balances."""
from __future__ import annotations

import glob
import json
import os
import tarfile

import pytest

from pipeline import fs, ledger
from pipeline.job import load_job
from pipeline.runner import Runner
from tests.conftest import ROOT
from tests.shards import check_shards


@pytest.fixture(scope="module")
def code_demo(ray_session, tmp_path_factory):
    from jobs.demo_code_data import make_code_demo

    data = str(tmp_path_factory.mktemp("demo-code-data"))
    info = make_code_demo(data)
    job = load_job(os.path.join(ROOT, "jobs", "demo_code.yaml"))
    job.stages[0].params.source = data
    out = str(tmp_path_factory.mktemp("demo-code-run"))
    summary = Runner(job, out, log=lambda *a: None).run()
    return out, summary, info


def test_the_code_demo(code_demo):
    out, summary, info = code_demo
    assert not os.path.exists(info["marker"])  # no hook, filter or fsmonitor of the hostile repository ran
    audit = ledger.audit(out)
    assert audit["ok"] and audit["inputs"] == info["repositories"], audit
    found = {}
    for d in sorted(os.listdir(os.path.join(out, "rejects"))):
        t = fs.read_parquet_dir(os.path.join(out, "rejects", d), ["source_uri", "path", "reject_reason"])
        for uri, path, reason in zip(*(t.column(c).to_pylist() for c in t.column_names)) if t is not None else ():
            if "/hostile#" in uri:
                found[path] = reason
            elif "/toolbox#" in uri and path.startswith("vendor/"):
                assert reason == "vendored"
    assert {p: found.get(p) for p in info["hostile"]} == info["hostile"]
    check_shards(os.path.join(out, "shards"))
    members = {}
    for tar in glob.glob(os.path.join(out, "shards", "*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                members[m.name] = tf.extractfile(m).read()
    everything = b"".join(members.values())
    assert b"AKIAIOSFODNN7EXAMPLE" not in everything and b"jane.doe@example.org" not in everything
    samples = [json.loads(v) for k, v in members.items() if k.endswith(".json")]
    licences = {s["repo"].rsplit("/", 1)[1]: s["license"] for s in samples if s["kind"] == "file"}
    assert licences["idna"] == "BSD-3-Clause" and licences["click"] == "BSD-3-Clause"
    assert licences["toolbox"] == "MIT" and licences["packaging"] == "Apache-2.0 OR BSD-2-Clause"
    documented = [s for s in samples if s["kind"] in ("function", "method") and s.get("parent_id")]
    texts = {k.split(".")[0] for k in members if k.endswith(".txt")}
    assert len(documented) > 300 and len(texts) > 200
