"""shard_webdataset: deterministic shards, targets, members, embeddings, manifest."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import cli
from pipeline.runner import Runner
from stages.ingest.image_text import IngestImageText
from stages.shard.webdataset import ShardWebDataset
from tests.pipeline.helpers import make_job


def _tar_listing(shard_dir: str) -> dict[str, list[str]]:
    out = {}
    for name in sorted(os.listdir(shard_dir)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(shard_dir, name)) as tf:
                out[name] = [m.name for m in tf]
    return out


def test_same_input_same_shards(ray_session, demo_data, tmp_path):
    runs = []
    for i in range(2):
        out = str(tmp_path / f"run{i}")
        job = make_job(IngestImageText(source=demo_data["manifest"], image_size=96),
                       ShardWebDataset(samples_per_shard=10))
        Runner(job, out, log=lambda *a: None).run()
        runs.append(out)
    a, b = (os.path.join(r, "shards") for r in runs)
    assert _tar_listing(a) == _tar_listing(b)  # same keys, same order, same shards
    ma, mb = (json.load(open(os.path.join(d, "manifest.json"))) for d in (a, b))
    assert ma == mb  # down to the bytes: same sha256 per shard
    stats = json.load(open(os.path.join(a, "shard-000000_stats.json")))
    assert stats["samples"] == ma["shards"][0]["samples"] and stats["members"]["jpg"] == stats["samples"]
    index = pq.read_table(os.path.join(a, "shard-000000.parquet"))
    assert index.column("__key__").to_pylist() == [n.split(".")[0] for n in _tar_listing(a)["shard-000000.tar"]
                                                 if n.endswith(".json")]
    assert "caption" in index.column_names and "image" not in index.column_names


def test_samples_per_shard_follows_samples_and_bytes():
    s = ShardWebDataset(samples_per_shard=100, bytes_per_shard=10_000_000)
    assert s.per_shard(1, 0) == 100
    assert s.per_shard(1000, 1000) == 100
    assert s.per_shard(10, 95_000_000) == 1  # 9.5 MB a sample: one per shard keeps shards near 10 MB


def test_every_shard_but_the_last_holds_exactly_n_in_hash_order(ray_session, demo_data, tmp_path):
    """webdataset and img2dataset users count on N per shard; the layout of parts must not matter."""
    from stages.shard.webdataset import order_key

    outs = []
    for size, per in ((7, 10), (64, 10), (256, 9)):
        out = str(tmp_path / f"run-{size}")
        import pipeline.runner as runner

        before = runner.LISTING_ROWS_PER_PART
        runner.LISTING_ROWS_PER_PART = size  # other part layouts, same shards
        try:
            Runner(make_job(IngestImageText(source=demo_data["manifest"], image_size=48),
                            ShardWebDataset(samples_per_shard=per)), out, log=lambda *a: None).run()
        finally:
            runner.LISTING_ROWS_PER_PART = before
        outs.append((out, per))
    for out, per in outs:
        manifest = json.load(open(os.path.join(out, "shards", "manifest.json")))["shards"]
        assert [s["samples"] for s in manifest[:-1]] == [per] * (len(manifest) - 1)
        assert 0 < manifest[-1]["samples"] <= per
        keys = [k for name in _tar_listing(os.path.join(out, "shards")).values() for k in
                dict.fromkeys(n.split(".")[0] for n in name)]
        order = order_key(pa.array(keys))
        assert (np.diff(order.astype(np.float64)) > 0).all()  # one hash order, inside and across shards
        stats = json.load(open(os.path.join(out, "shards", manifest[0]["name"][:-4] + "_stats.json")))
        assert stats["members"]["json"] == per
    assert _tar_listing(os.path.join(outs[0][0], "shards")) == _tar_listing(os.path.join(outs[1][0], "shards"))


def test_embeddings_become_npy_members_via_the_stage_command(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((30, 8)).astype(np.float16)
    emb /= np.linalg.norm(emb.astype(np.float32), axis=1, keepdims=True).astype(np.float16)
    table = pa.table({
        "caption": [f"text {i}" for i in range(30)],
        "score": rng.random(30),
        "clip_image_emb": pa.array(list(emb), type=pa.list_(pa.float16())),
    })
    pq.write_table(table, tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    assert cli.main(["stage", "shard_webdataset", "--input", str(tmp_path / "in.parquet"), "--output", out,
                     "--set", "samples_per_shard=10"]) == 0
    shard_dir = os.path.join(out, "shards")
    found = {}
    for name in sorted(os.listdir(shard_dir)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(shard_dir, name)) as tf:
                members = {m.name: tf.extractfile(m).read() for m in tf}
            for mname, data in members.items():
                if mname.endswith(".clip_image_emb.npy"):
                    key = mname.split(".")[0]
                    assert "score" in json.loads(members[f"{key}.json"])
                    found[json.loads(members[f"{key}.json"])["caption"]] = np.load(io.BytesIO(data))
    assert len(found) == 30
    for i in range(30):
        assert found[f"text {i}"].dtype == np.float16
        np.testing.assert_array_equal(found[f"text {i}"], emb[i])


def test_tar_headers_match_the_standard_library():
    from stages.shard.webdataset import _ustar_header

    for name, size in (("abc.jpg", 12345), ("k" * 99, 0), ("x.clip_image_emb.npy", 8 ** 11 - 1)):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o444
        assert _ustar_header(name.encode(), size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def test_the_tar_stream_writes_what_tarfile_reads_and_hashes_what_it_wrote(tmp_path):
    """Members larger than a chunk, a name that needs a pax header, an empty member: read
    back by tarfile, and the sha256 and size it reports are the file's."""
    import hashlib

    from stages.shard.webdataset import _TarStream

    big = np.random.default_rng(0).integers(0, 256, _TarStream.CHUNK * 2 + 7, dtype=np.uint8).tobytes()
    given = {"a.jpg": b"x" * 1000, "b" * 150 + ".txt": "long name é".encode(), "c.bin": big, "d.json": b""}
    path = tmp_path / "s.tar"
    with open(path, "wb") as f, _TarStream(f) as stream:
        for name, data in given.items():
            stream.member(name, data)
    raw = path.read_bytes()
    assert stream.size == len(raw) and stream.sha.hexdigest() == hashlib.sha256(raw).hexdigest()
    assert len(raw) % tarfile.RECORDSIZE == 0
    with tarfile.open(path) as tf:
        assert {m.name: tf.extractfile(m).read() for m in tf.getmembers()} == given


