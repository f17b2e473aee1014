"""ingest_image_text on its own (no Ray): listing, decoding, every broken input's reason."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.demo_data import broken_inputs, jpeg, photos
from stages.ingest.image_text import IngestImageText
from stages.ingest.sources import SourceError


def ingest(source: str, **params) -> list[dict]:
    """List and process like the runner does, without Ray; rows with a `reject` dict or None."""
    stage = IngestImageText(source=source, **params)
    stage.ensure_setup()
    rows = []
    for table in stage.list_inputs():
        live = table.filter(pa.compute.is_null(table.column("reject")))
        dead = table.filter(pa.compute.is_valid(table.column("reject")))
        rows += dead.to_pylist()
        if live.num_rows:
            rows += stage.process(live.drop_columns(["reject"])).to_pylist()
    return sorted(rows, key=lambda r: r["ordinal"])


@pytest.fixture(scope="module")
def chelsea():
    return photos()["chelsea"]


@pytest.fixture(scope="module")
def broken_set(tmp_path_factory, chelsea):
    d = tmp_path_factory.mktemp("broken")
    (d / "images").mkdir()
    expected = {}
    with open(d / "manifest.jsonl", "w", encoding="utf-8", errors="surrogateescape") as f:
        for name, data, caption, outcome in broken_inputs(chelsea):
            if data is not None:
                (d / "images" / name).write_bytes(data)
            if isinstance(caption, bytes):
                caption = caption.decode("utf-8", "surrogateescape")
            f.write(json.dumps({"path": f"images/{name}", "caption": caption, "id": name}, ensure_ascii=False) + "\n")
            expected[name] = outcome
    return d, expected


def test_every_broken_input_gets_its_own_reason_or_is_kept(broken_set):
    d, expected = broken_set
    rows = {r["id"]: r for r in ingest(str(d / "manifest.jsonl"), max_pixels=50_000_000)}
    got = {name: (r["reject"]["reason"] if r["reject"] else "kept") for name, r in rows.items()}
    assert got == expected
    for name, r in rows.items():
        if r["reject"]:
            assert name in r["reject"]["detail"], "the detail names the file"


def test_odd_but_valid_images_decode_correctly(broken_set, chelsea):
    d, _ = broken_set
    rows = {r["id"]: r for r in ingest(str(d / "manifest.jsonl"), image_size=1024)}
    h, w = chelsea.shape[:2]

    def pixels(name):
        return np.asarray(Image.open(io.BytesIO(rows[name]["image"])).convert("RGB"), dtype=np.float32)

    # CMYK converts to RGB close to the original colours.
    assert abs(pixels("cmyk.jpg").mean() - chelsea.mean()) < 25
    # 16-bit grey is scaled, not clipped to white.
    grey = pixels("gray16.png")
    assert 40 < grey.mean() < 200 and grey.std() > 20
    # Palette with transparency: transparent pixels composited on white, the rest kept.
    assert rows["palette_alpha.png"]["width"] == w
    # EXIF orientation 6 is applied: the stored image is portrait, and so is the recorded original.
    r = rows["exif_rotated.jpg"]
    assert (r["width"], r["height"]) == (h, w)
    assert (r["original_width"], r["original_height"]) == (h, w)
    # Captions: invalid UTF-8 repaired with U+FFFD, control characters gone, whitespace collapsed.
    assert rows["bad_utf8.jpg"]["caption"] == "caf\ufffd au lait \ufffd\ufffd"
    assert rows["control.jpg"]["caption"] == "a caption with control characters"


def test_invalid_utf8_can_be_rejected(broken_set):
    d, _ = broken_set
    rows = {r["id"]: r for r in ingest(str(d / "manifest.jsonl"), invalid_utf8="reject")}
    assert rows["bad_utf8.jpg"]["reject"]["reason"] == "invalid_utf8"


def test_decompression_bomb_cap_is_a_parameter(broken_set):
    d, _ = broken_set
    rows = {r["id"]: r for r in ingest(str(d / "manifest.jsonl"), max_pixels=200_000_000)}
    assert rows["bomb.png"]["reject"] is None  # 144 Mpx is allowed under a 200 Mpx cap
    rows = {r["id"]: r for r in ingest(str(d / "manifest.jsonl"), max_pixels=100_000)}
    assert rows["cmyk.jpg"]["reject"]["reason"] == "decompression_bomb"  # 451x300 > 100k px


@pytest.mark.parametrize("policy,size,expect", [
    ("fit", 200, (200, 133)), ("fit", 4000, (451, 300)),  # fit never enlarges
    ("center_crop", 128, (128, 128)), ("pad", 128, (128, 128)), ("none", 64, (451, 300))])
def test_resize_policies(tmp_path, chelsea, policy, size, expect):
    (tmp_path / "a.jpg").write_bytes(jpeg(Image.fromarray(chelsea)))
    (tmp_path / "a.txt").write_text("a cat")
    (row,) = ingest(str(tmp_path), resize=policy, image_size=size)
    assert (row["width"], row["height"]) == expect
    assert Image.open(io.BytesIO(row["image"])).size == expect
    assert (row["original_width"], row["original_height"]) == (451, 300)


def test_webp_reencode_and_recorded_facts(tmp_path, chelsea):
    data = jpeg(Image.fromarray(chelsea), quality=95)
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "a.txt").write_text("a cat")
    (row,) = ingest(str(tmp_path), encode_format="webp", quality=60)
    assert Image.open(io.BytesIO(row["image"])).format == "WEBP"
    assert row["image_format"] == "webp" and row["original_format"] == "jpeg"
    assert row["original_bytes"] == len(data) and row["image_bytes"] == len(row["image"])
    import hashlib
    assert row["content_sha256"] == hashlib.sha256(data).hexdigest()


def test_folder_with_sidecars(tmp_path, chelsea):
    img = jpeg(Image.fromarray(chelsea))
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(img)
    (tmp_path / "a.txt").write_text("caption from txt")
    (tmp_path / "sub" / "b.jpg").write_bytes(img)
    (tmp_path / "sub" / "b.json").write_text(json.dumps({"caption": "caption from json", "licence": "cc-by"}))
    (tmp_path / "c.jpg").write_bytes(img)  # no caption at all
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in ingest(str(tmp_path))}
    assert rows["a.jpg"]["caption"] == "caption from txt"
    assert rows["b.jpg"]["caption"] == "caption from json"
    assert json.loads(rows["b.jpg"]["meta"]) == {"licence": "cc-by"}
    assert rows["c.jpg"]["reject"]["reason"] == "missing_caption"
    assert rows["notes.pdf"]["reject"]["reason"] == "unsupported_file"
    assert len(rows) == 4


def test_manifest_formats_keep_extra_columns(tmp_path, chelsea):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(jpeg(Image.fromarray(chelsea)))
    table = pa.table({"file": ["img/a.jpg", "img/missing.jpg"], "text": ["a cat", "gone"],
                      "licence": ["cc0", "cc0"], "score": [0.5, 0.7]})
    pq.write_table(table, tmp_path / "m.parquet")
    table.to_pandas().to_csv(tmp_path / "m.csv", index=False)
    for name in ("m.parquet", "m.csv"):
        rows = ingest(str(tmp_path / name), path_column="file", text_column="text")
        ok, missing = rows
        assert ok["reject"] is None and ok["caption"] == "a cat"
        assert ok["licence"] == "cc0" and float(ok["score"]) == 0.5  # extra columns stay top-level...
        assert json.loads(ok["meta"])["licence"] == "cc0"  # ...and in meta
        assert missing["reject"]["reason"] == "missing_file"


def test_manifest_errors_are_clear(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"file": "a.jpg", "caption": "x"}\nnot json\n')
    with pytest.raises(SourceError, match="no column 'path'.*set path_column"):
        ingest(str(tmp_path / "m.jsonl"))
    rows = ingest(str(tmp_path / "m.jsonl"), path_column="file")
    assert [r["reject"]["reason"] for r in rows] == ["missing_file", "bad_manifest_row"]
    assert "line 2 is not JSON" in rows[1]["reject"]["detail"]
    with pytest.raises(SourceError, match="does not exist"):
        ingest(str(tmp_path / "nope.jsonl"))


def test_webdataset_tars_as_input(tmp_path, chelsea):
    img = jpeg(Image.fromarray(chelsea))
    with tarfile.open(tmp_path / "in-000.tar", "w") as tf:
        for key, members in (("s1", {"jpg": img, "txt": b"first"}),
                             ("s2", {"png": _png(chelsea), "json": json.dumps({"caption": "second", "k": 1}).encode()}),
                             ("s3", {"txt": b"no image here"})):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    (tmp_path / "in-001.tar").write_bytes(b"this is not a tar" * 100)
    rows = ingest(str(tmp_path / "in-{000..001}.tar"))
    by_loc = {r["source_uri"].rsplit("#", 1)[1]: r for r in rows}
    assert by_loc["s1"]["caption"] == "first" and by_loc["s1"]["reject"] is None
    assert by_loc["s2"]["caption"] == "second" and json.loads(by_loc["s2"]["meta"]) == {"k": 1}
    assert by_loc["s3"]["reject"]["reason"] == "no_media_member"
    assert [r["reject"]["reason"] for r in rows if "in-001" in r["source_uri"]] == ["unreadable_source"]
    assert by_loc["s1"]["content_sha256"] == __import__("hashlib").sha256(img).hexdigest()


def test_identity_is_stable_and_assigned_before_io(tmp_path, chelsea):
    (tmp_path / "a.jpg").write_bytes(b"")  # broken: identity must not depend on content
    (tmp_path / "a.txt").write_text("x")
    first = ingest(str(tmp_path))
    (tmp_path / "a.jpg").write_bytes(jpeg(Image.fromarray(chelsea)))
    second = ingest(str(tmp_path))
    assert first[0]["sample_id"] == second[0]["sample_id"]
    assert "." not in first[0]["sample_id"] and first[0]["ordinal"] == 0


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_truncated_png_and_split_tar_samples(tmp_path, chelsea):
    png = _png(chelsea)
    (tmp_path / "t.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "t.txt").write_text("half a png")
    (row,) = ingest(str(tmp_path))
    assert row["reject"]["reason"] in ("truncated", "corrupt")
    img = jpeg(Image.fromarray(chelsea))
    with tarfile.open(tmp_path / "split.tar", "w") as tf:
        for name, data in (("a.jpg", img), ("b.jpg", img), ("a.txt", b"late caption"), ("b.txt", b"b")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    rows = ingest(str(tmp_path / "split.tar"))
    assert len({r["sample_id"] for r in rows}) == len(rows) == 4
    assert sorted(r["reject"]["reason"] for r in rows) == ["missing_caption", "missing_caption",
                                                            "split_sample", "split_sample"]


def test_bad_text_outside_the_caption_never_aborts_the_listing(tmp_path, chelsea):
    (tmp_path / "a.jpg").write_bytes(jpeg(Image.fromarray(chelsea)))
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfpath,caption,author\na.jpg,a cat,M\xfcller\n")
    (row,) = ingest(str(tmp_path / "m.csv"))
    assert row["reject"] is None and row["author"] == "M\ufffdller"  # BOM skipped, bad byte replaced
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg", "caption": "lone \\ud83d surrogate"}\n')
    (row,) = ingest(str(tmp_path / "m.jsonl"))
    assert row["caption"] == "lone \ufffd\ufffd\ufffd surrogate"


def test_editing_a_caption_sidecar_changes_the_listing(tmp_path, chelsea):
    (tmp_path / "a.jpg").write_bytes(jpeg(Image.fromarray(chelsea)))
    (tmp_path / "a.txt").write_text("old caption")
    stage = IngestImageText(source=str(tmp_path))
    before = next(stage.list_inputs()).column("_source_stat").to_pylist()
    (tmp_path / "a.txt").write_text("a new, longer caption")
    after = next(stage.list_inputs()).column("_source_stat").to_pylist()
    assert before != after


def test_user_columns_keep_their_types_and_names_that_clash_are_renamed(tmp_path):
    from jobs.demo_data import jpeg

    (tmp_path / "a.jpg").write_bytes(jpeg(Image.new("RGB", (64, 48), (200, 10, 10))))
    rows = [{"path": "a.jpg", "caption": "red", "width": 640, "score": 0.5, "tags": ["a", "b"], "ok": True,
             "size": "wide"},
            {"path": "a.jpg", "caption": "red", "width": 320, "score": 1, "tags": [], "ok": False, "size": 12}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = pa.concat_tables(list(IngestImageText(source=str(tmp_path / "m.jsonl")).list_inputs()))
    assert table.schema.field("src_width").type == pa.int64() and table.column("src_width").to_pylist() == [640, 320]
    assert table.schema.field("score").type == pa.float64() and table.column("ok").to_pylist() == [True, False]
    assert table.column("tags").to_pylist() == ['["a", "b"]', "[]"]
    assert table.column("size").to_pylist() == ["wide", "12"]  # mixed types: text
    assert json.loads(table.column("meta")[1].as_py())["size"] == 12  # and meta keeps the value as it came
