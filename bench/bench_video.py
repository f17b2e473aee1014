"""Video benchmarks, each against a baseline measured in the same run, on one core.

    .venv/bin/python bench/bench_video.py [--sources 4 --seconds 40] [--scenes] [--long] [--metrics]

The whole run is pinned to one CPU (ffmpeg children included), so every figure is per core.
1. Clip extraction, in video seconds per second: clip_video with fixed 8 s windows, as
   stream copies (sources with a keyframe every 2 s) and as exact re-encodes (libx264
   veryfast, crf 23), against bare ffmpeg
   commands making the same cuts of the same files (one `ffmpeg -ss -i -t` per clip: -c copy,
   or the same libx264 settings). Both sides write MP4s; clip_video also lists keyframes,
   probes every clip and hashes and stores it. Goal >= 0.8x.
2. Keyframe decoding: measure_video (keyframe strip, frame hashes, motion; sound skipped)
   over the clips, against a bare `ffmpeg -i clip -vf scale=64:64,format=gray -f null -`
   decode of the same clips.
3. Shot detection: PySceneDetect's HistogramDetector as clip_video runs it, in video seconds
   per second (it decodes every frame).
4. --scenes: the detectors compared on 8 generated videos of 5 known shots each: ffmpeg's
   scene score and PySceneDetect's Content, Adaptive, Histogram and Hash detectors.
5. --long: a 2-hour source (320x240, 25 fps) clipped into 10 s windows (stream copy) and
   its shots detected, each in a fresh process: peak resident memory of the worker
   (VmHWM), against the size of the decoded video (what holding it would take).
6. --metrics: motion_score and luma_std of the cases behind filter_video_quality's defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

SOURCES = ["testsrc", "testsrc2", "life=mold=10:ratio=0.3:seed=7", "sierpinski=seed=3:jump=40", "cellauto=rule=110",
           "mandelbrot=start_scale=0.02:start_x=-0.745:start_y=0.11", "mandelbrot",
           "life=mold=20:ratio=0.5:seed=11:life_color=#00ff00", "cellauto=rule=30", "gradients=speed=0.05:seed=3"]


def ffmpeg(*args: str, timeout: float = 3600) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=timeout)


def shots_video(path: str, order: list[str], seconds: list[float], size: str = "320x240",
                keyframes_at_cuts: bool = False, gop: int = 250) -> list[float]:
    """A video of the given sources one after another (hard cuts); returns the cut times."""
    inputs, chains = [], []
    for i, (src, s) in enumerate(zip(order, seconds)):
        inputs += ["-f", "lavfi", "-i", f"{src}{':' if '=' in src else '='}s={size}:r=25"]
        chains.append(f"[{i}]trim=duration={s},setpts=PTS-STARTPTS,format=yuv420p[s{i}]")
    graph = ";".join(chains) + ";" + "".join(f"[s{i}]" for i in range(len(order))) + \
        f"concat=n={len(order)}:v=1:a=0[v]"
    cuts, t = [], 0.0
    for s in seconds[:-1]:
        t += s
        cuts.append(round(round(t * 25) / 25, 3))
    force = ["-force_key_frames", ",".join(f"{c:g}" for c in cuts)] if keyframes_at_cuts else []
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[v]", "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", "-g", str(gop), *force, path)
    return cuts


def _row(store, path: str) -> dict:
    import hashlib

    ref, _ = store.put_file(path)
    return {"sample_id": os.path.basename(path), "ordinal": 0, "modality": "video", "source_uri": path, "meta": "{}",
            "video": ref, "video_format": "mp4", "text": None, "transcript_segments": None,
            "content_sha256": hashlib.sha256(open(path, "rb").read()).hexdigest()}


def extraction(work: str, n: int, seconds: float) -> None:
    from pipeline.media import Store
    from stages.features.video import MeasureVideo
    from stages.segment.video import ClipVideo

    rng = random.Random(1)
    paths = []
    for i in range(n):
        order = [rng.choice(SOURCES) for _ in range(int(seconds // 5))]
        path = os.path.join(work, f"src{i}.mp4")
        shots_video(path, order, [5.0] * len(order), "640x360", gop=50)
        paths.append(path)
    total = n * seconds
    print(f"{n} sources of {seconds:g} s, 640x360 at 25 fps, H.264 with a keyframe every 2 s (a streaming "
          "site's GOP; x264 adds its own at scene cuts)")
    for exact in (False, True):
        store = Store(os.path.join(work, f"media-{exact}"))
        stage = ClipVideo({"method": "fixed", "max_seconds": 8.0, "exact": exact})
        stage.media_store = store
        rows = [_row(store, p) for p in paths]
        t0 = time.perf_counter()
        clips = [c for r in rows for c in stage.split(r)]
        ours = time.perf_counter() - t0
        # the same cuts, bare: one ffmpeg per clip
        t0 = time.perf_counter()
        for c in clips:
            src = c["source_uri"].split("#")[0]
            start, end = c["clip_start"], c["clip_end"]
            codec = ["-c", "copy", "-avoid_negative_ts", "make_zero"] if c["clip_cut"] == "copy" else \
                ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"]
            ffmpeg("-ss", f"{start:.4f}", "-i", src, "-t", f"{end - start:.4f}", "-map", "0:v:0", *codec,
                   "-movflags", "+faststart", os.path.join(work, "bare.mp4"))
        bare = time.perf_counter() - t0
        kinds = ", ".join(f"{k} {sum(c['clip_cut'] == k for c in clips)}" for k in sorted({c["clip_cut"] for c in clips}))
        print(f"clip_video {'exact' if exact else 'copy '}: {len(clips)} clips ({kinds}), "
              f"{total / ours:8.1f} video s/s; bare ffmpeg, same cuts: {total / bare:8.1f} video s/s; "
              f"ratio {bare / ours:.2f}x")
        record("video", f"clip_video, {'exact re-encode' if exact else 'stream copy'}, one core",
               f"{total / ours:.1f} video s/s", baseline=f"bare ffmpeg, same cuts {total / bare:.1f} video s/s",
               ratio=bare / ours, goal=">= 0.8", met=bare / ours >= 0.8)
        if not exact:
            copy_clips = clips
    # keyframe decoding over the stream-copied clips
    from pipeline import media

    measure = MeasureVideo({"audio": "skip"})
    clip_seconds = sum(c["clip_end"] - c["clip_start"] for c in copy_clips)
    t0 = time.perf_counter()
    for c in copy_clips:
        measure.measure(c)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in copy_clips:
        with media.local_path(c["video"]) as path:
            ffmpeg("-i", path, "-vf", "scale=64:64,format=gray", "-f", "null", "-")
    bare = time.perf_counter() - t0
    print(f"measure_video (strip of 8, hashes at {measure.params.hash_fps:g}/s, motion at "
          f"{measure.params.motion_fps:g}/s): {clip_seconds / ours:8.1f} video s/s; "
          f"bare ffmpeg decode to 64x64 gray: {clip_seconds / bare:8.1f} video s/s; ratio {bare / ours:.2f}x")
    record("video", "measure_video, one core", f"{clip_seconds / ours:.1f} video s/s",
           baseline=f"bare ffmpeg decode {clip_seconds / bare:.1f} video s/s", ratio=bare / ours)
    from stages.ingest.video import Deadline
    from stages.segment.video import scene_cuts

    t0 = time.perf_counter()
    for p in paths:
        scene_cuts(p, 0.2, 0.6, Deadline(3600))
    print(f"shot detection (HistogramDetector, every frame decoded): {total / (time.perf_counter() - t0):8.1f} "
          "video s/s")


def scenes(work: str) -> None:
    from scenedetect import (
        AdaptiveDetector,
        ContentDetector,
        HashDetector,
        HistogramDetector,
        SceneManager,
        open_video,
    )

    rng = random.Random(0)
    videos = []
    for k in range(8):
        order = rng.sample(SOURCES, 5)
        secs = [rng.choice([2.0, 2.5, 3.0, 4.0]) for _ in order]
        path = os.path.join(work, f"shots{k}.mp4")
        videos.append((path, shots_video(path, order, secs)))

    def pyscenedetect(make):
        def run(path):
            manager = SceneManager()
            manager.add_detector(make())
            manager.detect_scenes(open_video(path, backend="pyav"))
            return [s[0].seconds for s in manager.get_scene_list()][1:]
        return run

    def ffmpeg_score(threshold):
        def run(path):
            out = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-an", "-vf",
                                  f"scale=160:-2,select='gt(scene,{threshold})',metadata=print:file=-", "-f", "null",
                                  "-"], capture_output=True, timeout=600).stdout.decode()
            cuts = []
            for line in out.splitlines():
                if "pts_time:" in line:
                    t = float(line.split("pts_time:")[1].split()[0])
                    if not cuts or t - cuts[-1] >= 0.6:
                        cuts.append(t)
            return cuts
        return run

    detectors = {"ffmpeg scene 0.3": ffmpeg_score(0.3), "ffmpeg scene 0.2": ffmpeg_score(0.2),
                 "PySceneDetect Content 27": pyscenedetect(lambda: ContentDetector(threshold=27, min_scene_len=15)),
                 "PySceneDetect Adaptive 3": pyscenedetect(lambda: AdaptiveDetector(min_scene_len=15)),
                 "PySceneDetect Histogram 0.2": pyscenedetect(lambda: HistogramDetector(min_scene_len=15)),
                 "PySceneDetect Hash": pyscenedetect(lambda: HashDetector(min_scene_len=15))}
    total = sum(len(c) for _, c in videos)
    print(f"shot detection on {len(videos)} videos of 5 known shots ({total} cuts; a cut found within 2 frames)")
    for name, run in detectors.items():
        tp = fp = 0
        t0 = time.perf_counter()
        for path, truth in videos:
            found = run(path)
            tp += sum(1 for c in truth if any(abs(c - x) <= 0.08 for x in found))
            fp += sum(1 for x in found if all(abs(c - x) > 0.08 for c in truth))
        print(f"  {name:28s} recall {tp / total:.3f}  precision {tp / max(1, tp + fp):.3f}  "
              f"({tp} found, {fp} false)  {time.perf_counter() - t0:5.1f} s")


CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
from pipeline.media import Store
from stages.segment.video import ClipVideo
from stages.ingest.video import Deadline
import hashlib
path, what = {path!r}, {what!r}
t0 = time.perf_counter()
if what == "clip":
    store = Store({media!r})
    stage = ClipVideo({{"method": "fixed", "max_seconds": 10.0}})
    stage.media_store = store
    ref, _ = store.put_file(path)
    row = {{"sample_id": "long", "ordinal": 0, "modality": "video", "source_uri": path, "meta": "{{}}", "video": ref,
           "video_format": "mp4", "text": None, "transcript_segments": None, "content_sha256": "x"}}
    n = len(stage.split(row))
elif what == "scenes":
    from stages.segment.video import scene_cuts
    n = len(scene_cuts(path, 0.2, 0.6, Deadline(7200)))
else:
    n = 0
import resource
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB: the largest ffmpeg/ffprobe it ran
print(json.dumps({{"n": n, "seconds": time.perf_counter() - t0, "peak_kib": peak, "child_kib": children}}))
"""


