"""segment_audio: recordings into children by voice activity or windows, transcripts cut to spans."""
from __future__ import annotations

import io
import json
import os
import shutil

import pytest
import soundfile as sf

from pipeline import fs, ledger, media
from pipeline.runner import Runner
from stages.ingest.audio_text import IngestAudio
from stages.segment.audio import SegmentAudio
from stages.shard.webdataset import ShardWebDataset
from tests.pipeline.helpers import make_job


@pytest.fixture(scope="module")
def audio_set(tmp_path_factory):
    from jobs.demo_audio_data import TALK, make_audio_demo

    out = str(tmp_path_factory.mktemp("audio"))
    info = make_audio_demo(out)
    info["dir"], info["sentences"] = out, TALK
    return info


def _one(audio_set, tmp_path, *names):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        shutil.copy(os.path.join(audio_set["dir"], name), folder)
    return str(folder)


@pytest.mark.parametrize("method", ["energy", "silero"])
def test_a_talk_becomes_its_sentences_with_their_text(ray_session, audio_set, tmp_path, method):
    out = str(tmp_path / "run")
    Runner(make_job(IngestAudio(source=_one(audio_set, tmp_path, "long_talk.wav", "long_talk.srt")),
                    SegmentAudio(method=method), ShardWebDataset()), out, log=lambda *a: None).run()
    result = ledger.audit(out)
    assert result["ok"] and (result["inputs"], result["expanded"], result["derived"], result["kept"]) == (1, 1, 6, 6)
    rows = fs.read_parquet_dir(os.path.join(out, "shards"))
    texts = [t for _, t in sorted(zip(rows.column("segment_start").to_pylist(), rows.column("text").to_pylist()))]
    assert texts == audio_set["sentences"]
    assert len(set(rows.column("parent_id").to_pylist())) == 1
    assert all(0.5 < e - s < 6 for s, e in zip(rows.column("segment_start").to_pylist(),
                                              rows.column("segment_end").to_pylist()))


def test_fixed_windows_untimed_text_and_a_silent_stretch(tmp_path, audio_set):
    store = media.Store(str(tmp_path / "media"))
    stage = IngestAudio(source=_one(audio_set, tmp_path, "long_talk.wav", "long_talk.srt", "speech_01.wav", "speech_01.txt",
                                    "chords.flac"))
    stage.ensure_setup()
    stage.media_store = store
    table = ledger.split_live(ledger.ensure_reject_column(next(stage.list_inputs())))[0].drop_columns(["reject"])
    rows, _ = media.store(stage.process(table), ["audio"], store)
    splitter = SegmentAudio(method="fixed", max_seconds=10)
    splitter.media_store = store
    out = splitter.process(rows).to_pylist()
    talk = sorted((r["segment_start"], r["segment_end"]) for r in out if "long_talk" in r["source_uri"])
    duration = sf.info(os.path.join(audio_set["dir"], "long_talk.wav")).duration
    assert talk == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, round(duration, 3))]
    chords = [r for r in out if "chords" in r["source_uri"]]
    assert [(r["segment_start"], r["segment_end"], r["text"]) for r in chords] == [(0.0, 6.0, None)]
    speech = [r for r in out if r["source_uri"].endswith("speech_01.wav")]
    assert len(speech) == 1 and speech[0].get("parent_id") is None  # an untimed transcript stays whole
    allowed = SegmentAudio(method="energy", allow_untimed=True)
    allowed.media_store = store
    cut = [r for r in allowed.process(rows).to_pylist() if "speech_01.wav" in r["source_uri"]]
    assert cut and all(r["text_scope"] == "recording" and r["parent_id"] for r in cut)
    # a segment is read by seeking, and encoded once: its bytes decode to its span
    seg = next(r for r in out if r.get("parent_id") and r["segment_start"] == 10.0)
    data, rate = sf.read(io.BytesIO(media.read(seg["audio"])))
    assert len(data) / rate == pytest.approx(10.0, abs=0.01) and seg["duration"] == pytest.approx(10.0, abs=0.01)
    recording = next(r for r in rows.to_pylist() if "long_talk" in r["source_uri"])
    cues = json.loads(recording["transcript_segments"])
    assert [c["text"] for c in json.loads(seg["transcript_segments"])] == \
        [c["text"] for c in cues if 10.0 <= (c["start"] + c["end"]) / 2 < 20.0]
    # a segment is a sample of its own: its own bytes and samples, not its recording's
    assert seg["pcm_sha256"] != recording["pcm_sha256"] and seg["content_sha256"] != recording["content_sha256"]
    assert seg["original_bytes"] == seg["audio"]["size"] < recording["original_bytes"]