def test_hostile_ids_never_become_member_paths(ray_session, tmp_path):
    """Ids that are paths, dotted or repeated reach the shards as safe, unique keys."""
    from pipeline import ledger
    from pipeline.table import IngestTable

    rows = [{"sample_id": "/x/escaped", "text": "abs"}, {"sample_id": "../../up", "text": "rel"},
            {"sample_id": "a.b", "text": "dot"}, {"sample_id": "ok", "text": "first"},
            {"sample_id": "ok", "text": "second"}]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "run")
    Runner(make_job(IngestTable(source=str(src)), ShardWebDataset(samples_per_shard=10)), out,
           log=lambda *a: None).run()
    result = ledger.audit(out)
    assert result["ok"] and result["kept"] == 4 and result["rejected_by_stage"] == {
        "ingest_table": {"duplicate_input_id": 1}}
    names = [n for ns in _tar_listing(os.path.join(out, "shards")).values() for n in ns]
    assert all("/" not in n and not n.startswith(".") for n in names)
    target = tmp_path / "extract"
    with tarfile.open(os.path.join(out, "shards", "shard-000000.tar")) as tf:
        tf.extractall(target, filter="data")
    assert sorted(p.parent for p in target.rglob("*")) == [target] * len(names)
    originals = {json.loads(tf_json)["meta"].get("input_sample_id") for tf_json in _jsons(out)}
    assert originals == {"/x/escaped", "../../up", "a.b", None}


def _jsons(out: str) -> list[bytes]:
    with tarfile.open(os.path.join(out, "shards", "shard-000000.tar")) as tf:
        return [tf.extractfile(m).read() for m in tf if m.name.endswith(".json")]


def test_bytes_from_a_table_need_a_declared_format(ray_session, tmp_path):
    """A column of bytes becomes a member only with its extension declared; never silently dropped."""
    import pytest

    from pipeline.table import IngestTable

    pq.write_table(pa.table({"image": pa.array([b"\xff\xd8\xff fake jpeg %d" % i for i in range(5)], pa.binary()),
                             "caption": [f"c{i}" for i in range(5)]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="column 'image' holds bytes, but no stage of the job declares it"):
        Runner(make_job(IngestTable(source=str(tmp_path / "t.parquet")), ShardWebDataset()), str(tmp_path / "a"),
               log=lambda *a: None).run()
    out = str(tmp_path / "b")
    Runner(make_job(IngestTable(source=str(tmp_path / "t.parquet"), media={"image": "jpg"}), ShardWebDataset()), out,
           log=lambda *a: None).run()
    names = [n for ns in _tar_listing(os.path.join(out, "shards")).values() for n in ns]
    assert sum(n.endswith(".jpg") for n in names) == 5
