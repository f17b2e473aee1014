"""ingest_video: ffprobe columns, every broken file its own reject, downloads and tar members
streamed to disk, time limits and bounded output on every external program."""
from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tarfile
import tempfile

import pytest

from pipeline import fs, ledger
from stages.ingest import video
from stages.ingest.video_text import IngestVideo
from tests.servers import HostileServer


def _examine(video_set, name, **params):
    return IngestVideo({"source": video_set["dir"], **params}).examine(os.path.join(video_set["dir"], name))


def test_probe_columns_of_good_videos(video_set):
    pattern = _examine(video_set, "pattern.mp4")
    assert (pattern["width"], pattern["height"], pattern["fps"], pattern["video_codec"]) == (320, 240, 25.0, "h264")
    assert pattern["has_audio"] and pattern["audio_codec"] == "aac" and 5.9 <= pattern["duration"] <= 7.0
    assert pattern["video_format"] == "mp4" and pattern["bit_rate"] > 0 and len(pattern["content_sha256"]) == 64
    silent = _examine(video_set, "silent.mp4")
    assert not silent["has_audio"] and silent["audio_codec"] is None
    # stored 426x240 with a display matrix: shown (and described) as a portrait 240x426
    portrait = _examine(video_set, "portrait.mp4")
    assert (portrait["width"], portrait["height"]) == (240, 426) and portrait["rotation"] in (90, 270)


def test_every_broken_file_is_rejected_with_its_reason(video_set):
    found = {}
    for name in video_set["broken"]:
        with pytest.raises(ledger.Rejected) as e:
            _examine(video_set, name)
        found[name] = e.value.reason
    assert found == video_set["broken"]


def test_a_missing_decoder_says_so(video_set):
    with pytest.raises(ledger.Rejected) as e:
        _examine(video_set, "unknown_codec.mp4")
    assert e.value.reason == "missing_decoder" and "no decoder" in e.value.detail and "xv1d" in e.value.detail
    assert video.has_decoder("h264") and video.has_decoder("vp9") and not video.has_decoder("none")


def test_a_codec_the_ffmpeg_build_lacks_is_missing_even_if_pyav_has_it(video_set, monkeypatch):
    """Clips are cut by the ffmpeg program, frames read by PyAV: both must decode the codec."""
    monkeypatch.setattr(video, "decoders", lambda: frozenset({"vp9"}))
    assert not video.has_decoder("h264") and video.has_decoder("vp9")
    with pytest.raises(ledger.Rejected) as e:
        _examine(video_set, "pattern.mp4")
    assert e.value.reason == "missing_decoder" and "'h264'" in e.value.detail


def test_the_header_decides_too_long_before_any_decoding(video_set):
    with pytest.raises(ledger.Rejected) as e:
        _examine(video_set, "fractal.mp4", max_seconds=5)
    assert e.value.reason == "too_long" and "from the header" in e.value.detail
    with pytest.raises(ledger.Rejected) as e:
        _examine(video_set, "fractal.mp4", max_bytes=10_000)
    assert e.value.reason == "too_large"
    with pytest.raises(ledger.Rejected) as e:  # the frame size, from the header
        _examine(video_set, "fractal.mp4", max_frame_pixels=320 * 200)
    assert e.value.reason == "too_large" and "320x240" in e.value.detail


def test_a_truncated_file_whose_header_survives_is_truncated(video_set, tmp_path):
    # moov first (faststart): ffprobe reads the header, but the frames stop early
    whole = tmp_path / "whole.mp4"
    video.run(["ffmpeg", "-v", "error", "-y", "-i", os.path.join(video_set["dir"], "fractal.mp4"), "-c", "copy",
               "-movflags", "+faststart", str(whole)], 60)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    with pytest.raises(ledger.Rejected) as e:
        IngestVideo({"source": str(tmp_path)}).examine(str(cut))
    assert e.value.reason == "truncated" and "frames stop at" in e.value.detail


def test_probe_and_decode_time_limits(video_set):
    with pytest.raises(ledger.Rejected) as e:
        _examine(video_set, "pattern.mp4", probe_timeout=0.001)
    assert e.value.reason == "probe_timeout"
    with pytest.raises(ledger.Rejected) as e:
        _examine(video_set, "pattern.mp4", decode_timeout=1e-6)
    assert e.value.reason == "decode_timeout"


