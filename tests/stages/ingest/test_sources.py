"""Listing untrusted sources: confinement, URL schemes, bad rows, names and links, unique ids."""
from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa
import pytest
from PIL import Image

from jobs.demo_data import jpeg, photos
from pipeline import ledger
from stages.ingest.image_text import IngestImageText
from pipeline.table import IngestTable


@pytest.fixture(scope="module")
def good():
    return jpeg(Image.fromarray(photos()["coffee"]).resize((64, 48)))


def listed(source: str, **params) -> list[dict]:
    """The listing as the runner makes it (ids made unique and safe), one dict per input."""
    stage = IngestImageText(source=source, **params)
    ids = ledger.InputIds()
    return [r for t in stage.list_inputs() for r in ids(ledger.ensure_reject_column(t)).to_pylist()]


def reasons(rows: list[dict]) -> list[str]:
    return [r["reject"]["reason"] if r["reject"] else "ok" for r in rows]


def ingested(source: str, **params) -> list[dict]:
    stage = IngestImageText(source=source, **params)
    stage.ensure_setup()
    out = []
    for t in stage.list_inputs():
        live, dead = ledger.split_live(t)
        out += dead.to_pylist()
        if live.num_rows:
            out += stage.process(live.drop_columns(["reject"])).to_pylist()
    return sorted(out, key=lambda r: r["ordinal"])


# -- manifests: where paths may point ----------------------------------------------------
def test_manifest_paths_stay_inside_the_manifest_folder_or_allowed_roots(tmp_path, good):
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    (inside / "img").mkdir(parents=True)
    outside.mkdir()
    (inside / "img" / "a.jpg").write_bytes(good)
    (outside / "b.jpg").write_bytes(good)
    (inside / "img" / "link.jpg").symlink_to(outside / "b.jpg")  # a link out of the folder
    (inside / "img" / "in-link.jpg").symlink_to(inside / "img" / "a.jpg")
    rows = [
        ("img/a.jpg", "ok"),
        (str(inside / "img" / "a.jpg"), "ok"),  # absolute, but inside
        ("../../../../../../etc/passwd", "path_outside_root"),
        ("/etc/passwd", "path_outside_root"),
        ("file:///etc/passwd", "path_outside_root"),
        (f"file://{inside}/img/a.jpg", "ok"),
        ("img/../../elsewhere/b.jpg", "path_outside_root"),
        (str(outside / "b.jpg"), "path_outside_root"),
        ("img/link.jpg", "path_outside_root"),
        ("img/in-link.jpg", "ok"),
        ("ftp://example.org/x.jpg", "unsupported_scheme"),
        ("file://otherhost/etc/passwd", "unsupported_scheme"),
        ("s3://bucket/x.jpg", "path_outside_root"),
    ]
    manifest = inside / "m.jsonl"
    manifest.write_text("".join(json.dumps({"path": p, "caption": "a cup of coffee"}) + "\n" for p, _ in rows))
    got = listed(str(manifest))
    assert reasons(got) == [want for _, want in rows]
    assert all("root:x" not in (r["reject"] or {}).get("detail", "") for r in got)
    # Naming the other folder as a root lets its files in, and only its files.
    got = listed(str(manifest), allowed_roots=[str(outside)])
    assert reasons(got)[7:9] == ["ok", "ok"] and reasons(got)[3] == "path_outside_root"


def test_url_lists_take_http_urls_only(tmp_path):
    values = ["https://example.org/a.jpg", "http://example.org/b.jpg", "ftp://example.org/c.jpg",
              "not a url", "/etc/passwd", "file:///etc/passwd", "s3://bucket/key.jpg", "http://[::1/x",
              "javascript:alert(1)"]
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text("".join(json.dumps({"url": v, "caption": "x"}) + "\n" for v in values))
    assert reasons(listed(str(manifest))) == ["ok", "ok", "unsupported_scheme", "bad_url", "bad_url",
                                              "unsupported_scheme", "unsupported_scheme", "bad_url", "bad_url"]
    got = listed(str(manifest), allowed_roots=["s3://bucket/"])
    assert got[6]["reject"] is None and got[6]["path"] == "s3://bucket/key.jpg"


def test_a_non_image_leaks_none_of_its_bytes(tmp_path):
    (tmp_path / "passwd.jpg").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 3)
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "passwd.jpg", "caption": "a secret"}) + "\n")
    (row,) = ingested(str(tmp_path / "m.jsonl"))
    detail = row["reject"]["detail"]
    assert row["reject"]["reason"] == "not_an_image"
    assert "root:x" not in detail and b"root:x:0".hex() not in detail and "bash" not in detail


# -- manifests: rows that are bad on their own -------------------------------------------
def test_bad_csv_rows_are_rejects_and_the_listing_goes_on(tmp_path, good):
    (tmp_path / "a.jpg").write_bytes(good)
    big = "x" * (200 << 10)
    text = ("path,caption\n"
            "a.jpg,first\n"
            f"a.jpg,{big}\n"  # a field over 128 KiB
            "a.jpg,third\n"
            '"a.jpg" oops,fourth\n'  # a quote closed too early
            "a.jpg,fifth\n"
            "a.jpg,one,too many\n"
            'a.jpg,"an unterminated quote\n'
            "a.jpg,swallowed\n"
            "a.jpg,swallowed too\n")
    (tmp_path / "m.csv").write_text(text)
    got = listed(str(tmp_path / "m.csv"))
    assert reasons(got) == ["ok", "field_too_large", "ok", "bad_manifest_row", "ok", "bad_manifest_row",
                            "bad_manifest_row"]
    assert "never closed" in got[-1]["reject"]["detail"] and "line 8" in got[-1]["reject"]["detail"]
    assert [json.loads(r["meta"]) for r in got if r["reject"] is None] == [{}, {}, {}]
    assert len({r["sample_id"] for r in got}) == len(got)


