"""The runner's guarantees: failing rows isolated, crashed workers survived, resume, reruns."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from pipeline import fs, ledger
from pipeline.runner import Runner, plan
from stages.ingest.image_text import IngestImageText
from stages.shard.webdataset import ShardWebDataset
from tests.conftest import ROOT
from tests.pipeline.helpers import ExitOn, ExitOnInActor, RaiseOn, RejectOdd, SlowPass, make_job


def _rejects(out: str) -> list[dict]:
    rd_rows = []
    for d in fs.list_files(os.path.join(out, "rejects"), recursive=True):
        if d.path.endswith(".parquet"):
            rd_rows += fs.read_parquet_dir(d.path.rsplit("/", 1)[0]).to_pylist()
    # read_parquet_dir reads a whole folder: de-duplicate by folder
    seen, rows = set(), []
    for r in rd_rows:
        if r["sample_id"] not in seen:
            seen.add(r["sample_id"])
            rows.append(r)
    return rows


def _poison_manifest(demo_data, tmp_path, poisoned: int = 1) -> str:
    """The demo manifest with `poisoned` captions containing the word 'poison'."""
    rows = [json.loads(line) for line in open(demo_data["manifest"], encoding="utf-8", errors="surrogateescape")]
    rows = [r for r in rows if r["photo"] != "broken"]
    for r in rows[5:5 + poisoned]:
        r["caption"] += " poison"
    path = tmp_path / "manifest.jsonl"
    with open(path, "w") as f:
        for r in rows:
            r["path"] = os.path.join(demo_data["dir"], r["path"])
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_plan_groups_row_stages_into_segments():
    stages = [IngestImageText(source="x"), RejectOdd(), RaiseOn(), SlowPass(), RejectOdd(), ShardWebDataset()]
    assert [s.name for s in plan(stages)] == [
        "00-listing", "01-ingest_image_text+test_reject_odd+test_raise_on", "02-test_slow_pass",
        "03-test_reject_odd", "04-shard_webdataset"]


def test_a_raising_batch_rejects_only_its_failing_rows(ray_session, demo_data, tmp_path):
    manifest = _poison_manifest(demo_data, tmp_path, poisoned=2)
    out = str(tmp_path / "run")
    summary = Runner(make_job(IngestImageText(source=manifest, allowed_roots=[demo_data["dir"]]), RaiseOn()), out, log=lambda *a: None).run()
    rejected = [r for r in _rejects(out)]
    assert sorted(r["reject_reason"] for r in rejected) == ["error:ValueError"] * 2
    assert all("poison" in r["caption"] and "test_raise_on" in r["reject_detail"] for r in rejected)
    assert summary["kept"] == summary["inputs"] - 2
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-ingest_image_text+test_raise_on"))
    assert kept.column("checked").to_pylist() == [True] * kept.num_rows  # the rest of each batch went on
    assert ledger.audit(out)["ok"]


@pytest.mark.parametrize("stage", [ExitOn, ExitOnInActor], ids=["task", "actor"])
def test_a_row_that_kills_its_worker_is_the_only_reject(ray_session, demo_data, tmp_path, stage):
    manifest = _poison_manifest(demo_data, tmp_path, poisoned=1)
    out = str(tmp_path / "run")
    summary = Runner(make_job(IngestImageText(source=manifest, allowed_roots=[demo_data["dir"]]), stage()), out, log=lambda *a: None).run()
    (rejected,) = _rejects(out)
    assert rejected["reject_reason"] == "error:WorkerDied"
    assert "poison" in rejected["caption"]
    assert summary["kept"] == summary["inputs"] - 1
    assert ledger.audit(out)["ok"]
    assert not fs.exists(os.path.join(out, "_journal"))


def _files(out: str, segment: str) -> dict[str, tuple[int, int]]:
    d = os.path.join(out, "stages", segment)
    return {f: (os.stat(os.path.join(d, f)).st_ino, os.stat(os.path.join(d, f)).st_mtime_ns) for f in os.listdir(d)}


def test_a_changed_parameter_reruns_exactly_what_it_affects(ray_session, demo_data, tmp_path):
    out = str(tmp_path / "run")

    def run(quality=90, per_shard=50):
        job = make_job(IngestImageText(source=demo_data["manifest"], quality=quality, image_size=128),
                       SlowPass(), ShardWebDataset(samples_per_shard=per_shard))
        s = Runner(job, out, log=lambda *a: None).run()
        return [seg["skipped"] for seg in s["segments"]], s

    skipped, first = run()
    assert skipped == [False, False, False, False]
    before = {seg: _files(out, seg) for seg in ("00-listing", "01-ingest_image_text", "02-test_slow_pass")}
    assert run()[0] == [True, True, True, True]  # unchanged: nothing redone
    skipped, second = run(per_shard=20)  # only the shards depend on this
    assert skipped == [True, True, True, False]
    assert {seg: _files(out, seg) for seg in before} == before
    assert second["shards"] > first["shards"]
    skipped, _ = run(quality=50)  # ingest and everything after it
    assert skipped == [True, False, False, False]
    assert _files(out, "00-listing") == before["00-listing"]
    assert ledger.audit(out)["ok"]


KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from pipeline.runner import Runner
from stages.ingest.image_text import IngestImageText
from stages.shard.webdataset import ShardWebDataset
from tests.pipeline.helpers import SlowPass, make_job
job = make_job(IngestImageText(source={manifest!r}, image_size=128), SlowPass(seconds={sleep}),
               ShardWebDataset(samples_per_shard=40))
Runner(job, {out!r}).run()
"""


