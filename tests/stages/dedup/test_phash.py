"""Perceptual dedup: hashes robust to re-encoding, halving and crops of up to 10% per
side on real photographs; chunk indexing finds every pair in range; the stage on Ray
with keep rules, caption+image keys, and an index round trip."""
from __future__ import annotations

import io
import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.demo_data import PHOTOS, photos
from stages.dedup.phash import DedupPhashParams, chunks_for, hamming, image_hashes

MAX = DedupPhashParams().max_distance
TEXTURES = {"brick", "gravel", "grass"}


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _variants(arr: np.ndarray, rng: random.Random, n: int) -> list[bytes]:
    """Re-encoded, halved, and cropped by up to 10% of each side (each independently)."""
    im = Image.fromarray(arr)
    w, h = im.size
    out = [_jpeg(im, 40), _jpeg(im.resize((w // 2, h // 2), Image.Resampling.BICUBIC))]
    while len(out) < n:
        cut = [rng.uniform(0, 0.1) for _ in range(4)]
        v = im.crop((int(cut[0] * w), int(cut[1] * h), int(w - cut[2] * w), int(h - cut[3] * h)))
        if rng.random() < 0.5:
            v = v.resize((v.width // 2, v.height // 2), Image.Resampling.BILINEAR)
        out.append(_jpeg(v, rng.choice([50, 75, 95])))
    return out


def _distance(a: np.ndarray, b: np.ndarray) -> int:
    """The stage's rule: the full hash of one against every (grid) hash of the other."""
    return int(min(hamming(a[0], b).min(), hamming(b[0], a).min()))


@pytest.fixture(scope="module")
def photo_bytes() -> dict[str, bytes]:
    return {name: _jpeg(Image.fromarray(arr)) for name, arr in photos().items()}


def test_variants_stay_near_and_distinct_photographs_stay_apart(photo_bytes):
    rng = random.Random(1)
    arrays = photos()
    hashes = {name: image_hashes(data) for name, data in photo_bytes.items()}
    assert all(h.dtype == np.uint64 and h.size == 81 for h in hashes.values())
    far = {}
    for name, arr in arrays.items():
        for data in _variants(arr, rng, 6):
            d = _distance(image_hashes(data), hashes[name])
            if d > MAX:
                far[name] = max(far.get(name, 0), d)
    # Textures are pHash's known weak spot: a crop of a brick wall or of gravel is
    # shifted by part of a brick or a stone, and their low frequencies barely carry
    # the picture. Every other photograph's variants are within MAX; textures' within
    # 2 bits more (bench/bench_phash.py gives the rates).
    assert set(far) <= TEXTURES and max(far.values(), default=0) <= MAX + 2, far
    names = list(hashes)
    nearest_other = min(_distance(hashes[a], hashes[b]) for i, a in enumerate(names) for b in names[i + 1:])
    assert nearest_other > MAX
    # Without the crop grid, crops are lost: that is why the grid exists.
    plain = {n: image_hashes(d, boxes=[(0, 0, 0, 0)]) for n, d in photo_bytes.items()}
    crop = arrays["astronaut"][50:-10, 40:-5]
    assert _distance(image_hashes(_jpeg(Image.fromarray(crop)), boxes=[(0, 0, 0, 0)]), plain["astronaut"]) > MAX


def test_dhash_survives_reencoding(photo_bytes):
    arr = photos()["coffee"]
    a = image_hashes(photo_bytes["coffee"], "dhash")
    b = image_hashes(_jpeg(Image.fromarray(arr), 30), "dhash")
    assert _distance(a, b) <= 4
    assert _distance(a, image_hashes(photo_bytes["rocket"], "dhash")) > MAX


@pytest.mark.parametrize("k", [0, 3, 8, 10, 15, 20])
def test_chunks_catch_every_pair_within_k(k):
    """Pigeonhole: any two hashes within k bits differ by <= 1 bit in some chunk."""
    rng = np.random.default_rng(k)
    chunks = chunks_for(k)
    assert sum(w for _, w in chunks) == 64 and min(s for s, _ in chunks) == 0
    base = rng.integers(0, 2**63, 2000, dtype=np.uint64)
    for _ in range(200):
        flips = rng.choice(64, rng.integers(0, k + 1), replace=False)
        other = base[0] ^ np.uint64(sum(1 << int(f) for f in flips))
        diffs = [bin((int(base[0]) >> s ^ int(other) >> s) & ((1 << w) - 1)).count("1") for s, w in chunks]
        assert min(diffs) <= 1


def _table(tmp_path, rows: list[dict], name: str) -> str:
    path = str(tmp_path / f"{name}.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _rows(photo_bytes, names, variants_per_photo, rng, caption=lambda name, i: PHOTOS[name]):
    arrays = photos()
    rows = []
    for name in names:
        items = [photo_bytes[name]] + _variants(arrays[name], rng, variants_per_photo)
        for i, data in enumerate(items):
            rows.append({"photo": name, "variant": i, "image": data, "caption": caption(name, i),
                         "quality": rng.random()})
    rng.shuffle(rows)
    return rows


def test_dedup_phash_on_ray_keeps_one_per_photograph(ray_session, tmp_path, monkeypatch, photo_bytes):
    import stages.dedup.near
    from pipeline import cli, fs, ledger

    monkeypatch.setattr(stages.dedup.near, "ROWS_PER_PARTITION", 2000)  # several partitions
    rows = _rows(photo_bytes, list(PHOTOS), 3, random.Random(2))
    out = str(tmp_path / "out")
    assert cli.main(["stage", "dedup_phash", "--input", _table(tmp_path, rows, "pairs"), "--output", out,
                     "--set", "keep=max:quality"]) == 0
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-dedup_phash"))
    rejects = fs.read_parquet_dir(os.path.join(out, "rejects", "01-dedup_phash"))
    kept_quality: dict[str, list[float]] = {}
    for photo, quality in zip(kept.column("photo").to_pylist(), kept.column("quality").to_pylist()):
        kept_quality.setdefault(photo, []).append(quality)
    assert set(kept_quality) == set(PHOTOS)  # every photograph survives
    for photo, qualities in kept_quality.items():
        # one each, but a texture's crop may stay apart (see the test above)
        assert len(qualities) == 1 or (photo in TEXTURES and len(qualities) == 2), (photo, qualities)
        assert max(r["quality"] for r in rows if r["photo"] == photo) in qualities  # keep=max:quality
    photo_of = dict(zip(kept.column("sample_id").to_pylist(), kept.column("photo").to_pylist()))
    for photo, dup_of, reason in zip(*(rejects.column(c).to_pylist() for c in ("photo", "duplicate_of",
                                                                                "reject_reason"))):
        assert reason == "duplicate" and photo_of[dup_of] == photo
    assert {"image", "caption", "variant", "cluster_id"} <= set(rejects.column_names)
    assert ledger.audit(out)["ok"]


def test_key_both_needs_the_caption_too(ray_session, tmp_path, photo_bytes):
    from pipeline import cli, fs

    def caption(name, i):  # variant 2 of every photo gets a caption of its own
        return f"completely different words number {i}" if i == 2 else PHOTOS[name]

    names = ["astronaut", "chelsea", "coffee", "rocket"]
    rows = _rows(photo_bytes, names, 3, random.Random(3), caption)
    out = str(tmp_path / "both")
    assert cli.main(["stage", "dedup_phash", "--input", _table(tmp_path, rows, "both"), "--output", out,
                     "--set", "key=both"]) == 0
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-dedup_phash"))
    # per photograph: the one with its own caption, and one of the rest
    own = [v == 2 for v in kept.column("variant").to_pylist()]
    assert sorted(zip(kept.column("photo").to_pylist(), own)) == sorted([(n, o) for n in names for o in (False, True)])


@pytest.mark.parametrize("reason", ["duplicate", "contaminated"])
def test_phash_index_round_trip(ray_session, tmp_path, photo_bytes, reason):
    from pipeline import cli, fs, ledger

    names = list(PHOTOS)
    first = [{"photo": n, "image": photo_bytes[n]} for n in names[:8]]
    rng = random.Random(4)
    arrays = photos()
    second = [{"photo": n, "image": photo_bytes[n]} for n in names[8:]]
    second += [{"photo": f"{n}-variant", "image": _variants(arrays[n], rng, 3)[2]} for n in names[:3]]
    run1, run2 = str(tmp_path / "r1"), str(tmp_path / "r2")
    assert cli.main(["stage", "dedup_phash", "--input", _table(tmp_path, first, "first"), "--output", run1]) == 0
    index = os.path.join(run1, "index", "dedup_phash")
    assert json.loads(fs.read_bytes(os.path.join(index, "index.json")))["algorithm"] == "phash"
    assert cli.main(["stage", "dedup_phash", "--input", _table(tmp_path, second, "second"), "--output", run2,
                     "--set", f"against_reason={reason}", "--against", index]) == 0
    rejects = fs.read_parquet_dir(os.path.join(run2, "rejects", "01-dedup_phash"))
    assert dict(zip(rejects.column("photo").to_pylist(), rejects.column("reject_reason").to_pylist())) == {
        f"{n}-variant": reason for n in names[:3]}
    assert ledger.audit(run2)["ok"]
    # an index made with other settings is refused with a clear error
    assert cli.main(["stage", "dedup_phash", "--input", _table(tmp_path, second, "second"), "--output",
                     str(tmp_path / "r3"), "--set", "algorithm=dhash", "--against", index]) == 2