def long_video(work: str, hours: float = 2.0) -> None:
    path = os.path.join(work, "long.mp4")
    seconds = hours * 3600
    t0 = time.perf_counter()
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:r=25", "-t", f"{seconds:g}", "-c:v", "libx264", "-preset",
           "ultrafast", "-g", "250", "-pix_fmt", "yuv420p", path, timeout=7200)
    size = os.path.getsize(path)
    decoded = seconds * 25 * 320 * 240 * 1.5
    print(f"{hours:g}-hour source: {size / 2**20:.0f} MiB H.264, {decoded / 2**30:.1f} GiB decoded "
          f"(made in {time.perf_counter() - t0:.0f} s)")
    for what in ("import", "clip", "scenes"):
        code = CHILD.format(root=ROOT, path=path, what=what, media=os.path.join(work, "media"))
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=7200)
        if res.returncode:
            print(f"  {what}: failed: {res.stderr[-500:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        if what == "import":
            print(f"  a process importing the stages: {r['peak_kib'] / 1024:6.0f} MiB")
            continue
        print(f"  {what:7s}: peak worker memory {r['peak_kib'] / 1024:6.0f} MiB (its largest child "
              f"process, fork included, {r['child_kib'] / 1024:.0f} MiB), {r['n']} {'clips' if what == 'clip' else 'cuts'}, "
              f"{r['seconds']:.0f} s ({seconds / max(r['seconds'], 1e-9):.0f}x real time)")


def metrics(work: str) -> None:
    from stages.features.video import MeasureVideo

    photo = os.path.join(work, "photo.png")
    from PIL import Image
    from skimage import data as images

    Image.fromarray(images.astronaut()).resize((320, 240)).save(photo)
    cases = {
        "still photograph": ["-loop", "1", "-i", photo, "-t", "4", "-r", "25"],
        "slow zoom (0.03%/frame)": ["-i", photo, "-vf", "zoompan=z='zoom+0.0003':d=100:s=320x240:fps=25"],
        "faster zoom (0.15%/frame)": ["-i", photo, "-vf", "zoompan=z='zoom+0.0015':d=100:s=320x240:fps=25"],
        "testsrc2": ["-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=4"],
        "mandelbrot": ["-f", "lavfi", "-i", "mandelbrot=s=320x240:r=25", "-t", "4"],
        "life": ["-f", "lavfi", "-i", "life=s=320x240:r=25:mold=10:ratio=0.5:seed=3", "-t", "4"],
        "random noise": ["-f", "lavfi", "-i", "nullsrc=s=320x240:r=25:d=4,geq=lum='random(1)*255':cb=128:cr=128"],
        "black/white strobe": ["-f", "lavfi", "-i",
                               "color=c=white:s=320x240:r=4:d=4,geq=lum='if(mod(N,2),255,0)':cb=128:cr=128",
                               "-r", "25"],
        "black": ["-f", "lavfi", "-i", "color=c=black:s=320x240:r=25:d=4"],
    }
    for name, args in cases.items():
        path = os.path.join(work, "m.mp4")
        ffmpeg(*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", path)
        m = MeasureVideo({"audio": "skip"}).measure({"video": open(path, "rb").read(), "source_uri": name})
        print(f"  {name:26s} motion_score {m['motion_score']:.4f}  luma_std {m['luma_std']:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--scenes", action="store_true")
    ap.add_argument("--long", action="store_true")
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--metrics", action="store_true")
    ap.add_argument("--only", action="store_true", help="only the parts asked for (skip the extraction benchmark)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, for us and every ffmpeg we start
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="mmc-bench-video-") as work:
        if not args.only:
            extraction(work, args.sources, args.seconds)
        if args.scenes:
            scenes(work)
        if args.metrics:
            metrics(work)
        if args.long:
            long_video(work, args.hours)


if __name__ == "__main__":
    main()