def _ray_processes(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and int(pid) != os.getpid():
                pids.append(int(pid))
    return pids


def test_sigkill_after_a_commit_then_rerun(demo_data, tmp_path, ray_session):
    out = str(tmp_path / "run")
    ray_tmp = tempfile.mkdtemp(prefix="mk", dir="/tmp")  # short: Ray's socket paths are limited
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT.format(root=ROOT, manifest=demo_data["manifest"], out=out, sleep=120))
    env = {**os.environ, "MMCURATE_RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = os.path.join(out, "stages", "01-ingest_image_text", "_SUCCESS")
    try:
        deadline = time.time() + 120
        while not os.path.exists(committed):
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.time() < deadline, "segment 01 never committed"
            time.sleep(0.2)
        time.sleep(1.0)  # now inside the slow global segment
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        for pid in _ray_processes(ray_tmp):  # the killed job's own Ray (raylet, gcs, workers)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not os.path.exists(os.path.join(out, "stages", "02-test_slow_pass", "_SUCCESS"))
    before = {seg: _files(out, seg) for seg in ("00-listing", "01-ingest_image_text")}
    unfinished = ledger.audit(out)  # the kept rows of 01 balance, but the run is not done
    assert not unfinished["ok"] and not unfinished["finished"]
    assert unfinished["unfinished_segments"] == ["02-test_slow_pass", "03-shard_webdataset"]
    assert "segment 02-test_slow_pass is not committed" in unfinished["problems"][0]

    # Rerun without the sleep (segment 02 never committed, so it is redone either way).
    job = make_job(IngestImageText(source=demo_data["manifest"], image_size=128), SlowPass(seconds=0),
                   ShardWebDataset(samples_per_shard=40))
    summary = Runner(job, out, log=lambda *a: None).run()
    assert [s["skipped"] for s in summary["segments"]] == [True, True, False, False]
    assert {seg: _files(out, seg) for seg in before} == before  # committed files not rewritten
    result = ledger.audit(out)
    assert result["ok"] and result["duplicated"] == 0 and result["missing"] == 0
    assert result["inputs"] == demo_data["inputs"]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_stateful_stage_runs_as_an_actor_pool(ray_session, tmp_path):
    from pipeline.table import IngestTable
    from tests.pipeline.helpers import WorkerTag

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(400)))
    out = str(tmp_path / "run")
    assert WorkerTag().stateful
    Runner(make_job(IngestTable(source=str(rows)), WorkerTag()), out, log=lambda *a: None).run()
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-test_worker_tag"))
    assert kept.num_rows == 400
    pids = set(kept.column("worker_pid").to_pylist())
    assert len(pids) == 2  # concurrency=2: two long-lived actors shared the work
    assert set(kept.column("setups").to_pylist()) == {1}  # setup() once per actor


