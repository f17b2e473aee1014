"""embed_clap: CLAP embeddings of audio (window by window) and text, models from directories."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from stages.features.clap import ClapEncoder, EmbedClap, log_mel, read_windows, windows
from stages.features.models import CLAP_RATE, save_tiny_clap


def flac(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="FLAC")
    return buf.getvalue()


def tones(seconds: float, rate: int = 22_050, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freq = np.repeat(rng.uniform(200, 2000, int(seconds) + 1), rate)[: len(t)]
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def stage():
    s = EmbedClap(model="tiny-random")
    s.ensure_setup()
    return s


def test_a_long_recording_is_the_mean_of_its_windows(stage):
    x = tones(30)
    (emb,) = stage.process(pa.table({"audio": pa.array([flac(x, 22_050)], pa.large_binary()),
                                     "text": ["tones"], "meta": ["{}"]})).column("clap_audio_emb").to_pylist()
    parts = windows(x[:, None], 22_050, 60)
    assert len(parts) == 3 and all(len(p) == 10 * CLAP_RATE for p in parts)
    read = read_windows(flac(x, 22_050), 60)  # by seeking in the encoded file: the same windows (each
    inner = slice(4800, -4800)                # resampled alone: only its first and last 0.1 s differ)
    assert len(read) == 3 and all(np.abs(a[inner] - b[inner]).max() < 1e-3 for a, b in zip(read, parts))
    evenly = read_windows(flac(tones(95), 22_050), 4)  # 10 windows' worth, 4 taken evenly: 0, 30, 60, 90 s
    assert [len(w) for w in evenly] == [10 * CLAP_RATE] * 3 + [5 * CLAP_RATE]
    each = stage.encoder.encode_windows(log_mel(stage.encoder.loaded.features, parts)).astype(np.float32)
    mean = each.mean(axis=0)
    np.testing.assert_allclose(np.asarray(emb, np.float32), mean / np.linalg.norm(mean), atol=2e-3)
    assert abs(np.linalg.norm(np.asarray(emb, np.float32)) - 1) < 2e-3


def test_text_score_meta_and_a_saved_model(stage, tmp_path):
    import json

    batch = pa.table({"audio": pa.array([flac(tones(3, seed=i), 22_050) for i in range(3)], pa.large_binary()),
                      "text": ["a", "b", "c"], "meta": ["{}"] * 3})
    out = stage.process(batch)
    a, t = (np.stack(out.column(c).to_pylist()).astype(np.float32) for c in ("clap_audio_emb", "clap_text_emb"))
    np.testing.assert_allclose(out.column("clap_score").to_numpy(), (a * t).sum(axis=1), atol=2e-3)
    features = json.loads(out.column("meta")[0].as_py())["features"]
    assert features["clap_audio_emb"]["random_weights"] is True and len(features["clap_audio_emb"]["sha256"]) == 64
    path = save_tiny_clap(str(tmp_path / "clap"))
    loaded = EmbedClap(model=path)
    loaded.ensure_setup()
    np.testing.assert_allclose(np.stack(loaded.process(batch).column("clap_audio_emb").to_pylist()).astype(np.float32),
                               a, atol=2e-3)
    with pytest.raises(ValueError, match="expected 'clap'"):
        from stages.features.models import save_tiny_clip

        EmbedClap(model=save_tiny_clip(str(tmp_path / "clip")))


def test_undecodable_audio_is_a_reject_of_its_own(stage):
    batch = pa.table({"audio": pa.array([b"not audio", flac(tones(2), 22_050)], pa.large_binary()),
                      "text": ["x", "y"], "meta": ["{}"] * 2})
    out = stage.process(batch)
    rejects = {r["text"]: (r["reject"] or {}).get("reason") for r in out.to_pylist()}
    assert rejects == {"x": "undecodable_audio", "y": None}
    assert ClapEncoder is not None