def test_external_programs_have_bounded_output_and_time():
    with pytest.raises(ledger.Rejected) as e:  # 4 MiB on stdout: more than anyone needs about one file
        video.run(["head", "-c", str(4 << 20), "/dev/zero"], 30)
    assert e.value.reason == "corrupt"
    with pytest.raises(ledger.Rejected) as e:
        video.run(["sleep", "30"], 0.3)
    assert e.value.reason == "decode_timeout"
    code, out, err = video.run(["sh", "-c", "head -c 100000 /dev/zero >&2; echo done"], 30)
    assert code == 0 and out == b"done\n" and len(err) <= video.MESSAGE_CAP


def test_folders_urls_and_tars_end_in_the_same_rows(ray_session, video_set, tmp_path):
    from pipeline.runner import Runner
    from tests.pipeline.helpers import make_job

    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("pattern.mp4", "pattern.txt", "scenes.mp4", "scenes.srt", "notes.mp4"):
        shutil.copy(os.path.join(video_set["dir"], name), folder)
    tar_path = tmp_path / "videos.tar"
    with tarfile.open(tar_path, "w") as tf:
        for key, name in (("a", "pattern.mp4"), ("b", "silent.mp4")):
            tf.add(os.path.join(video_set["dir"], name), f"{key}.mp4")
            caption = f"caption of {key}".encode()
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = len(caption)
            tf.addfile(info, io.BytesIO(caption))
    data = {name: open(os.path.join(video_set["dir"], name), "rb").read() for name in ("pattern.mp4", "notes.mp4")}
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "mmcurate-dl-*")))
    with HostileServer(images=data) as server:
        manifest = tmp_path / "urls.jsonl"
        manifest.write_text("".join(json.dumps({"url": server.url(f"/img/{n}"), "text": n}) + "\n" for n in data))
        paths = tmp_path / "paths.csv"  # a manifest of paths (relative to it), captions in a column
        shutil.copy(os.path.join(video_set["dir"], "silent.mp4"), tmp_path / "s.mp4")
        paths.write_text("path,caption\ns.mp4,a silent automaton\nmissing.mp4,gone\n")
        results = {}
        for name, source, extra in (("folder", str(folder), {}), ("tar", str(tar_path), {}),
                                    ("urls", str(manifest), {}), ("paths", str(paths), {"text_column": "caption"})):
            out = str(tmp_path / f"run-{name}")
            stage = IngestVideo({"source": source, "allow_private_networks": True, **extra})
            Runner(make_job(stage), out, log=lambda *a: None).run()
            kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-ingest_video"), ["text"])
            rejected = ledger.audit(out)
            results[name] = (sorted(kept.column("text").to_pylist()), rejected["rejected"])
    from jobs.demo_video_data import SUBTITLES

    assert results["folder"][0] == [" ".join(SUBTITLES), "a moving test pattern with a clock and a beep"]
    assert results["folder"][1] == 1  # notes.mp4: not a video
    assert results["tar"] == (["caption of a", "caption of b"], 0)
    assert results["urls"] == (["pattern.mp4"], 1)  # notes.mp4 is no video, by its bytes
    assert results["paths"] == (["a silent automaton"], 1)  # missing.mp4: missing_file
    # downloads went through temporary files, every one of them removed
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "mmcurate-dl-*"))) == before


def test_a_file_cannot_make_ffmpeg_open_anything_else(video_set, tmp_path):
    """A playlist named .mp4 is not a video (by its bytes); and even when handed to ffprobe
    directly, its reference to a URL is not fetched (ffmpeg's own rule for playlists, and
    the local-only protocol whitelist every ffmpeg, ffprobe and PyAV call carries)."""
    playlist = tmp_path / "list.mp4"
    with HostileServer(images={"x.mp4": open(os.path.join(video_set["dir"], "pattern.mp4"), "rb").read()}) as server:
        playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6,\n{server.url('/img/x.mp4')}\n"
                            "#EXT-X-ENDLIST\n")
        with pytest.raises(ledger.Rejected) as e:
            IngestVideo({"source": str(tmp_path)}).examine(str(playlist))
        assert e.value.reason == "not_video"
        with pytest.raises(ledger.Rejected):
            video.probe(str(playlist), 30, "mp4")
        assert server.hits == {}  # nothing was fetched