def test_a_stage_that_cannot_start_stops_the_job_with_one_clear_error(ray_session, tmp_path):
    """A model that does not load fails in the actor's constructor; the driver says which
    stage, in which segment, and why, and the CLI turns it into `mmcurate: error:`."""
    from pipeline.stage import StageSetupFailed
    from pipeline.table import IngestTable
    from tests.pipeline.helpers import NoModel

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(20)))
    with pytest.raises(StageSetupFailed) as e:
        Runner(make_job(IngestTable(source=str(rows)), NoModel()), str(tmp_path / "run"), log=lambda *a: None).run()
    assert str(e.value) == ("segment 01-test_no_model: test_no_model could not start on a worker: OSError: "
                            "weights file /models/x.safetensors is truncated")


def test_cli_joins_an_existing_cluster(ray_session, demo_data, tmp_path):
    """--ray-address: a separate process runs its job on this test's Ray cluster."""
    address = ray_session.get_runtime_context().gcs_address
    job = tmp_path / "job.yaml"
    job.write_text(f"name: joined\nstages:\n  - ingest_image_text: {{source: {demo_data['manifest']}, image_size: 64}}\n"
                   "  - shard_webdataset: {samples_per_shard: 30}\n")
    out = str(tmp_path / "run")
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "mmcurate"), "run", str(job), "--output", out,
                          "--ray-address", address], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Started a local Ray instance" not in res.stderr  # it joined instead of starting its own
    assert ledger.audit(out)["ok"]


def test_a_stage_that_duplicates_rows_cannot_break_the_ledger(ray_session, tmp_path):
    from pipeline.table import IngestTable
    from tests.pipeline.helpers import Duplicate

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(10)))
    out = str(tmp_path / "run")
    Runner(make_job(IngestTable(source=str(rows)), Duplicate()), out, log=lambda *a: None).run()
    # Row by row each batch is a single row, which the stage returns intact.
    result = ledger.audit(out)
    assert result["ok"] and result["kept"] == 10


def test_leftover_journal_markers_are_not_taken_for_crashes(ray_session, demo_data, tmp_path):
    from pipeline.runner import batch_key

    out = str(tmp_path / "run")
    job = make_job(IngestImageText(source=demo_data["manifest"], image_size=64))
    Runner(job, out, log=lambda *a: None).run()
    # An interrupted earlier attempt left markers for the first batch of the first part and
    # for its first row: exactly what a crash in that batch leaves behind.
    from pipeline.runner import slices

    seg = "01-ingest_image_text"
    # The first batch of the first task, as the runner cuts it (4 CPUs here, 1 per task).
    part, start, rows = slices(sorted(str(p) for p in (tmp_path / "run" / "stages" / "00-listing").glob("*.parquet")),
                               4)[0]
    first_batch = fs.read_parquet(part).slice(start, min(rows, IngestImageText.resources.batch_size))
    rerun = IngestImageText(source=demo_data["manifest"], image_size=65)  # forces a rerun
    marker = os.path.join(out, "_journal", seg, f"{rerun.fingerprint()}-{batch_key(first_batch)}")
    fs.write_bytes(marker, b"")
    fs.write_bytes(f"{marker}-{first_batch.column('sample_id')[0].as_py()}", b"")
    job = make_job(rerun)
    Runner(job, out, log=lambda *a: None).run()
    assert "error:WorkerDied" not in json.dumps(ledger.audit(out)["rejected_by_stage"])


# -- hardening: retries, corrupt segments, inputs that changed, stalls, resources ----------------
def _table(n: int, rejected: set[int] = frozenset()):
    import pyarrow as pa

    rejects = [ledger.reject("odd", "") if i in rejected else None for i in range(n)]
    t = pa.table({"sample_id": [f"id{i}" for i in range(n)], "n": list(range(n))})
    return ledger.stamp_stage(ledger.with_rejects(t, rejects), "test")


