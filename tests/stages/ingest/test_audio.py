"""ingest_audio and its signal metrics, on generated audio whose true values are known."""
from __future__ import annotations

import io
import json
import math
import os
import tarfile

import numpy as np
import pytest
import soundfile as sf

from pipeline import ledger
from stages.ingest.audio import Meter
from stages.ingest.audio_text import IngestAudio

RATE = 48_000


def measure(x: np.ndarray, rate: int = RATE, block: int = 4800) -> dict:
    x = x.reshape(len(x), -1).astype(np.float32)
    m = Meter(rate, x.shape[1])
    for i in range(0, len(x), block):
        m.add(x[i:i + block])
    return m.metrics()


def sine(freq=1000.0, seconds=3.0, amplitude=0.5, rate=RATE, phase=0.0):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def test_levels_of_a_sine_of_known_amplitude():
    m = measure(sine(amplitude=0.5))
    assert m["peak_dbfs"] == pytest.approx(20 * math.log10(0.5), abs=0.01)
    assert m["rms_dbfs"] == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    assert abs(m["dc_offset"]) < 1e-4 and m["clipping_ratio"] == 0 and m["duration"] == pytest.approx(3.0)
    assert measure(sine() + 0.1)["dc_offset"] == pytest.approx(0.1, abs=1e-3)


def test_loudness_agrees_with_pyloudnorm_and_does_not_depend_on_blocks():
    import pyloudnorm

    rng = np.random.default_rng(0)
    for x in (sine(440, 5, 0.3), (0.1 * rng.standard_normal(5 * RATE)).astype(np.float32),
              np.stack([sine(200, 5, 0.2), sine(3000, 5, 0.05)], axis=1)):
        reference = pyloudnorm.Meter(RATE).integrated_loudness(x.astype(np.float64))
        assert measure(x)["loudness_lufs"] == pytest.approx(reference, abs=0.05)
        assert measure(x, block=977)["loudness_lufs"] == pytest.approx(measure(x)["loudness_lufs"], abs=1e-6)
    # BS.1770's own reference: a 997 Hz sine at -20 dBFS (peak) in one channel reads -23.0 LUFS
    assert measure(sine(997, 10, 0.1))["loudness_lufs"] == pytest.approx(-23.01, abs=0.05)


def test_true_peak_sees_between_the_samples():
    x = sine(RATE / 4, 2, 0.8, phase=math.pi / 4)  # samples land at 0.707 of each crest
    m = measure(x)
    assert m["peak_dbfs"] == pytest.approx(20 * math.log10(0.8 * math.sqrt(0.5)), abs=0.05)
    assert m["true_peak_dbtp"] == pytest.approx(20 * math.log10(0.8), abs=0.3)


def test_clipping_ratio_of_a_clipped_sine():
    x = np.clip(sine(amplitude=2.0), -1.0, 1.0)
    assert measure(x)["clipping_ratio"] == pytest.approx(float((np.abs(x) >= 0.999).mean()), abs=1e-6)
    assert measure(x)["clipping_ratio"] > 0.6


@pytest.mark.parametrize("snr", [10.0, 20.0])
def test_snr_of_tone_bursts_in_white_noise(snr):
    rng = np.random.default_rng(1)
    bursts = np.concatenate([np.concatenate([sine(500, 1.0, 0.5), np.zeros(RATE, np.float32)]) for _ in range(4)])
    noise_power = (0.5 ** 2 / 2) / 10 ** (snr / 10)
    x = bursts + math.sqrt(noise_power) * rng.standard_normal(len(bursts)).astype(np.float32)
    assert measure(x)["snr_db"] == pytest.approx(snr, abs=1.0)
    assert measure(sine())["snr_db"] is None  # no pause to hear the noise in


def test_bandwidth_tells_upsampled_audio():
    import soxr

    rng = np.random.default_rng(2)
    # pink-ish noise (power falling 20 dB a decade, as speech's does) through 8 and 16 kHz
    white = rng.standard_normal(RATE * 4)
    f = np.fft.rfftfreq(len(white), 1 / RATE)
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(np.maximum(f, 50) / 50), len(white))
    pink = (0.3 * pink / np.abs(pink).max()).astype(np.float32)
    def through(rate):
        return soxr.resample(soxr.resample(pink, RATE, rate), rate, RATE)
    assert 3600 < measure(through(8000))["bandwidth_hz"] < 4000
    assert 7200 < measure(through(16000))["bandwidth_hz"] < 8000
    assert measure(pink)["bandwidth_hz"] > 20000
    assert measure(sine(500))["bandwidth_hz"] == pytest.approx(500, abs=60)  # a tone is as wide as itself


def test_silence_ratio():
    x = np.concatenate([sine(seconds=1.0), np.zeros(RATE, np.float32), sine(seconds=2.0)])
    assert measure(x)["silence_ratio"] == pytest.approx(0.25, abs=0.01)


