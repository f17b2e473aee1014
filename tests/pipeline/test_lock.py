"""The run lock: one run per output directory, local and on S3; stale locks taken over."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipeline import fs, ledger, lock
from pipeline.lock import RunLock, RunLocked, current_holder
from tests.conftest import ROOT

MMCURATE = os.path.join(ROOT, ".venv", "bin", "mmcurate")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_holder_is_refused_with_the_holder_named(tmp_path):
    out = str(tmp_path / "run")
    with RunLock(out):
        with pytest.raises(RunLocked) as e:
            RunLock(out).acquire()
        msg = str(e.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and "started" in msg
        assert current_holder(out)["pid"] == os.getpid()
    assert current_holder(out) is None
    with RunLock(out):  # released: free again
        pass


def test_a_local_lock_whose_holder_died_is_taken_over(tmp_path):
    out = str(tmp_path / "run")
    # A holder killed by SIGKILL: its flock goes with it, its record stays behind.
    script = ("import sys, os, time; sys.path.insert(0, %r); from pipeline.lock import RunLock; "
              "RunLock(%r).acquire(); print('held', flush=True); time.sleep(60)") % (ROOT, out)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
        RunLock(out).acquire()
    proc.kill()
    proc.wait()
    assert json.load(open(os.path.join(out, "_LOCK")))["pid"] == proc.pid  # the stale record is still there
    with RunLock(out):
        assert json.load(open(os.path.join(out, "_LOCK")))["pid"] == os.getpid()


def test_s3_lock_is_exclusive_and_a_dead_holder_is_taken_over(s3_bucket, monkeypatch):
    out = f"{s3_bucket}/locks/run-a"
    first = RunLock(out).acquire()
    with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
        RunLock(out).acquire()
    assert current_holder(out)["pid"] == os.getpid()
    first.release()
    assert not fs.exists(f"{out}/_LOCK") and current_holder(out) is None

    # A lock left by a process of this host that is gone is stale at once.
    record = {**lock.holder_record(), "pid": _dead_pid(), "boot": None}
    fs.write_bytes(f"{out}/_LOCK", json.dumps(record).encode())
    assert current_holder(out) is None
    with RunLock(out):
        assert json.loads(fs.read_bytes(f"{out}/_LOCK"))["pid"] == os.getpid()

    # Another host's lock is live until it has not been renewed for STALE_AFTER seconds.
    fs.write_bytes(f"{out}/_LOCK", json.dumps({**record, "host": "elsewhere"}).encode())
    with pytest.raises(RunLocked, match="on host elsewhere"):
        RunLock(out).acquire()
    monkeypatch.setattr(lock, "STALE_AFTER", 0.0)
    time.sleep(1.1)  # S3 times have a resolution of one second
    with RunLock(out):
        pass


def test_s3_lock_two_at_once_one_wins(s3_bucket):
    out = f"{s3_bucket}/locks/race"
    won, lost, start = [], [], threading.Barrier(8)

    def contend():
        start.wait()
        try:
            won.append(RunLock(out).acquire())
        except RunLocked:
            lost.append(1)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    won[0].release()


def test_s3_heartbeat_notices_a_lost_lock(s3_bucket, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT", 0.2)
    out = f"{s3_bucket}/locks/lost"
    held = RunLock(out).acquire()
    fs.write_bytes(f"{out}/_LOCK", b'{"host": "thief", "pid": 1}')  # taken over behind our back
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            held.check()
        except RunLocked as e:
            assert "lost the run lock" in str(e)
            break
        time.sleep(0.1)
    else:
        pytest.fail("the heartbeat never noticed that the lock was replaced")
    held.release()
    assert fs.exists(f"{out}/_LOCK")  # the thief's lock is not ours to delete


JOB = """name: twice
stall_timeout: 300
stages:
  - ingest_image_text: {{source: {manifest}, image_size: 64, allow_private_networks: true, per_host_concurrency: 2}}
  - shard_webdataset: {{samples_per_shard: 30}}
"""


def test_two_mmcurate_runs_on_one_output(tmp_path):
    """The second run is refused within seconds; the first finishes; the audit balances."""
    from jobs.demo_data import jpeg, photos
    from PIL import Image
    from tests.servers import HostileServer

    good = jpeg(Image.fromarray(photos()["coffee"]))
    with HostileServer(images={"good.jpg": good}, latency=0.5) as srv:  # 40 URLs take the first run ~10 s
        manifest = tmp_path / "urls.jsonl"
        manifest.write_text("".join(json.dumps({"url": srv.url(f"/img/good.jpg?n={i}"), "caption": f"coffee {i}"})
                                    + "\n" for i in range(40)))
        job = tmp_path / "job.yaml"
        job.write_text(JOB.format(manifest=manifest))
        out = str(tmp_path / "run")
        first = subprocess.Popen([MMCURATE, "run", str(job), "--output", out],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _second_is_refused(first, job, out)
    result = ledger.audit(out)
    assert result["ok"] and result["finished"] and result["inputs"] == result["kept"] == 40


def _second_is_refused(first: subprocess.Popen, job, out: str) -> None:
    env = os.environ
    deadline = time.time() + 60
    while current_holder(out) is None:
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    t0 = time.time()
    second = subprocess.run([MMCURATE, "run", str(job), "--output", out], env=env, capture_output=True,
                            text=True, timeout=120)
    refused_in = time.time() - t0
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "is in use by" in second.stderr
    assert "Traceback" not in second.stderr
    assert refused_in < 15
    assert first.poll() is None, "the first run must still be going when the second is refused"
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]


def test_an_s3_lock_that_cannot_be_renewed_is_lost(s3_bucket, monkeypatch):
    """A holder whose renewals fail (expired credentials, no network) may be taken over
    after STALE_AFTER: it must stop before that, not commit on."""
    monkeypatch.setattr(lock, "HEARTBEAT", 3600.0)  # no renewal will come
    monkeypatch.setattr(lock, "STALE_AFTER", 3601.5)
    held = RunLock(f"{s3_bucket}/locks/unrenewed").acquire()
    held.check()
    time.sleep(2.0)
    with pytest.raises(RunLocked, match="not renewed"):
        held.check()
    held.release()