def test_a_retried_block_replaces_what_its_first_attempt_wrote(tmp_path):
    from pipeline.rundir import SegmentFiles
    from pipeline.runner import SegmentWriter

    kept, rejects = str(tmp_path / "kept"), str(tmp_path / "rejects")
    writer = SegmentWriter(SegmentFiles(kept, rejects, str(tmp_path / "expanded")))
    writer(_table(6, {1, 3}))  # the first attempt: a download timed out twice
    writer(_table(6))  # the retry rejects nothing
    assert (fs.parquet_rows(kept), fs.parquet_rows(rejects)) == (6, 0)
    writer(_table(6, set(range(6))))  # and the other way round
    assert (fs.parquet_rows(kept), fs.parquet_rows(rejects)) == (0, 6)


def test_a_segment_whose_files_disagree_with_its_marker_is_redone(ray_session, demo_data, tmp_path):
    out = str(tmp_path / "run")

    def run():
        job = make_job(IngestImageText(source=demo_data["manifest"], image_size=64), SlowPass())
        return [s["skipped"] for s in Runner(job, out, log=lambda *a: None).run()["segments"]]

    assert run() == [False, False, False]
    seg = os.path.join(out, "stages", "01-ingest_image_text")
    os.remove(os.path.join(seg, sorted(f for f in os.listdir(seg) if f.endswith(".parquet"))[0]))
    # The fingerprint matched, the rows did not: 01 is redone; it gives the same rows as
    # before, so 02 (whose own files are whole) stands.
    assert run() == [True, False, True]
    assert fs.parquet_rows(seg) + fs.parquet_rows(os.path.join(out, "rejects", "01-ingest_image_text")) == \
        demo_data["inputs"]
    assert ledger.audit(out)["ok"]


def test_a_commit_counts_the_rows_on_disk(tmp_path):
    from pipeline.rundir import RunDir, SegmentMismatch

    rd = RunDir(str(tmp_path / "run"))
    tmp = rd.tmp_segment("01-x")
    fs.write_parquet(fs.join(tmp.kept, "part-a.parquet"), _table(3).drop_columns(["reject"]))
    with pytest.raises(SegmentMismatch, match="hold 3 kept, 0 rejected and 0 expanded.*reported 5 kept"):
        rd.commit("01-x", tmp, {"kept": 5, "rejected": 0})
    assert rd.marker("01-x") is None
    rd.commit("01-x", tmp, {"kept": 3, "rejected": 0})
    assert rd.marker("01-x") == {"kept": 3, "rejected": 0}


def test_an_image_edited_in_place_reruns_what_read_it(ray_session, demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data["dir"], data)
    out = str(tmp_path / "run")

    def run():
        job = make_job(IngestImageText(source=str(data / "manifest.jsonl"), image_size=64), SlowPass())
        return [s["skipped"] for s in Runner(job, out, log=lambda *a: None).run()["segments"]]

    assert run() == [False, False, False]
    assert run() == [True, True, True]
    image = data / "images" / "coffee_001.jpg"
    image.write_bytes(image.read_bytes()[:-100])  # same name, other bytes
    assert run() == [False, False, False]


def test_a_grown_against_index_reruns_the_dedup_segment_only(ray_session, tmp_path):
    from stages.dedup.minhash import DedupMinhash
    from pipeline.table import IngestTable

    def docs(path, n):
        path.write_text("".join(json.dumps({"text": f"document number {i} " + "word " * 30 + str(i)}) + "\n"
                                for i in range(n)))
        return str(path)

    earlier = str(tmp_path / "earlier")
    Runner(make_job(IngestTable(source=docs(tmp_path / "a.jsonl", 20)), DedupMinhash(text_column="text")), earlier,
           log=lambda *a: None).run()
    new = docs(tmp_path / "b.jsonl", 10)
    out = str(tmp_path / "run")

    def run():
        job = make_job(IngestTable(source=new), DedupMinhash(text_column="text", against=[f"{earlier}/index/dedup_minhash"]))
        return [s["skipped"] for s in Runner(job, out, log=lambda *a: None).run()["segments"]]

    assert run() == [False, False]
    assert run() == [True, True]
    Runner(make_job(IngestTable(source=docs(tmp_path / "a.jsonl", 40)), DedupMinhash(text_column="text")), earlier,
           log=lambda *a: None).run()  # the earlier run grew, and so did its index
    assert run() == [True, False]


