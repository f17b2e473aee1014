"""`mmcurate refresh`: releases of a growing dataset. Only new inputs are read, duplicates of
earlier releases are removed against their persisted indexes, shards are numbered on and
earlier ones never change, and a refresh that dies before publishing leaves every release
and `latest` as they were."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline import fs, ledger, release
from pipeline.job import parse_job
from pipeline.lock import RunLock, RunLocked


def _image(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _add(folder, name: str, data: bytes, caption: str) -> None:
    (folder / f"{name}.png").write_bytes(data)
    (folder / f"{name}.txt").write_text(caption)


def _job(folder) -> object:
    return parse_job({"name": "grow", "stages": [
        {"ingest_image_text": {"source": str(folder), "image_size": 32}},
        {"dedup_exact": {"key": "content"}},
        {"shard_webdataset": {"name": "grow", "samples_per_shard": 4}}]})


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _refresh(folder, dataset):
    return release.refresh(_job(folder), str(dataset), log=lambda *a: None)


def test_three_releases_grow_and_old_shards_stay(ray_session, tmp_path):
    inputs, dataset = tmp_path / "inputs", tmp_path / "dataset"
    inputs.mkdir()
    for i in range(8):
        _add(inputs, f"a{i}", _image(i), f"a picture number {i}")
    first = _refresh(inputs, dataset)
    assert first["version"] == "v0001" and first["samples"] == 8 and release.latest(str(dataset)) == "v0001"
    assert first["shards"] == ["shards/grow-000000.tar", "shards/grow-000001.tar"]
    old = {s: _sha(os.path.join(dataset, s)) for s in first["shards"]}

    # release 2: two new pictures and two byte copies of published ones under new names
    for i in (8, 9):
        _add(inputs, f"b{i}", _image(i), f"a new picture {i}")
    _add(inputs, "copy-of-a1", _image(1), "the same picture again")
    _add(inputs, "copy-of-a2", _image(2), "and another copy")
    second = _refresh(inputs, dataset)
    diff = second["diff"]
    assert (diff["inputs_skipped"], diff["inputs_new"], diff["samples_added"]) == (8, 4, 2)
    assert diff["shards_added"] == ["shards/grow-000002.tar"] and second["samples"] == 10
    work = os.path.join(dataset, "work", "v0002")
    assert ledger.audit(work)["ok"]
    dupes = fs.read_parquet_dir(os.path.join(work, "rejects", "02-dedup_exact"), ["source_uri", "reject_reason"])
    assert sorted(os.path.basename(u) for u in dupes.column("source_uri").to_pylist()) == ["copy-of-a1.png",
                                                                                         "copy-of-a2.png"]
    manifest = json.load(open(os.path.join(dataset, "releases", "v0002", "manifest.json")))
    assert [s["name"] for s in manifest["shards"]] == first["shards"] + ["shards/grow-000002.tar"]
    assert {s: _sha(os.path.join(dataset, s)) for s in first["shards"]} == old  # byte-identical
    for entry in manifest["shards"]:  # the manifest tells the truth about every file it lists
        assert _sha(os.path.join(dataset, entry["name"])) == entry["sha256"]

    # release 3: nothing new: nothing read, nothing added; every release stays readable
    third = _refresh(inputs, dataset)
    assert third["diff"]["inputs_skipped"] == 12 and third["diff"]["samples_added"] == 0
    assert release.shard_urls(f"{dataset}@v0001") == [os.path.join(dataset, s) for s in first["shards"]]
    assert len(release.shard_urls(str(dataset))) == 3 and release.latest(str(dataset)) == "v0003"
    samples = fs.read_parquet(os.path.join(dataset, "releases", "v0003", "samples.parquet"))
    assert samples.num_rows == 10 and len(set(samples.column("sample_id").to_pylist())) == 10

    # readers take the dataset (its latest release) or one release
    from jobs import read_shards
    from jobs.train import expand

    assert read_shards.main(str(dataset)) == 0 and read_shards.main(f"{dataset}@v0001") == 0
    assert expand(f"{dataset}@v0001") == [os.path.join(dataset, s) for s in first["shards"]]
    assert len(expand(str(dataset))) == 3
    with pytest.raises(ValueError, match="no release 'v0009'"):
        expand(f"{dataset}@v0009")


def test_a_refresh_that_dies_before_publishing_changes_nothing(ray_session, tmp_path, monkeypatch):
    inputs, dataset = tmp_path / "inputs", tmp_path / "dataset"
    inputs.mkdir()
    for i in range(5):
        _add(inputs, f"a{i}", _image(100 + i), f"picture {i}")
    _refresh(inputs, dataset)
    before = sorted(os.listdir(dataset / "releases"))
    for i in range(5, 9):
        _add(inputs, f"a{i}", _image(100 + i), f"picture {i}")

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(release, "_copy_tree", killed)  # after the shards are copied, before the release
    with pytest.raises(KeyboardInterrupt):
        _refresh(inputs, dataset)
    assert release.latest(str(dataset)) == "v0001" and sorted(os.listdir(dataset / "releases")) == before
    monkeypatch.undo()
    second = _refresh(inputs, dataset)  # the rerun finishes the same release, from the same work
    assert second["version"] == "v0002" and second["diff"]["samples_added"] == 4 and second["samples"] == 9
    assert release.latest(str(dataset)) == "v0002"


def test_one_refresh_at_a_time_and_a_job_must_publish_shards(ray_session, tmp_path):
    inputs, dataset = tmp_path / "inputs", tmp_path / "dataset"
    inputs.mkdir()
    _add(inputs, "a", _image(7), "one")
    os.makedirs(dataset)
    with RunLock(str(dataset)):
        with pytest.raises(RunLocked):
            _refresh(inputs, dataset)
    no_shards = parse_job({"name": "x", "stages": [{"ingest_image_text": {"source": str(inputs)}}]})
    with pytest.raises(Exception, match="must end with shard_webdataset"):
        release.refresh(no_shards, str(dataset), log=lambda *a: None)
    shutil.rmtree(dataset)


def _members(path: str) -> set[str]:
    import tarfile

    with tarfile.open(path) as tf:
        return {m.name.split(".", 1)[0] for m in tf.getmembers()}


def test_takedowns_leave_and_never_come_back(ray_session, tmp_path):
    from pipeline import cli
    from tests.shards import check_shards

    inputs, dataset = tmp_path / "inputs", tmp_path / "dataset"
    inputs.mkdir()
    for i in range(8):
        _add(inputs, f"a{i}", _image(200 + i), f"picture {i}")
    first = _refresh(inputs, dataset)
    samples = fs.read_parquet(os.path.join(dataset, "releases", "v0001", "samples.parquet")).to_pylist()
    by_source = {os.path.basename(r["source_uri"]): r for r in samples}
    target = by_source["a3.png"]
    (tmp_path / "ids.txt").write_text(f"# a complaint\n{by_source['a5.png']['sample_id']}\n")
    (tmp_path / "sources.txt").write_text(target["source_uri"] + "\n")
    assert cli.main(["takedown", str(dataset), "--ids", str(tmp_path / "ids.txt"),
                     "--sources", str(tmp_path / "sources.txt")]) == 0
    # the source offers a3 again, and a copy of a5 comes under a new name, with one new picture
    _add(inputs, "a3", _image(203), "picture 3, re-captioned")
    _add(inputs, "copy-of-a5", _image(205), "a copy")
    _add(inputs, "new", _image(299), "a new one")
    second = _refresh(inputs, dataset)
    gone = {target["sample_id"], by_source["a5.png"]["sample_id"]}
    published = fs.read_parquet(os.path.join(dataset, "releases", "v0002", "samples.parquet"))
    assert not gone & set(published.column("sample_id").to_pylist()) and published.num_rows == 8 - 2 + 1
    assert second["diff"]["samples_removed"] == 2 and second["diff"]["samples_added"] == 1
    for shard in release.shard_urls(str(dataset)):
        assert not gone & _members(shard)
    kept_old = [s for s in first["shards"] if s in second["shards"]]
    replaced = second["diff"]["shards_replaced"]
    assert set(replaced) | set(kept_old) == set(first["shards"])  # only the shards that held them were replaced
    assert all(_members(os.path.join(dataset, s)) & gone for s in replaced)
    work = os.path.join(dataset, "work", "v0002")
    assert ledger.audit(work)["ok"]
    reasons = {os.path.basename(r["source_uri"]): r["reject_reason"] for d in os.listdir(os.path.join(work, "rejects"))
               for r in (fs.read_parquet_dir(os.path.join(work, "rejects", d), ["source_uri", "reject_reason"])
                         or pa_empty()).to_pylist()}
    assert reasons == {"a3.png": "taken_down", "copy-of-a5.png": "duplicate"}
    # v0001 keeps its files without --purge
    assert _members(os.path.join(dataset, first["shards"][0])) | _members(os.path.join(dataset, first["shards"][1])) \
        >= gone
    # the shared checker on the release's shards, staged under contiguous names (a release after a
    # takedown skips the numbers it replaced: it is read through its manifest, not a brace pattern)
    staged = tmp_path / "staged"
    os.makedirs(staged)
    manifest = json.load(open(os.path.join(dataset, "releases", "v0002", "manifest.json")))
    for i, entry in enumerate(manifest["shards"]):
        shutil.copy(os.path.join(dataset, entry["name"]), staged / f"release-{i:06d}.tar")
        entry["name"] = f"release-{i:06d}.tar"
    (staged / "manifest.json").write_text(json.dumps(manifest))
    check_shards(str(staged))

    # a third refresh: still gone; --purge then rewrites v0001 too and says what changed
    third = _refresh(inputs, dataset)
    assert third["diff"]["samples_removed"] == 0 and third["samples"] == 7
    (tmp_path / "content.txt").write_text(by_source["a0.png"]["content_sha256"] + "\n")
    entry = release.record_takedown(str(dataset), content=[by_source["a0.png"]["content_sha256"]], purge=True,
                                    log=lambda *a: None)
    purged = {sid for change in entry["purged"] for sid in change["removed"]}
    assert purged == gone | {by_source["a0.png"]["sample_id"]}  # v0001 loses the earlier takedowns too
    for name in ("v0001", "v0002", "v0003"):
        urls = release.shard_urls(f"{dataset}@{name}")
        held = set().union(*(_members(u) for u in urls))
        assert not (gone | {by_source["a0.png"]["sample_id"]}) & held
        manifest = json.load(open(os.path.join(dataset, "releases", name, "manifest.json")))
        for entry in manifest["shards"]:
            assert _sha(os.path.join(dataset, entry["name"])) == entry["sha256"]


def pa_empty():
    import pyarrow as pa

    return pa.table({"source_uri": pa.array([], pa.string()), "reject_reason": pa.array([], pa.string())})


def test_kill_9_mid_refresh_then_the_rerun_finishes_the_same_release(ray_session, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT
    from tests.pipeline.refresh_job import job

    inputs, dataset = tmp_path / "inputs", tmp_path / "dataset"
    inputs.mkdir()
    for i in range(6):
        _add(inputs, f"a{i}", _image(300 + i), f"picture {i}")
    release.refresh(job(str(inputs), 0), str(dataset), log=lambda *a: None)
    old = {e["name"]: e["sha256"] for e in json.load(open(dataset / "releases" / "v0001" / "manifest.json"))["shards"]}
    for i in range(6, 11):
        _add(inputs, f"a{i}", _image(300 + i), f"picture {i}")
    _add(inputs, "again", _image(301), "a copy of a1")
    proc = subprocess.Popen([sys.executable, "-m", "tests.pipeline.refresh_job", str(inputs), str(dataset), "120"],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    committed = dataset / "work" / "v0002" / "stages" / "02-dedup_exact" / "_SUCCESS"
    deadline = time.time() + 240
    while not committed.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.5)
    time.sleep(1.0)  # well inside the slow stage
    os.killpg(proc.pid, signal.SIGKILL)  # the refresh and its embedded Ray, at once
    proc.wait(timeout=60)
    assert release.latest(str(dataset)) == "v0001" and sorted(os.listdir(dataset / "releases")) == ["v0001"]
    assert json.load(open(dataset / "releases" / "v0001" / "manifest.json"))["shards"] and all(
        _sha(os.path.join(dataset, name)) == sha for name, sha in old.items())
    second = release.refresh(job(str(inputs), 0), str(dataset), log=lambda *a: None)  # the lock's holder is dead
    assert second["version"] == "v0002" and second["diff"]["samples_added"] == 5 and second["samples"] == 11
    samples = fs.read_parquet(os.path.join(dataset, "releases", "v0002", "samples.parquet"))
    assert len(set(samples.column("sample_id").to_pylist())) == samples.num_rows == 11  # nothing twice
    assert ledger.audit(os.path.join(dataset, "work", "v0002"))["ok"]
    assert all(_sha(os.path.join(dataset, name)) == sha for name, sha in old.items())


def test_a_changed_input_supersedes_its_earlier_sample(ray_session, tmp_path):
    import tarfile

    inputs, dataset = tmp_path / "inputs", tmp_path / "dataset"
    inputs.mkdir()
    for i in range(4):
        _add(inputs, f"a{i}", _image(400 + i), f"picture {i}")
    _refresh(inputs, dataset)
    time_ns = os.stat(inputs / "a1.txt").st_mtime_ns
    (inputs / "a1.txt").write_text("picture 1, with a better caption")  # same image, new caption
    os.utime(inputs / "a1.txt", ns=(time_ns + 10**9, time_ns + 10**9))
    (inputs / "a2.png").write_bytes(_image(999))  # same name, another image
    _add(inputs, "old-a2", _image(402), "a2's old picture, under another name")  # not a copy of anything now
    second = _refresh(inputs, dataset)
    diff = second["diff"]
    assert (diff["inputs_new"], diff["inputs_skipped"], diff["samples_added"], diff["samples_superseded"]) == \
        (3, 2, 3, 2)
    samples = fs.read_parquet(os.path.join(dataset, "releases", "v0002", "samples.parquet")).to_pylist()
    assert second["samples"] == len(samples) == 5 and len({r["sample_id"] for r in samples}) == 5
    captions = {}
    for url in release.shard_urls(str(dataset)):
        with tarfile.open(url) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".txt"):
                    captions[m.name.split(".")[0]] = tf.extractfile(m).read().decode()
    assert sorted(captions.values()) == ["a2's old picture, under another name", "picture 0",
                                         "picture 1, with a better caption", "picture 2", "picture 3"]
    by_name = {os.path.basename(r["source_uri"]): r for r in samples}
    assert by_name["a2.png"]["release"] == "v0002" and by_name["a0.png"]["release"] == "v0001"


def test_superseded_index_entries_do_not_count():
    """An earlier release's entry of a changed input leaves the near-duplicate index's view."""
    import pyarrow as pa

    from stages.dedup.minhash import DedupMinhash

    sig = pa.table({"_sig": pa.array(["0001|old1", "0002|old2"]), "_bands": pa.array([[1], [2]], pa.list_(pa.uint64()))})
    assert DedupMinhash({})._relabel(sig).column("_sig").to_pylist() == ["!|old1", "!|old2"]
    assert DedupMinhash({"superseded": ["old2"]})._relabel(sig).column("_sig").to_pylist() == ["!|old1"]


def test_the_releases_page(ray_session, tmp_path):
    from pipeline import cli

    inputs, dataset = tmp_path / "inputs", tmp_path / "dataset"
    inputs.mkdir()
    for i in range(3):
        _add(inputs, f"a{i}", _image(500 + i), f"picture {i}")
    _refresh(inputs, dataset)
    _add(inputs, "b", _image(510), "another")
    _add(inputs, "copy", _image(500), "a copy")
    _refresh(inputs, dataset)
    assert cli.main(["report", str(dataset)]) == 0
    data = json.load(open(dataset / "report" / "releases.json"))
    assert [(r["version"], r["samples"], r["added"]) for r in data["releases"]] == [("v0001", 3, 3), ("v0002", 4, 1)]
    page = open(dataset / "report" / "index.html").read()
    assert page.count("<rect") == 2 and "dedup_exact: duplicate = 1" in page


def test_a_fraction_cut_becomes_the_next_releases_threshold(ray_session, tmp_path):
    """Release 1 keeps its top half by clip_score; release 2 applies release 1's cut as a
    threshold to its new rows (a top half of them would drop two good ones)."""
    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "a.jsonl").write_text("".join(json.dumps({"text": f"row {i}", "clip_score": i / 10}) + "\n"
                                          for i in range(10)))

    def job():
        return parse_job({"name": "cut", "stages": [{"ingest_table": {"source": str(rows)}},
                                                    {"filter_clip_score": {"fraction": 0.5}},
                                                    {"shard_webdataset": {"name": "cut", "samples_per_shard": 8}}]})

    dataset = tmp_path / "dataset"
    first = release.refresh(job(), str(dataset), log=lambda *a: None)
    assert first["samples"] == 5 and first["decisions"] == {"01-filter_clip_score": {"threshold": 0.5,
                                                                                       "fraction": None}}
    (rows / "b.jsonl").write_text("".join(json.dumps({"text": f"new {s}", "clip_score": s}) + "\n"
                                          for s in (0.6, 0.7, 0.8, 0.9, 0.3)))
    second = release.refresh(job(), str(dataset), log=lambda *a: None)
    assert second["diff"]["samples_added"] == 4 and second["samples"] == 9  # 0.3 only falls below the cut
    assert second["decisions"] == first["decisions"]


def test_a_dataset_on_s3(ray_session, s3_bucket, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(5):
        _add(inputs, f"a{i}", _image(600 + i), f"picture {i}")
    dataset = f"{s3_bucket}/datasets/grow"
    first = release.refresh(_job(inputs), dataset, log=lambda *a: None)
    _add(inputs, "b", _image(610), "one more")
    second = release.refresh(_job(inputs), dataset, log=lambda *a: None)
    assert (first["samples"], second["samples"], release.latest(dataset)) == (5, 6, "v0002")
    manifest = json.loads(fs.read_bytes(f"{dataset}/releases/v0002/manifest.json"))
    for entry in manifest["shards"]:  # every object is what the manifest says
        assert release._sha256(f"{dataset}/{entry['name']}") == entry["sha256"]
    assert release.shard_urls(f"{dataset}@v0001") == [f"{dataset}/{s}" for s in first["shards"]]
    leftovers = [i.path for i in fs.list_files(dataset, recursive=True) if ".tmp" in i.path]
    assert leftovers == []


def test_near_duplicates_across_releases(ray_session, tmp_path):
    """A re-encoded, resized copy of a published picture is a near-duplicate of it by the
    persisted pHash index of release 1: it never enters release 2."""
    def job():
        return parse_job({"name": "near", "stages": [
            {"ingest_image_text": {"source": str(inputs), "image_size": 64}},
            {"dedup_phash": {}},
            {"shard_webdataset": {"name": "near", "samples_per_shard": 8}}]})

    def photo(seed: int, size: int = 96, fmt: str = "PNG") -> bytes:
        # smooth structure (not noise), so that a perceptual hash survives re-encoding
        yy, xx = np.mgrid[0:size, 0:size] / size
        rng = np.random.default_rng(seed)
        a, b, c = rng.uniform(1, 6, 3)
        pixels = (127 + 120 * np.stack([np.sin(a * xx * 6 + b * yy * 3), np.cos(b * yy * 5 + c * xx),
                                        np.sin(c * (xx + yy) * 4)], -1)).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, fmt, **({"quality": 70} if fmt == "JPEG" else {}))
        return out.getvalue()

    inputs, dataset = tmp_path / "inputs", tmp_path / "dataset"
    inputs.mkdir()
    for i in range(4):
        (inputs / f"a{i}.png").write_bytes(photo(i))
        (inputs / f"a{i}.txt").write_text(f"pattern {i}")
    first = release.refresh(job(), str(dataset), log=lambda *a: None)
    assert first["samples"] == 4
    (inputs / "resized-a2.jpg").write_bytes(photo(2, size=80, fmt="JPEG"))
    (inputs / "resized-a2.txt").write_text("the same pattern, smaller")
    (inputs / "b.png").write_bytes(photo(9))
    (inputs / "b.txt").write_text("a new pattern")
    second = release.refresh(job(), str(dataset), log=lambda *a: None)
    assert second["diff"]["samples_added"] == 1 and second["samples"] == 5
    rejects = fs.read_parquet_dir(os.path.join(dataset, "work", "v0002", "rejects", "02-dedup_phash"),
                                  ["source_uri", "reject_reason"]).to_pylist()
    assert [(os.path.basename(r["source_uri"]), r["reject_reason"]) for r in rejects] == \
        [("resized-a2.jpg", "duplicate")]


def test_a_repository_with_new_commits_is_read_again(ray_session, tmp_path):
    """A repository's listing row holds its commit at `ref`: a new commit is a changed input,
    whose files supersede the ones published from the commit before."""
    from tests.stages.ingest.test_code import git

    repo = tmp_path / "repos" / "tool"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("def a():\n    return 1\n")
    (repo / "b.py").write_text("def b():\n    return 2\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")

    def job():
        return parse_job({"name": "code", "stages": [
            {"ingest_code": {"source": str(tmp_path / "repos")}},
            {"dedup_exact": {"key": "text", "text_column": "content"}},
            {"shard_webdataset": {"name": "code", "samples_per_shard": 8}}]})

    dataset = tmp_path / "dataset"
    assert release.refresh(job(), str(dataset), log=lambda *a: None)["samples"] == 2
    again = release.refresh(job(), str(dataset), log=lambda *a: None)
    assert again["diff"]["inputs_skipped"] == 1 and again["diff"]["samples_added"] == 0  # nothing new: not read
    (repo / "c.py").write_text("def c():\n    return 3\n")
    (repo / "a.py").write_text("def a():\n    return 10\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two")
    third = release.refresh(job(), str(dataset), log=lambda *a: None)
    assert third["diff"]["inputs_new"] == 1 and third["diff"]["samples_superseded"] == 2
    assert third["samples"] == 3 and third["diff"]["samples_added"] == 3
    paths = sorted(r["source_uri"].rsplit(":", 1)[1] for r in
                   fs.read_parquet(os.path.join(dataset, "releases", "v0003", "samples.parquet")).to_pylist())
    assert paths == ["a.py", "b.py", "c.py"]


def test_a_url_is_fetched_again_only_when_its_manifest_row_changes(ray_session, tmp_path):
    """A URL is not fetched to see whether it changed: its manifest row says so (here an
    `etag` column). The same row is skipped, a new etag re-reads the URL and supersedes."""

    from tests.servers import HostileServer

    with HostileServer(images={"a.png": _image(1), "b.png": _image(2)}) as srv:
        manifest, dataset = tmp_path / "urls.jsonl", tmp_path / "dataset"

        def write(etag_b: str) -> None:
            manifest.write_text("".join(json.dumps({"url": srv.url(f"/img/{n}.png"), "caption": f"picture {n}",
                                                    "etag": etag}) + "\n" for n, etag in (("a", "1"), ("b", etag_b))))

        job = parse_job({"name": "urls", "stages": [
            {"ingest_image_text": {"source": str(manifest), "image_size": 32, "allow_private_networks": True}},
            {"shard_webdataset": {"name": "urls", "samples_per_shard": 4}}]})
        write("1")
        assert release.refresh(job, str(dataset), log=lambda *a: None)["samples"] == 2
        srv.images["b.png"] = _image(3)  # the file behind the URL changes ...
        same = release.refresh(job, str(dataset), log=lambda *a: None)["diff"]
        assert (same["inputs_new"], same["inputs_skipped"], same["samples_added"]) == (0, 2, 0)  # ... unseen
        write("2")  # ... until the manifest says so
        diff = release.refresh(job, str(dataset), log=lambda *a: None)["diff"]
        assert (diff["inputs_new"], diff["inputs_skipped"], diff["samples_added"], diff["samples_superseded"]) == \
            (1, 1, 1, 1)
    def content(version: str) -> dict[str, str]:
        rows = fs.read_parquet(os.path.join(dataset, "releases", version, "samples.parquet")).to_pylist()
        return {r["source_uri"].rsplit("/", 1)[1]: r["content_sha256"] for r in rows}

    first, third = content("v0001"), content("v0003")
    assert sorted(third) == ["a.png", "b.png"] and third["a.png"] == first["a.png"]
    assert third["b.png"] != first["b.png"]  # the new file, fetched again
