"""Tables are untrusted too: references they bring, names they use, extensions they give."""
from __future__ import annotations

import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fs, ledger
from pipeline.runner import Runner
from pipeline.table import IngestTable
from stages.dedup.exact import DedupExact
from stages.shard.webdataset import ShardWebDataset
from tests.pipeline.helpers import make_job


def _members(out: str) -> dict[str, bytes]:
    found = {}
    for name in sorted(os.listdir(os.path.join(out, "shards"))):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(out, "shards", name)) as tf:
                found.update({m.name: tf.extractfile(m).read() for m in tf})
    return found


def test_a_forged_media_reference_reads_nothing(ray_session, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET-CONTENTS-123\n")
    rows = [{"text": "hello", "image": {"uri": str(secret), "offset": 0, "size": 20}},
            {"text": "host", "image": {"uri": "file:///etc/hostname", "offset": 0, "size": 3}}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "run")
    Runner(make_job(IngestTable(source=str(tmp_path / "t.jsonl"), media={"image": "jpg"}), ShardWebDataset()), out,
           log=lambda *a: None).run()
    result = ledger.audit(out)
    assert result["ok"] and result["kept"] == 0
    assert result["rejected_by_stage"] == {"ingest_table": {"path_outside_root": 2}}
    assert not any(b"SECRET" in data for data in _members(out).values())


def test_input_columns_named_like_the_engines_are_renamed(ray_session, tmp_path):
    """A `_key` column must not steer dedup, nor `reject` or `parent_id` the ledger."""
    pq.write_table(pa.table({"content_sha256": ["a", "b", "c"], "_key": ["same", "same", "same"],
                             "parent_id": ["x", "y", "z"], "reject": ["no", "no", "no"]}), tmp_path / "t.parquet")
    out = str(tmp_path / "run")
    Runner(make_job(IngestTable(source=str(tmp_path / "t.parquet")), DedupExact()), out, log=lambda *a: None).run()
    result = ledger.audit(out)
    assert result["ok"] and result["kept"] == 3 and result["rejected"] == 0  # three different contents
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-dedup_exact"))
    assert {"src_key", "src_parent_id", "src_reject"} <= set(kept.column_names)


def test_a_member_extension_from_the_data_must_be_plain(ray_session, tmp_path):
    rows = [{"image": b"\xff\xd8 one", "fmt": "jpg"}, {"image": b"\xff\xd8 two", "fmt": "jpg/../../../tmp/x"},
            {"image": b"\xff\xd8 three", "fmt": "json"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    out = str(tmp_path / "run")
    Runner(make_job(IngestTable(source=str(tmp_path / "t.parquet"), media={"image": "@fmt"}), ShardWebDataset()),
           out, log=lambda *a: None).run()
    result = ledger.audit(out)
    assert result["ok"] and result["kept"] == 1
    assert result["rejected_by_stage"] == {"ingest_table": {"bad_media_format": 2}}
    assert sorted(n.split(".", 1)[1] for n in _members(out)) == ["jpg", "json"]


def test_changing_a_declared_format_reruns_the_shards(ray_session, tmp_path):
    pq.write_table(pa.table({"image": [b"\xff\xd8 a", b"\xff\xd8 b"]}), tmp_path / "t.parquet")
    out = str(tmp_path / "run")

    def run(ext):
        job = make_job(IngestTable(source=str(tmp_path / "t.parquet"), media={"image": ext}), ShardWebDataset())
        return [s["skipped"] for s in Runner(job, out, log=lambda *a: None).run()["segments"]]

    assert run("jpg") == [False, False]
    assert run("png") == [True, False]
    assert {n.split(".", 1)[1] for n in _members(out)} == {"png", "json"}


def test_bytes_per_shard_counts_media_listed_by_a_table(ray_session, tmp_path):
    pq.write_table(pa.table({"image": [os.urandom(600_000) for _ in range(4)]}), tmp_path / "t.parquet")
    out = str(tmp_path / "run")
    Runner(make_job(IngestTable(source=str(tmp_path / "t.parquet"), media={"image": "bin"}),
                    ShardWebDataset(bytes_per_shard=1_000_000)), out, log=lambda *a: None).run()
    shards = json.load(open(os.path.join(out, "shards", "manifest.json")))["shards"]
    assert [s["samples"] for s in shards] == [1, 1, 1, 1]


def test_a_rerun_against_its_own_index_keeps_what_it_kept(ray_session, tmp_path):
    pq.write_table(pa.table({"content_sha256": ["a", "b", "a"]}), tmp_path / "t.parquet")
    out = str(tmp_path / "run")
    Runner(make_job(IngestTable(source=str(tmp_path / "t.parquet")), DedupExact()), out, log=lambda *a: None).run()
    index = os.path.join(out, "index", "dedup_exact")
    again = str(tmp_path / "again")
    Runner(make_job(IngestTable(source=str(tmp_path / "t.parquet")), DedupExact(against=[index])), again,
           log=lambda *a: None).run()
    result = ledger.audit(again)
    assert result["kept"] == 2 and result["rejected_by_stage"] == {"dedup_exact": {"duplicate": 1}}