# -- the stage -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_set(tmp_path_factory):
    from jobs.demo_audio_data import make_audio_demo

    out = str(tmp_path_factory.mktemp("audio"))
    info = make_audio_demo(out)
    info["dir"] = out
    return info


def ingest(source: str, **params) -> list[dict]:
    stage = IngestAudio(source=source, **params)
    stage.ensure_setup()
    rows = []
    for table in stage.list_inputs():
        live, dead = ledger.split_live(ledger.ensure_reject_column(table))
        rows += dead.to_pylist()
        if live.num_rows:
            rows += stage.process(live.drop_columns(["reject"])).to_pylist()
    return rows


def test_every_broken_recording_has_its_reason_and_the_rest_decode(audio_set):
    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in ingest(audio_set["dir"])}
    got = {name: (r["reject"]["reason"] if r["reject"] else "kept") for name, r in rows.items()}
    assert got == audio_set["expected"]
    for name, r in rows.items():
        if r["reject"]:
            assert name in r["reject"]["detail"]
            assert "DOCTYPE" not in r["reject"]["detail"]  # never the file's bytes
    codecs = {name: rows[name]["codec"] for name in ("variant_mp3_64k.mp3", "variant_opus.opus", "variant_aac.m4a")}
    assert codecs == {"variant_mp3_64k.mp3": "mp3/mpeg_layer_iii", "variant_opus.opus": "ogg/opus",
                      "variant_aac.m4a": "aac"}
    speech = rows["speech_00.wav"]
    assert speech["text"] == "The quick brown fox jumps over the lazy dog."
    assert speech["audio_format"] == "flac" and sf.info(io.BytesIO(speech["audio"])).channels == 1
    assert rows["remux_copy.flac"]["pcm_sha256"] == speech["pcm_sha256"]  # the same samples in another container
    assert rows["remux_copy.flac"]["content_sha256"] != speech["content_sha256"]
    cues = json.loads(rows["long_talk.wav"]["transcript_segments"])
    assert len(cues) == 6 and cues[1]["text"].startswith("First, the spring plant sale")


def test_resampling_channels_and_keeping_the_original(audio_set, tmp_path):
    stereo = np.stack([sine(440, 2, 0.3, 44_100), sine(660, 2, 0.3, 44_100)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 44_100)
    (tmp_path / "s.txt").write_text("two tones")
    (row,) = ingest(str(tmp_path), sample_rate=16_000, channels="keep")
    assert (row["sample_rate"], row["channels"], row["original_sample_rate"]) == (16_000, 2, 44_100)
    data, rate = sf.read(io.BytesIO(row["audio"]))
    assert rate == 16_000 and data.shape == (32_000, 2)
    (kept,) = ingest(str(tmp_path), channels="keep", encode_format="keep")
    assert kept["audio_format"] == "wav" and kept["audio"] == (tmp_path / "s.wav").read_bytes()


def test_nemo_manifest_and_tar_sources(audio_set, tmp_path):
    manifest = tmp_path / "nemo.json"
    manifest.write_text("".join(json.dumps({"audio_filepath": f"audio/{n}", "duration": 3.0, "text": f"line {n}"})
                                + "\n" for n in ("speech_01.wav", "speech_02.wav")))
    (tmp_path / "audio").symlink_to(audio_set["dir"])
    rows = ingest(str(manifest), allowed_roots=[audio_set["dir"]])
    assert [r["text"] for r in rows] == ["line speech_01.wav", "line speech_02.wav"] and not any(r["reject"] for r in rows)
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for member in ("long_talk.wav", "long_talk.srt"):
            tf.add(os.path.join(audio_set["dir"], member), arcname=member)
    (row,) = ingest(str(tmp_path / "a.tar"))
    assert row["reject"] is None and len(json.loads(row["transcript_segments"])) == 6


def test_the_report_gets_a_waveform_and_a_playable_excerpt():
    column = next(c for c in IngestAudio(source="x").adds() if c.name == "audio")
    buf = io.BytesIO()
    sf.write(buf, sine(440, 12.0, 0.3), RATE, format="FLAC")
    assert column.preview(buf.getvalue())[:8] == b"\x89PNG\r\n\x1a\n"
    mime, data = column.excerpt(buf.getvalue())
    clip, rate = sf.read(io.BytesIO(data))
    assert mime == "audio/ogg" and rate == 16_000 and len(clip) == 8 * 16_000  # the first 8 s
    assert len(data) < len(buf.getvalue()) / 4


def test_too_long_from_the_header_without_decoding(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros(10 * 8000, np.float32) + 0.1, 8000)
    (row,) = ingest(str(tmp_path), max_seconds=5)
    assert row["reject"]["reason"] == "too_long" and "from the header" in row["reject"]["detail"]
