"""Samples that fan out: children with lineage, the ledger over trees, reruns and crashes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from pipeline import fs, ledger
from pipeline.runner import Runner
from pipeline.table import IngestTable
from stages.shard.webdataset import ShardWebDataset
from tests.conftest import ROOT
from tests.pipeline.helpers import SlowPass, Split, make_job
from tests.pipeline.test_runner import _ray_processes


def _rows(path, n: int = 20) -> str:
    texts = {3: "raise", 5: "die"}
    path.write_text("".join(json.dumps({"n": i, "text": texts.get(i, f"row {i}")}) + "\n" for i in range(n)))
    return str(path)


def _job(source: str, sleep: float = 0.0):
    return make_job(IngestTable(source=source), Split(parts=2), SlowPass(seconds=sleep), Split(parts=3),
                    ShardWebDataset(samples_per_shard=40))


def _manifest(out: str) -> list:
    return json.loads(fs.read_bytes(os.path.join(out, "shards", "manifest.json")))["shards"]


def test_children_trees_balance_and_ids_are_stable(ray_session, tmp_path):
    source = _rows(tmp_path / "rows.jsonl")
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    summary = Runner(_job(source), first, log=lambda *a: None).run()
    result = ledger.audit(first)
    assert result["ok"], result
    # 20 inputs: one raises, one kills its worker; 18 become 2 children each, and those 3 each.
    assert (result["inputs"], result["rejected"], result["expanded"], result["derived"], result["kept"]) == \
        (20, 2, 18 + 36, 36 + 108, 108)
    assert result["rejected_by_stage"] == {"test_split": {"error:ValueError": 1, "error:WorkerDied": 1}}
    segments = {s["segment"]: s for s in summary["segments"]}
    assert (segments["01-test_split"]["expanded"], segments["01-test_split"]["derived"]) == (18, 36)
    kept = fs.read_parquet_dir(os.path.join(first, "shards"), ["__key__", "parent_id"])
    expanded = fs.read_parquet_dir(os.path.join(first, "expanded", "03-test_split"), ["sample_id", "parent_id", "children"])
    assert set(kept.column("parent_id").to_pylist()) == set(expanded.column("sample_id").to_pylist())
    assert set(expanded.column("children").to_pylist()) == {3}
    Runner(_job(source), second, log=lambda *a: None).run()
    assert _manifest(first) == _manifest(second)  # same ids, same shards, down to the bytes


def test_an_audit_notices_a_lost_child(ray_session, tmp_path):
    out = str(tmp_path / "run")
    Runner(make_job(IngestTable(source=_rows(tmp_path / "rows.jsonl", 6)), Split(parts=2)), out,
           log=lambda *a: None).run()
    seg = os.path.join(out, "stages", "01-test_split")
    kept = fs.read_parquet_dir(seg)
    for f in os.listdir(seg):
        if f.endswith(".parquet"):
            os.remove(os.path.join(seg, f))
    fs.write_parquet(os.path.join(seg, "part-x.parquet"), kept.slice(1))  # one child gone
    result = ledger.audit(out)
    assert not result["ok"] and result["missing"] == 1


KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from pipeline.runner import Runner
from tests.pipeline.test_lineage import _job
Runner(_job({source!r}, sleep=120), {out!r}).run()
"""


def test_kill_mid_run_then_rerun_gives_identical_shards(ray_session, tmp_path):
    source = _rows(tmp_path / "rows.jsonl")
    clean = str(tmp_path / "clean")
    Runner(_job(source), clean, log=lambda *a: None).run()
    out = str(tmp_path / "run")
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT.format(root=ROOT, source=source, out=out))
    ray_tmp = tempfile.mkdtemp(prefix="mk", dir="/tmp")
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "MMCURATE_RAY_TMPDIR": ray_tmp},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(out, "stages", "01-test_split", "_SUCCESS")):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        for pid in _ray_processes(ray_tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not ledger.audit(out)["ok"]
    summary = Runner(_job(source), out, log=lambda *a: None).run()
    assert [s["skipped"] for s in summary["segments"]][:2] == [True, True]
    assert ledger.audit(out)["ok"]
    assert _manifest(out) == _manifest(clean)


def test_children_that_carry_media_are_stored_and_sharded(ray_session, demo_data, tmp_path):
    from pipeline import media
    from stages.ingest.image_text import IngestImageText
    from tests.pipeline.helpers import SplitImage

    out = str(tmp_path / "run")
    Runner(make_job(IngestImageText(source=demo_data["manifest"], image_size=48), SplitImage(),
                    ShardWebDataset(samples_per_shard=50)), out, log=lambda *a: None).run()
    result = ledger.audit(out)
    assert result["ok"], result
    good = result["inputs"] - sum(result["rejected_by_stage"].get("ingest_image_text", {}).values())
    assert result["kept"] == 2 * good and result["expanded"] == good
    assert "test_split_image" not in result["rejected_by_stage"]
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-ingest_image_text+test_split_image"))
    assert media.is_ref(kept.schema.field("image").type)
    assert all(media.read(r)[:2] == b"\xff\xd8" for r in kept.column("image").to_pylist())