def test_a_stuck_stage_ends_its_segment_with_a_clear_error(ray_session, demo_data, tmp_path):
    from pipeline.watchdog import SegmentStalled
    from tests.pipeline.helpers import SleepOn, SleepOnInActor

    manifest = _poison_manifest(demo_data, tmp_path, poisoned=0)
    rows = [json.loads(line) for line in open(manifest)]
    rows[3]["caption"] += " sleep"
    with open(manifest, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    for stage in (SleepOn, SleepOnInActor):
        job = make_job(IngestImageText(source=manifest, allowed_roots=[demo_data["dir"]], image_size=64), stage())
        job.stall_timeout = 3
        t0 = time.time()
        with pytest.raises(SegmentStalled, match=r"segment 01-.*no progress for 3s"):
            Runner(job, str(tmp_path / f"run-{stage.name}"), log=lambda *a: None).run()
        assert time.time() - t0 < 60


def test_a_segment_that_cannot_fit_the_cluster_is_refused_before_it_starts(ray_session):
    from pipeline.runner import NotEnoughResources, Segment, check_resources
    from tests.pipeline.helpers import WorkerTag

    big = WorkerTag()
    big.resources.num_cpus = 2.0  # a pool of 2 actors of 2 CPUs, beside the tasks that feed it
    with pytest.raises(NotEnoughResources, match=r"segment 04-test_worker_tag needs 4.25 CPUs at once.*"
                                                 r"test_worker_tag 2 x 2 CPU.*the largest node has 4"):
        check_resources(Segment(4, "row", [big]))
    check_resources(Segment(4, "row", [WorkerTag(), RejectOdd()]))  # 2 x 0.5 + 0.5: fits


ONE_CPU_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from pipeline.runner import Runner
from pipeline.table import IngestTable
from tests.pipeline.helpers import RejectOdd, WorkerTag, make_job
pool = WorkerTag()
pool.resources.concurrency = 1
job = make_job(IngestTable(source={rows!r}), pool, RejectOdd(num_cpus={cpus}))
job.ray.num_cpus, job.stall_timeout = 1, 60
try:
    print(Runner(job, {out!r}, log=lambda *a: None).run()["kept"])
except Exception as e:
    print(type(e).__name__, e)
"""


@pytest.mark.parametrize("cpus", [1.0, 0.25])
def test_a_one_cpu_cluster_gets_an_error_or_a_finished_run_never_a_hang(tmp_path, cpus):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(100)))
    script = tmp_path / "job.py"
    script.write_text(ONE_CPU_SCRIPT.format(root=ROOT, rows=str(rows), out=str(tmp_path / "run"), cpus=cpus))
    ray_tmp = tempfile.mkdtemp(prefix="mk", dir="/tmp")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "MMCURATE_RAY_TMPDIR": ray_tmp})
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if cpus == 1.0:  # the actor pool holds 0.5, and a task of the row stage needs 1 more
        assert "NotEnoughResources segment 01-test_worker_tag+test_reject_odd needs 1.5 CPUs at once" in res.stdout, \
            res.stdout + res.stderr[-2000:]
        assert "the largest node has 1" in res.stdout
    else:
        assert res.stdout.strip().splitlines()[-1] == "50", res.stdout + res.stderr[-2000:]


def test_reject_details_carry_no_bytes_and_undeclared_media_changes_are_errors(ray_session, demo_data, tmp_path):
    from tests.pipeline.helpers import ChangeImageQuietly, LeakBytes

    for stage, reason in ((LeakBytes(), "error:ValueError"), (ChangeImageQuietly(), "error:RuntimeError")):
        out = str(tmp_path / stage.name)
        Runner(make_job(IngestImageText(source=demo_data["manifest"], image_size=48), stage), out,
               log=lambda *a: None).run()
        rows = [r for r in _rejects(out) if r["reject_stage"] == stage.name]
        assert rows and {r["reject_reason"] for r in rows} == {reason}
        assert all("b'" not in r["reject_detail"] for r in rows)
    assert "without declaring it in adds()" in rows[0]["reject_detail"]
