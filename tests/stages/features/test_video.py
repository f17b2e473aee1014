"""measure_video (keyframe strip, frame hashes, motion, the sound's metrics) and embed_clip
pooling a clip's keyframes into clip_video_emb."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from stages.features.video import MeasureVideo, split_strip


def _measure(video_set, name, **params):
    data = open(os.path.join(video_set["dir"], name), "rb").read()
    return MeasureVideo(params).measure({"video": data, "source_uri": name})


def test_keyframes_are_one_strip_of_evenly_spaced_frames(video_set):
    m = _measure(video_set, "fractal.mp4", keyframes=6, keyframe_height=120, audio="skip")
    times = np.array(json.loads(m["keyframe_times"]))
    assert m["keyframe_count"] == 6 and np.all(np.diff(times) > 0) and times[0] < 1.0 and times[-1] > 7.0
    frames = split_strip(m["keyframes"], m["keyframe_count"])
    assert len(frames) == 6 and {f.shape for f in frames} == {(120, 160, 3)}
    # the frames differ (a zoom), and each is a picture, not a flat colour
    assert min(float(np.abs(a.astype(int) - b).mean()) for a, b in zip(frames, frames[1:])) > 1.0
    assert len(m["frame_phash"]) == 32  # 8 s at 4 a second


def test_motion_tells_a_still_picture_from_a_moving_one(video_set):
    still, zoom, pattern = (_measure(video_set, n, audio="skip") for n in ("still.mp4", "portrait.mp4",
                                                                           "pattern.mp4"))
    assert still["motion_score"] < 0.001 < zoom["motion_score"] < pattern["motion_score"]
    assert still["luma_std"] > 20  # a still photograph is not blank


def test_the_sound_is_measured_and_extracted(video_set):
    beep = _measure(video_set, "pattern.mp4", audio="extract")
    talk = _measure(video_set, "talk.mp4", audio="measure")
    silent = _measure(video_set, "silent.mp4", audio="extract")
    assert -30 < beep["loudness_lufs"] < -10 and beep["silence_ratio"] < 0.05
    assert talk["silence_ratio"] > beep["silence_ratio"] and talk["bandwidth_hz"] > 3000
    assert "audio" not in talk and silent.get("loudness_lufs") is None and silent.get("audio") is None
    samples, rate = sf.read(io.BytesIO(beep["audio"]))
    assert rate == 48_000 and beep["audio_format"] == "flac" and abs(len(samples) / rate - 6.0) < 1.0
    spectrum = np.abs(np.fft.rfft(samples[: rate]))
    assert abs(int(np.argmax(spectrum)) - 440) < 3  # the 440 Hz beep (one second: bins of 1 Hz)


def test_a_clip_that_does_not_decode_is_a_reject(tmp_path):
    from pipeline import ledger

    with pytest.raises(ledger.Rejected) as e:
        MeasureVideo({}).measure({"video": b"\0" * 4096, "source_uri": "junk"})
    assert e.value.reason == "corrupt"


def test_embed_clip_pools_the_keyframes_into_clip_video_emb(video_set):
    from stages.features.clip import EmbedClip, clip_pixels
    from stages.features.common import unit_rows

    rows = []
    for name in ("fractal.mp4", "pattern.mp4"):
        m = _measure(video_set, name, keyframes=4, audio="skip")
        rows.append({"keyframes": m["keyframes"], "keyframe_count": m["keyframe_count"], "text": name})
    stage = EmbedClip({"image_column": "keyframes", "frames_column": "keyframe_count", "text_column": "text"})
    stage.setup()
    out = stage.process(pa.Table.from_pylist(rows))
    assert {"clip_video_emb", "clip_text_emb", "clip_score"} <= set(out.column_names)
    assert "clip_image_emb" not in out.column_names
    got = np.array(out.column("clip_video_emb").to_pylist(), np.float32)
    enc = stage.encoder
    for row, vector in zip(rows, got):
        frames = np.stack([clip_pixels(f, enc.image_size) for f in split_strip(row["keyframes"], 4)])
        expected = unit_rows(enc.encode_images(frames).astype(np.float32).mean(axis=0, keepdims=True))[0]
        assert np.allclose(vector, expected.astype(np.float32), atol=2e-3)
    text = np.array(out.column("clip_text_emb").to_pylist(), np.float32)
    assert np.allclose(out.column("clip_score").to_numpy(), (got * text).sum(axis=1), atol=2e-3)


def test_keyframes_are_upright_as_a_player_shows_them(video_set, tmp_path):
    """A phone video stored landscape with a 90-degree display matrix: its keyframes are
    portrait, and the same pixels as ffmpeg's own (auto-rotated) decoding."""
    from PIL import Image

    from stages.ingest import video

    path = os.path.join(video_set["dir"], "portrait.mp4")
    m = MeasureVideo({"audio": "skip", "keyframes": 1}).measure({"video": open(path, "rb").read(), "source_uri": "p"})
    ours = split_strip(m["keyframes"], 1)[0].astype(int)
    assert ours.shape[0] == 224 and ours.shape[1] < ours.shape[0]
    t = json.loads(m["keyframe_times"])[0]
    shown = tmp_path / "shown.png"
    code, _, _ = video.run(["ffmpeg", "-v", "error", "-y", "-ss", f"{t}", "-i", path, "-frames:v", "1", "-vf",
                            f"scale={ours.shape[1]}:{ours.shape[0]}", str(shown)], 60)
    theirs = np.asarray(Image.open(shown).convert("RGB")).astype(int)
    assert code == 0 and theirs.shape == ours.shape and np.abs(ours - theirs).mean() < 8
    assert np.abs(np.rot90(ours, 2) - theirs).mean() > 20  # not merely similar anyway
