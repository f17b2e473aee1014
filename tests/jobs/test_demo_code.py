"""The code demo job end to end on embedded Ray: real repositories and a hostile one; no
hook runs, every hostile file has its reason, licences are found, secrets never reach the
shards, functions come with their documentation, the checker passes and the audit balances."""
from __future__ import annotations

import glob
import json
import os
import re

import pytest

from pipeline import fs, ledger
from pipeline.job import load_job
from pipeline.runner import Runner
from tests.conftest import ROOT
from tests.shards import check_shards, tar_members


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
    members = tar_members(os.path.join(out, "shards"))
    everything = b"".join(members.values())
    assert b"AKIAIOSFODNN7EXAMPLE" not in everything and b"jane.doe@example.org" not in everything
    samples = [json.loads(v) for k, v in members.items() if k.endswith(".json")]
    licences = {s["repo"].rsplit("/", 1)[1]: s["license"] for s in samples if s["kind"] == "file"}
    assert licences["idna"] == "BSD-3-Clause" and licences["click"] == "BSD-3-Clause"
    assert licences["toolbox"] == "MIT" and licences["packaging"] == "Apache-2.0 OR BSD-2-Clause"
    documented = [s for s in samples if s["kind"] in ("function", "method") and s.get("parent_id")]
    texts = {k.split(".")[0] for k in members if k.endswith(".txt") and k.count(".") == 1}  # not <key>.src.txt
    assert len(documented) > 300 and len(texts) > 200
    # embeddings: the docstring of every documented item, the code of every definition; the
    # intermediate code_without_docs is left out of the shards
    doc_vectors = {k.split(".")[0] for k in members if k.endswith(".st_docstring_emb.npy")}
    code_vectors = {k.split(".")[0] for k in members if k.endswith(".st_code_without_docs_emb.npy")}
    assert doc_vectors == texts and texts <= code_vectors
    assert all("code_without_docs" not in s for s in samples)


def test_code_is_deduplicated_as_files_and_as_functions(code_demo):
    out, _, _ = code_demo
    duplicates = {}  # segment -> kinds of the duplicates it removed (None: a file before extraction)
    for d in sorted(os.listdir(os.path.join(out, "rejects"))):
        t = fs.read_parquet_dir(os.path.join(out, "rejects", d))
        if t is not None:
            kinds = t.column("kind").to_pylist() if "kind" in t.column_names else [None] * t.num_rows
            duplicates[d] = [k for k, r in zip(kinds, t.column("reject_reason").to_pylist()) if r == "duplicate"]
    files = duplicates["02-dedup_exact"] + duplicates["03-dedup_minhash"]
    functions = [k for k in duplicates["05-dedup_minhash"] if k in ("function", "method", "class")]
    assert files and len(functions) >= 20, duplicates  # click and packaging share helpers; vendored copies
    assert os.path.isdir(os.path.join(out, "index", "dedup_minhash")) and \
        os.path.isdir(os.path.join(out, "index", "dedup_minhash_functions"))


def test_the_trainer_learns_docstring_code_retrieval(code_demo, tmp_path):
    from jobs.train import TrainConfig, train

    out, _, _ = code_demo
    shards = sorted(glob.glob(os.path.join(out, "shards", "*.tar")))
    result = train(TrainConfig(shards=shards, output=str(tmp_path / "t"),
                               modalities=["st_code_without_docs_emb", "st_docstring_emb"], batch_size=64,
                               steps=150, checkpoint_every=0))
    pair = result["retrieval"]["st_code_without_docs_emb->st_docstring_emb"]
    assert pair["eval_samples"] >= 50 and pair["r@1"] >= 10 * pair["chance_r@1"], pair


def test_the_code_report(code_demo):
    from pipeline import report

    out, _, _ = code_demo
    page = open(report.write(out), encoding="utf-8").read()
    built = json.load(open(os.path.join(out, "report", "report.json")))
    languages = next(s for s in built["sections"] if s["title"] == "Languages (kept)")["data"]
    assert languages["files"]["Python"] >= 40 and languages["definitions"]["Python"] >= 1000
    licences = next(s for s in built["sections"] if s["title"] == "Licences (kept)")["data"]
    assert licences["files"]["BSD-3-Clause"] >= 20 and licences["definitions"]["Apache-2.0 OR BSD-2-Clause"] >= 100
    assert page.count("<pre>") == 12 and "Code: 12 kept files and documented definitions" in page
    assert re.search(r"filter_code: [^<]*vendored = \d+", page)  # the funnel names every filter's reasons