def test_captions_that_are_not_text_are_never_made_into_text(tmp_path, good):
    import pyarrow.parquet as pq

    (tmp_path / "a.jpg").write_bytes(good)
    pq.write_table(pa.table({"path": ["a.jpg"] * 3, "caption": [1.5, float("nan"), None]}), tmp_path / "f.parquet")
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"path": "a.jpg", "caption": c}) + "\n"
                                              for c in [["a", "list"], {"a": 1}, 42, "a cup of coffee"]))
    got = ingested(str(tmp_path / "f.parquet"))
    assert reasons(got) == ["caption_not_text", "missing_caption", "missing_caption"]
    got = ingested(str(tmp_path / "l.jsonl"))
    assert reasons(got) == ["caption_not_text"] * 3 + ["ok"]
    assert all("nan" != r.get("caption") and "[" not in (r.get("caption") or "") for r in got)


# -- folders -----------------------------------------------------------------------------
def test_folders_do_not_follow_links_out_or_in_loops_and_bad_names_are_rejects(tmp_path, good):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(good)
    (root / "a.txt").write_text("a cup of coffee")
    (root / "sub" / "b.jpg").write_bytes(good)
    (tmp_path / "secret.jpg").write_bytes(good)
    (root / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "sub" / "loop").symlink_to(root)  # a loop: walking it would list everything again and again
    (root / "sub" / "up").symlink_to(tmp_path)
    os.close(os.open(os.fsencode(str(root)) + b"/caf\xe9.jpg", os.O_CREAT | os.O_WRONLY))  # Latin-1 name
    got = {r["source_uri"].rsplit("/", 1)[-1].split("#")[-1]: r for r in listed(str(root))}
    assert {k: reasons([r])[0] for k, r in got.items()} == {
        "a.jpg": "ok", "b.jpg": "ok", "escape.jpg": "path_outside_root", "loop": "symlink_not_followed",
        "up": "symlink_not_followed", "caf\\xe9.jpg": "bad_file_name"}
    assert len({r["sample_id"] for r in got.values()}) == 6


# -- tars --------------------------------------------------------------------------------
def _tar(path, members):
    """members: (name, bytes) for files, (name, "->target") for hard links, (name, "~>target") for symlinks."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str) and data.startswith("->"):
                info.type, info.linkname = tarfile.LNKTYPE, data[2:]
                tf.addfile(info)
            elif isinstance(data, str) and data.startswith("~>"):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_tar_keys_that_come_back_get_ids_of_their_own(tmp_path, good):
    members = []
    for key in "ababa":
        members += [(f"{key}.jpg", good), (f"{key}.txt", b"a cup of coffee")]
    _tar(tmp_path / "t.tar", members)
    got = listed(str(tmp_path / "t.tar"))
    assert reasons(got) == ["ok", "ok", "split_sample", "split_sample", "split_sample"]
    assert len({r["sample_id"] for r in got}) == 5


def test_tar_hard_links_resolve_and_symbolic_links_are_rejects(tmp_path, good):
    _tar(tmp_path / "t.tar", [
        ("a.jpg", good), ("a.txt", b"the original"),
        ("b.jpg", "->a.jpg"), ("b.txt", b"a hard link to the same image"),  # what GNU tar writes for a hard link
        ("c.jpg", "->a.jpg"), ("c.txt", "->a.txt"),  # nothing but links
        ("d.jpg", "~>/etc/passwd"), ("d.txt", b"a symlink"),
        ("e.jpg", "~>a.jpg"),  # nothing but a symlink
        ("f.jpg", "->missing.jpg"),
    ])
    got = ingested(str(tmp_path / "t.tar"))
    assert reasons(got) == ["ok", "ok", "ok", "symlink_member", "symlink_member", "broken_link"]
    assert got[1]["caption"] == "a hard link to the same image" and got[2]["caption"] == "the original"
    assert got[1]["content_sha256"] == got[0]["content_sha256"]


def test_a_tar_member_name_that_is_not_utf8_is_one_reject(tmp_path, good):
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name in ("ok.jpg", "caf\xe9.jpg", "fine.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(good)
            tf.addfile(info, io.BytesIO(good))
    got = listed(str(path))
    assert reasons(got) == ["ok", "bad_member_name", "ok"]
    assert "caf\\xe9" in got[1]["reject"]["detail"]


# -- ids ---------------------------------------------------------------------------------
def test_ids_from_a_table_are_made_safe_and_unique(tmp_path):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"sample_id": "a", "text": "1"}, {"sample_id": "b", "text": "2"}, {"sample_id": "a", "text": "3"},
        {"sample_id": "/x/escaped", "text": "4"}, {"sample_id": "../../up", "text": "5"},
        {"sample_id": "x" * 300, "text": "6"}, {"sample_id": "a.b", "text": "7"}, {"sample_id": None, "text": "8"}]))
    ids = ledger.InputIds()
    rows = [r for t in IngestTable(source=str(tmp_path / "t.jsonl")).list_inputs()
            for r in ids(ledger.ensure_reject_column(t)).to_pylist()]
    assert [r["sample_id"] for r in rows[:2]] == ["a", "b"]
    assert reasons(rows) == ["ok", "ok", "duplicate_input_id", "ok", "ok", "ok", "ok", "ok"]
    assert len({r["sample_id"] for r in rows}) == 8
    assert all(ledger.SAFE_ID.fullmatch(r["sample_id"]) for r in rows)
    assert [json.loads(r["meta"]).get("input_sample_id") for r in rows[2:7]] == [
        "a", "/x/escaped", "../../up", "x" * 300, "a.b"]
