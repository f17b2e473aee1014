"""Each filter on fixtures just inside and just outside its thresholds."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from jobs.demo_data import photos
from pipeline import ledger
from stages.filters.caption_quality import FilterCaptionQuality, repeated_ngram_share
from stages.filters.datacomp import FilterDatacompBasic
from stages.filters.image_quality import FilterImageQuality, measure
from stages.filters.privacy import BlurFaces, RedactPii, detect_faces, redact
from stages.filters.toxic import FilterToxicText, wordlist


def _run(stage, table: pa.Table) -> dict[str, str | None]:
    """sample_id -> reject reason (None = kept)."""
    stage.ensure_setup()
    out = stage.process(table)
    reasons = [r["reason"] if r else None for r in out.column("reject").to_pylist()] if "reject" in \
        out.column_names else [None] * out.num_rows
    return dict(zip(out.column("sample_id").to_pylist(), reasons))


def _table(**columns) -> pa.Table:
    n = len(next(iter(columns.values())))
    return pa.table({"sample_id": [f"s{i}" for i in range(n)], "ordinal": list(range(n)), **columns})


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_datacomp_basic_at_its_thresholds():
    t = _table(caption=["a red cat", "red cat", "a b c", "a red cat", "a red cat", "a red cat", "a red cat"],
               original_width=[300, 300, 300, 300, 199, 600, 601], original_height=[200, 200, 200, 200, 300, 200, 200])
    got = _run(FilterDatacompBasic(), t)
    assert got == {"s0": None, "s1": "caption_too_short", "s2": "caption_too_short", "s3": None,
                   "s4": "image_too_small", "s5": None, "s6": "extreme_aspect_ratio"}


def test_image_quality_blank_blurry_and_sizes():
    arr = photos()["astronaut"]
    sharp = Image.fromarray(arr)
    blurred = sharp.filter(ImageFilter.GaussianBlur(12))
    flat = Image.new("RGB", (256, 256), (120, 130, 140))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    tiny = sharp.resize((20, 20))
    images = [_jpeg(im) for im in (sharp, blurred, flat, noise, tiny)]
    got = _run(FilterImageQuality(), _table(image=pa.array(images, pa.large_binary())))
    assert got == {"s0": None, "s1": "blurry", "s2": "low_entropy", "s3": None, "s4": "extreme_size"}
    # just below / just above the thresholds: the measured value itself decides
    entropy, sharpness, _, _ = measure(images[0])
    one = _table(image=pa.array(images[:1], pa.large_binary()))
    assert _run(FilterImageQuality(min_sharpness=sharpness - 0.01), one)["s0"] is None
    assert _run(FilterImageQuality(min_sharpness=sharpness + 0.01), one)["s0"] == "blurry"
    assert _run(FilterImageQuality(min_entropy=entropy - 0.001), one)["s0"] is None
    assert _run(FilterImageQuality(min_entropy=entropy + 0.001), one)["s0"] == "low_entropy"


def test_caption_quality_language_repetition_and_boilerplate():
    captions = ["a brown dog runs across the green field", "un chien brun court à travers le champ vert",
                "ein brauner Hund läuft über die grüne Wiese", "dog", "IMG_20230101_1234.jpg", "untitled",
                "https://example.com/photo.jpg", "DSC01234", "buy now buy now buy now buy now buy now",
                "a photo of a cat"]
    got = _run(FilterCaptionQuality(), _table(caption=captions))
    assert got == {"s0": None, "s1": "wrong_language", "s2": "wrong_language", "s3": None,
                   "s4": "boilerplate_caption", "s5": "boilerplate_caption", "s6": "boilerplate_caption",
                   "s7": "boilerplate_caption", "s8": "repetitive_caption", "s9": None}
    # 10 word 3-grams of which 3 repeat an earlier one: 0.3, on the threshold (kept), then above it
    text = "one two three four five six seven one two three four five"
    assert repeated_ngram_share(text) == pytest.approx(0.3)
    assert _run(FilterCaptionQuality(max_repeated_ngrams=0.3), _table(caption=[text]))["s0"] is None
    assert _run(FilterCaptionQuality(max_repeated_ngrams=0.29), _table(caption=[text]))["s0"] == "repetitive_caption"


@pytest.mark.parametrize("text,expected,counts", [
    ("mail jane.doe@example.org now", "mail <EMAIL> now", {"email": 1}),
    ("call +1 (555) 123-4567 or 030 1234567", "call <PHONE> or <PHONE>", {"phone": 2}),
    ("server 192.168.0.1 and 2001:db8::1", "server <IP> and <IP>", {"ip": 2}),
    ("see https://bob:s3cret@example.com/x", "see https://<CREDENTIALS>@example.com/x", {"credentials": 1}),
    ("a cat in 2024 with 3 kittens, 1080p", "a cat in 2024 with 3 kittens, 1080p", {}),
])
def test_redact_pii_placeholders(text, expected, counts):
    assert redact(text) == (expected, counts)


def test_redact_pii_stage_counts():
    t = _table(caption=["write to a@b.io or c@d.io", "nothing here"], meta=[None, json.dumps({"k": 1})])
    stage = RedactPii()
    out = stage.process(t)
    assert out.column("caption").to_pylist() == ["write to <EMAIL> or <EMAIL>", "nothing here"]
    assert out.column("pii_redacted").to_pylist() == [2, 0]
    assert json.loads(out.column("meta")[0].as_py()) == {"pii": {"email": 2}}


def test_faces_found_and_blurred_only_where_there_are_faces():
    arrays = photos()
    astronaut = Image.fromarray(arrays["astronaut"])
    boxes = detect_faces(astronaut)
    assert len(boxes) >= 1
    x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
    assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 200  # Eileen Collins' face, upper middle
    for name in ("coffee", "rocket", "coins"):
        assert detect_faces(Image.fromarray(arrays[name])) == [], name
    t = _table(image=pa.array([_jpeg(astronaut), _jpeg(Image.fromarray(arrays["coffee"]))], pa.large_binary()),
               image_format=["jpg", "jpg"])
    stage = BlurFaces()
    out = stage.process(t)
    assert out.column("faces_blurred").to_pylist()[0] >= 1 and out.column("faces_blurred").to_pylist()[1] == 0
    before = np.asarray(astronaut.convert("L"), np.float32)[y:y + h, x:x + w]
    after = np.asarray(Image.open(io.BytesIO(out.column("image")[0].as_py())).convert("L"), np.float32)[y:y + h,
                                                                                                       x:x + w]
    lap = lambda a: np.var(a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4 * a[1:-1, 1:-1])  # noqa: E731
    assert lap(after) < lap(before) / 5  # the face lost its detail
    assert out.column("image")[1].as_py() == t.column("image")[1].as_py()  # no face: bytes untouched


def test_toxic_word_list_is_offline_and_matches_whole_words():
    words = wordlist()
    assert len(words) > 500
    bad = words[0]
    t = _table(caption=[f"a caption with {bad} in it", "a perfectly clean caption", f"un{bad}ish as one word"])
    got = _run(FilterToxicText(), t)
    assert got == {"s0": "toxic_text", "s1": None, "s2": None}
    assert _run(FilterToxicText(allow_terms=[bad]), t)["s0"] is None
    assert _run(FilterToxicText(extra_terms=["clean"]), t)["s1"] == "toxic_text"
    out = FilterToxicText()
    out.ensure_setup()
    assert bad in ledger.split_live(out.process(t))[1].column("reject")[0].as_py()["detail"]


@pytest.mark.parametrize("text", ["Meeting at 10:30:45", "beef:cafe:dead", "Photo taken 2019-05-12",
                                  "population 8336817", "1 2 3 4", "score 3.5 - 4.2"])
def test_redact_pii_leaves_ordinary_numbers_alone(text):
    assert redact(text) == (text, {})
