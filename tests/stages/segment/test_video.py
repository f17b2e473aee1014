"""clip_video: shots of a video made of known scenes, stream copies that do not leak into the
next shot, exact re-encodes, content-stable keys, subtitles per clip, time limits."""
from __future__ import annotations

import json
import os
import shutil

import av
import pytest

from pipeline import ledger, media
from stages.ingest import video
from stages.ingest.transcripts import parse
from stages.segment.video import ClipVideo, scene_cuts, windows


def _row(store, path, sample_id="src", **extra):
    import hashlib

    ref, _ = store.put_file(path)
    timed = None
    srt = path.rsplit(".", 1)[0] + ".srt"
    if os.path.exists(srt):
        timed = json.dumps(parse(srt, open(srt, "rb").read()))
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return {"sample_id": sample_id, "ordinal": 0, "modality": "video", "source_uri": path, "meta": "{}",
            "video": ref, "video_format": "mp4", "content_sha256": digest, "text": "the whole video",
            "transcript_segments": timed, **extra}


def _clips(video_set, tmp_path, name, **params):
    store = media.Store(str(tmp_path / "media"))
    stage = ClipVideo(params)
    stage.media_store = store
    return stage.split(_row(store, os.path.join(video_set["dir"], name)))


def _frames(ref) -> int:
    with media.local_path(ref) as path, av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


def test_the_shots_of_a_video_of_known_scenes(video_set):
    from jobs.demo_video_data import RATE, SCENES

    truth, t = [], 0.0
    for _, seconds in SCENES[:-1]:
        t += seconds
        truth.append(round(t * RATE) / RATE)  # a cut falls on a frame
    cuts = scene_cuts(os.path.join(video_set["dir"], "scenes.mp4"), 0.2, 0.6, video.Deadline(60))
    assert len(cuts) == len(truth) and all(abs(a - b) <= 1 / RATE for a, b in zip(cuts, truth))


def test_stream_copies_are_the_shots_with_their_subtitles(video_set, tmp_path):
    from jobs.demo_video_data import RATE, SCENES, SUBTITLES

    clips = _clips(video_set, tmp_path, "scenes.mp4")
    assert len(clips) >= len(SCENES)
    assert [c["text"] for c in clips] == SUBTITLES and {c["text_scope"] for c in clips} == {"clip"}
    assert all(c["parent_id"] == "src" and c.get("reject") is None and c["video_format"] == "mp4" for c in clips)
    first = clips[0]
    assert first["clip_cut"] == "copy" and (first["clip_start"], first["clip_end"]) == (0.0, SCENES[0][1])
    # keyframe to keyframe: exactly the shot's frames, none of the next shot's
    assert _frames(first["video"]) == round(SCENES[0][1] * RATE)
    for c in clips:
        assert c["source_uri"].endswith(f"scenes.mp4#t={c['clip_start']:.3f}-{c['clip_end']:.3f}")
        cues = json.loads(c["transcript_segments"])
        assert len(cues) == 1 and 0 <= cues[0]["start"] < cues[0]["end"] <= c["clip_end"] - c["clip_start"]
        assert len(c["content_sha256"]) == 64 and c["original_bytes"] == c["video"]["size"]


def test_clip_keys_follow_the_content_not_the_path(video_set, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed.mp4"
    moved.parent.mkdir()
    shutil.copy(os.path.join(video_set["dir"], "fractal.mp4"), moved)
    store = media.Store(str(tmp_path / "media"))
    stage = ClipVideo({})
    stage.media_store = store
    a = stage.split(_row(store, os.path.join(video_set["dir"], "fractal.mp4"), "one"))
    b = stage.split(_row(store, str(moved), "two"))
    c = stage.split(_row(store, os.path.join(video_set["dir"], "fractal_bright.mp4"), "three"))
    assert [x["sample_id"] for x in a] == [x["sample_id"] for x in b]
    assert [x["parent_id"] for x in b] == ["two"] * len(b)
    assert not {x["sample_id"] for x in a} & {x["sample_id"] for x in c}
    assert all(ledger.SAFE_ID.fullmatch(x["sample_id"]) for x in a + c)


def test_exact_clips_are_reencoded_to_the_asked_size_and_rate(video_set, tmp_path):
    clips = _clips(video_set, tmp_path, "scenes.mp4", exact=True, resolution="224x224", fps=8, audio="drop")
    assert {c["clip_cut"] for c in clips} == {"reencode"}
    for c in clips:
        with media.local_path(c["video"]) as path:
            found = video.probe(path, 30, "mp4")
        assert (found.width, found.height, found.fps, found.audio_codec) == (224, 224, 8.0, None)
        n = _frames(c["video"])
        assert abs(n - (c["clip_end"] - c["clip_start"]) * 8) <= 1


def test_sound_is_kept_or_dropped(video_set, tmp_path):
    kept = _clips(video_set, tmp_path, "pattern.mp4")
    dropped = _clips(video_set, tmp_path, "pattern.mp4", audio="drop")
    assert all(c["has_audio"] for c in kept) and not any(c["has_audio"] for c in dropped)


def test_long_shots_become_windows(video_set, tmp_path):
    assert windows([(0.0, 24.0)], 2.0, 10.0, None) == [(0.0, 10.0), (10.0, 20.0), (20.0, 24.0)]
    assert windows([(0.0, 21.0)], 2.0, 10.0, None) == [(0.0, 10.0), (10.0, 20.0)]  # 1 s left: dropped
    assert windows([(0.0, 14.0)], 2.0, 10.0, 5.0) == [(0.0, 10.0), (5.0, 14.0)]
    assert windows([(0.0, 1.5), (1.5, 4.0)], 2.0, 10.0, None) == [(1.5, 4.0)]
    clips = _clips(video_set, tmp_path, "long.mp4", method="fixed", max_seconds=10.0, exact=True)
    assert [(c["clip_start"], c["clip_end"]) for c in clips] == [(0.0, 10.0), (10.0, 20.0), (20.0, 24.0)]
    assert {c["text"] for c in clips} == {"the whole video"} and {c["text_scope"] for c in clips} == {"video"}


def test_a_straggler_is_stopped_at_its_time_limit(video_set, tmp_path):
    with pytest.raises(ledger.Rejected) as e:
        _clips(video_set, tmp_path, "long.mp4", video_timeout=0.05)
    assert e.value.reason == "decode_timeout"
    store = media.Store(str(tmp_path / "m2"))
    stage = ClipVideo({"video_timeout": 0.05})
    stage.media_store = store
    import pyarrow as pa

    out = stage.process(pa.Table.from_pylist([_row(store, os.path.join(video_set["dir"], "long.mp4"))]))
    assert out.column("reject").to_pylist()[0]["reason"] == "decode_timeout"


def test_a_clip_file_that_is_not_there_is_a_reject_not_a_path(tmp_path):
    stage = ClipVideo({})
    with pytest.raises(ledger.Rejected) as e:
        stage.check(str(tmp_path / "nothing.mp4"), 0.0, 2.0)
    assert e.value.reason == "clip_failed"
    (tmp_path / "junk.mp4").write_bytes(b"\0" * 5000)
    with pytest.raises(ledger.Rejected) as e:
        stage.check(str(tmp_path / "junk.mp4"), 0.0, 2.0)
    assert e.value.reason == "clip_failed"
