"""filter_audio_quality on recordings made with known faults, measured by ingest_audio."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import soxr

from jobs.demo_audio_data import speak
from pipeline import ledger
from stages.filters.audio_quality import FilterAudioQuality
from stages.filters.caption_quality import FilterCaptionQuality
from stages.ingest.audio_text import IngestAudio


def ingest(source: str) -> pa.Table:
    stage = IngestAudio(source=source)
    stage.ensure_setup()
    (table,) = list(stage.list_inputs())
    return stage.process(ledger.ensure_reject_column(table).drop_columns(["reject"]))


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> pa.Table:
    d = tmp_path_factory.mktemp("faults")
    x, rate = sf.read(speak("Six spoons of fresh snow peas and five thick slabs of blue cheese.", str(d / "s.wav")),
                      dtype="float32")
    x = 0.9 * x / np.abs(x).max()
    frames = x[: len(x) // 441 * 441].reshape(-1, 441)
    power = (frames ** 2).mean(axis=1)
    speech_power = power[power > 1e-6].mean()
    noise = np.random.default_rng(0).normal(0, np.sqrt(speech_power / 10 ** 0.3), len(x))  # a true SNR of 3 dB
    full = np.clip(np.random.default_rng(1).normal(0, 1.0, rate * 3), -1, 1)
    faults = {
        "good": x,
        "short": x[: int(0.7 * rate)],
        "quiet": x * 10 ** (-40 / 20),
        "loud": full,
        "clipped": np.clip(4 * x, -1, 1),
        "noisy": np.clip(x + noise, -1, 1),
        "mostly_silent": np.concatenate([x, np.zeros(2 * len(x), np.float32)]),
        "narrowband": soxr.resample(soxr.resample(x, rate, 8000), 8000, rate),
    }
    for name, samples in faults.items():
        sf.write(d / f"{name}.wav", samples.astype(np.float32), rate, subtype="PCM_16")
        (d / f"{name}.txt").write_text("a recording" if name != "good" else "untitled")
    (d / "s.wav").unlink()
    return ingest(str(d))


def test_each_fault_gets_its_reason(faulty):
    out = FilterAudioQuality().process(faulty)
    got = {r["source_uri"].rsplit("/", 1)[1][:-4]: (r["reject"] or {}).get("reason", "kept") for r in out.to_pylist()}
    assert got == {"good": "kept", "short": "too_short", "quiet": "too_quiet", "loud": "too_loud",
                   "clipped": "clipped", "noisy": "noisy", "mostly_silent": "mostly_silent",
                   "narrowband": "narrowband"}
    detail = {r["source_uri"].rsplit("/", 1)[1]: r["reject"]["detail"] for r in out.to_pylist() if r["reject"]}
    assert "< min_bandwidth_hz=4500" in detail["narrowband.wav"] and "Hz" in detail["narrowband.wav"]


def test_a_test_switched_off_keeps_what_it_would_reject(faulty):
    out = FilterAudioQuality(min_bandwidth_hz=None, max_clipping_ratio=None).process(faulty)
    got = {r["source_uri"].rsplit("/", 1)[1][:-4]: (r["reject"] or {}).get("reason", "kept") for r in out.to_pylist()}
    assert got["narrowband"] == "kept" and got["clipped"] == "kept" and got["noisy"] == "noisy"
    assert "bandwidth_hz" not in FilterAudioQuality(min_bandwidth_hz=None).reads()


def test_an_unknown_metric_is_not_judged():
    batch = pa.table({"duration": [5.0], "loudness_lufs": [-20.0], "clipping_ratio": [0.0], "snr_db": [None],
                      "silence_ratio": [0.1], "bandwidth_hz": [None]},
                     schema=pa.schema([("duration", pa.float64()), ("loudness_lufs", pa.float64()),
                                       ("clipping_ratio", pa.float64()), ("snr_db", pa.float64()),
                                       ("silence_ratio", pa.float64()), ("bandwidth_hz", pa.float64())]))
    out = FilterAudioQuality().process(batch)
    assert "reject" not in out.column_names or out.column("reject").to_pylist() == [None]


def test_transcripts_go_through_the_text_filters_by_text_column(faulty):
    out = FilterCaptionQuality(text_column="text").process(faulty)
    got = {r["source_uri"].rsplit("/", 1)[1]: (r["reject"] or {}).get("reason") for r in out.to_pylist()}
    assert got["good.wav"] == "boilerplate_caption" and got["short.wav"] is None
