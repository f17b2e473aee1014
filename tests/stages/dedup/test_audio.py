"""dedup_audio: Chromaprint fingerprints, alignment, steady sound, and runs on Ray."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import soundfile as sf
import soxr

from bench.bench_audio_dedup import shaped_noise, variants
from jobs.demo_audio_data import chords, speak, tone
from stages.dedup.audio import DedupAudio, bit_error_rate, fingerprint, fingerprint_media, informative

RATE = 22_050
SENTENCES = ["Seven yellow trains wait at the station in the morning.",
             "A letter on the garden table under the bright window.",
             "Cold water runs over the stone near the mountain house."]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, np.ndarray]:
    d = tmp_path_factory.mktemp("speech")
    out = {}
    for i, text in enumerate(SENTENCES):
        x, rate = sf.read(speak(text, str(d / f"{i}.wav")), dtype="float32")
        out[f"speech{i}"] = soxr.resample(x, rate, RATE) if rate != RATE else x
    out["chords"] = chords(6, RATE, seed=3)
    out["noise"] = shaped_noise(7, 5.0)
    return out


def prints_of(recordings, tmp_path):
    rng = random.Random(0)
    prints, source = {}, {}
    for name, x in recordings.items():
        items, seconds = fingerprint(x, RATE)
        prints[name], source[name] = {"seconds": seconds, "items": items}, name
        for v, (y, rate) in variants(x, rng, str(tmp_path)).items():
            items, seconds = fingerprint(y, rate)
            prints[f"{name}/{v}"], source[f"{name}/{v}"] = {"seconds": seconds, "items": items}, name
    return prints, source


def test_variants_are_near_and_distinct_recordings_are_not(recordings, tmp_path):
    stage = DedupAudio()
    prints, source = prints_of(recordings, tmp_path)
    names = sorted(prints)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert stage.near(prints[a], prints[b]) == (source[a] == source[b]), (a, b)


def test_the_alignment_is_found_and_excerpts_are_not_copies(recordings):
    x = recordings["speech0"]
    cut = int(0.08 * len(x))
    a, _ = fingerprint(x, RATE)
    b, _ = fingerprint(x[cut:], RATE)
    ber, offset = bit_error_rate(a, b)
    assert ber < 0.05 and abs(offset - round(cut / RATE * 24)) <= 2  # about 24 sub-fingerprints a second
    long_ = np.concatenate([recordings["speech0"], recordings["speech1"], recordings["speech2"]])
    whole, part = fingerprint(long_, RATE), fingerprint(recordings["speech1"], RATE)
    assert not DedupAudio().near({"seconds": whole[1], "items": whole[0]}, {"seconds": part[1], "items": part[0]})


def test_short_fingerprints_are_aligned_even_when_no_value_is_equal():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32)
    b = a[20:180] ^ (np.uint32(1) << rng.integers(0, 28, 160).astype(np.uint32))  # one low bit off in every one
    assert not np.intersect1d(a & np.uint32(0x0FFFFFFF), b & np.uint32(0x0FFFFFFF)).size
    ber, offset = bit_error_rate(a, b)
    assert offset == 20 and ber == pytest.approx(1 / 32)


def test_long_fingerprints_are_aligned_by_votes():
    from stages.dedup.audio import EXHAUSTIVE

    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**32, 2400, dtype=np.uint64).astype(np.uint32)
    b = a[300:2200].copy()
    b ^= (rng.random((len(b), 32)) < 0.03).astype(np.uint32) @ (np.uint32(1) << np.arange(32, dtype=np.uint32))
    assert len(a) * len(b) > EXHAUSTIVE
    ber, offset = bit_error_rate(a, b)
    assert offset == 300 and 0.02 < ber < 0.04


def test_steady_tones_are_not_compared():
    a, _ = fingerprint(tone(440, 5, RATE), RATE)
    b, _ = fingerprint(tone(1000, 5, RATE), RATE)
    assert bit_error_rate(a, b)[0] < 0.13  # Chromaprint alone would call these copies
    assert not informative(a, 8) and not informative(b, 8)
    assert informative(fingerprint(chords(6, RATE), RATE)[0], 8)


def test_a_stored_file_is_fingerprinted_in_blocks_and_broken_bytes_raise(recordings, tmp_path):
    path = tmp_path / "x.flac"
    sf.write(path, recordings["speech1"], RATE)
    items, seconds = fingerprint_media(path.read_bytes(), 60, 3600)
    assert seconds == pytest.approx(len(recordings["speech1"]) / RATE, abs=0.01)
    np.testing.assert_array_equal(items, fingerprint(recordings["speech1"], RATE)[0])
    only_first, secs = fingerprint_media(path.read_bytes(), 60, 1.5)
    assert secs == pytest.approx(1.5, abs=0.01) and len(only_first) < len(items)
    with pytest.raises(Exception):
        fingerprint_media(b"<!DOCTYPE html><html>not audio</html>", 60, 3600)


def _folder(path, files: dict[str, tuple[np.ndarray, int]]) -> str:
    os.makedirs(path, exist_ok=True)
    for name, (x, rate) in files.items():
        sf.write(os.path.join(path, name + ".wav"), x, rate, subtype="PCM_16")
        with open(os.path.join(path, name + ".txt"), "w") as f:
            f.write(name.replace("_", " "))
    return str(path)


def test_dedup_audio_on_ray_with_an_index(ray_session, tmp_path, recordings, monkeypatch):
    import stages.dedup.near
    from pipeline import fs, ledger
    from pipeline.job import parse_job
    from pipeline.runner import Runner

    monkeypatch.setattr(stages.dedup.near, "ROWS_PER_PARTITION", 400)  # several partitions
    rng = random.Random(5)
    first = {name: (x, RATE) for name, x in recordings.items() if name != "speech2"}
    for name in ("speech0", "chords"):
        for v, pair in variants(recordings[name], rng, str(tmp_path)).items():
            if v in ("16k", "volume", "trim"):
                first[f"{name}_{v}"] = pair
    first["tone_a"], first["tone_b"] = (tone(440, 4, RATE), RATE), (tone(660, 4, RATE), RATE)
    job = lambda source: parse_job({"name": "a", "stages": [  # noqa: E731
        {"ingest_audio": {"source": source, "min_seconds": 0.5}},
        {"dedup_audio": {"keep": "largest"}}]})
    run1 = str(tmp_path / "r1")
    Runner(job(_folder(tmp_path / "in1", first)), run1, log=lambda *a: None).run()
    assert ledger.audit(run1)["ok"]
    segs = sorted(os.listdir(os.path.join(run1, "stages")))
    kept = fs.read_parquet_dir(os.path.join(run1, "stages", segs[-1]))
    rejects = fs.read_parquet_dir(os.path.join(run1, "rejects", segs[-1]))
    name = lambda uri: uri.rsplit("/", 1)[1][:-4]  # noqa: E731
    kept_names = sorted(name(u) for u in kept.column("source_uri").to_pylist())
    # keep=largest: the most original bytes (the 16 kHz copy is smaller; the trim is shorter)
    assert kept_names == ["chords", "noise", "speech0", "speech1", "tone_a", "tone_b"]
    by_id = dict(zip(kept.column("sample_id").to_pylist(), kept_names))
    dups = {name(u): (r, by_id[d]) for u, r, d in zip(rejects.column("source_uri").to_pylist(),
                                                     rejects.column("reject_reason").to_pylist(),
                                                     rejects.column("duplicate_of").to_pylist())}
    assert dups == {f"{n}_{v}": ("duplicate", n) for n in ("speech0", "chords") for v in ("16k", "volume", "trim")}
    index = os.path.join(run1, "index", "dedup_audio")
    assert json.loads(fs.read_bytes(os.path.join(index, "index.json")))["fingerprint"] == "chromaprint-slowed-3x"

    second = {"speech2": (recordings["speech2"], RATE)}
    second["speech1_mp3"] = variants(recordings["speech1"], rng, str(tmp_path))["mp3_64k"]
    job2 = parse_job({"name": "b", "stages": [
        {"ingest_audio": {"source": _folder(tmp_path / "in2", second), "min_seconds": 0.5}},
        {"dedup_audio": {"against": [index], "against_reason": "contaminated"}}]})
    run2 = str(tmp_path / "r2")
    Runner(job2, run2, log=lambda *a: None).run()
    rejects = fs.read_parquet_dir(os.path.join(run2, "rejects", sorted(os.listdir(os.path.join(run2, "stages")))[-1]))
    assert [(name(u), r) for u, r in zip(rejects.column("source_uri").to_pylist(),
                                         rejects.column("reject_reason").to_pylist())] == [("speech1_mp3", "contaminated")]
    assert ledger.audit(run2)["ok"]
