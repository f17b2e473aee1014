"""The video demo's data, generated with ffmpeg: test patterns, a video of known scenes
with subtitles, a portrait phone-style video, a silent video, a video with speech from
espeak-ng, a still picture, near-duplicate variants and broken files.

    python -m jobs.demo_video_data runs/demo-video-data

Everything is made here (no download): ffmpeg's lavfi sources (testsrc2, mandelbrot,
smptebars, life, cellauto, zoompan over a scikit-image photograph) at 320x240, 25 fps,
H.264; espeak-ng speaks. `SCENES` lists the multi-scene video's shots, so a test knows
how many clips it must give.
"""
from __future__ import annotations

import argparse
import os
import subprocess

SIZE = "320x240"
RATE = 25
# (lavfi source, seconds): the multi-scene video, shot after shot
SCENES = [("testsrc", 3.0), ("life=mold=10:ratio=0.3:seed=7", 3.0), ("sierpinski=seed=3:jump=40", 2.4),
          ("cellauto=rule=110", 2.6), ("mandelbrot=start_scale=0.02:start_x=-0.745:start_y=0.11", 3.0)]
SUBTITLES = ["An old test card with a counter.", "Cells live and die on a grid.", "A Sierpinski carpet jumps about.",
             "A cellular automaton grows line by line.", "Deep inside a fractal, spirals turn."]
SPEECH = "Hello, this is a short spoken caption for a video of a rocket on its launch pad."


def run(args: list[str], timeout: float = 120) -> None:
    subprocess.run(args, check=True, timeout=timeout, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def lavfi(source: str, seconds: float, size: str = SIZE) -> list[str]:
    sep = ":" if "=" in source else "="
    return ["-f", "lavfi", "-i", f"{source}{sep}s={size}:r={RATE}", "-t", f"{seconds}"]


def encode(dst: str, *inputs_and_options: str, audio: bool = False) -> str:
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs_and_options, "-c:v", "libx264", "-preset", "veryfast",
         "-pix_fmt", "yuv420p", *(["-c:a", "aac", "-shortest"] if audio else ["-an"]), dst])
    return dst


def srt(cues: list[tuple[float, float, str]]) -> str:
    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
    return "".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1))


def write(path: str, text: str | bytes) -> None:
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def photo(dst: str, name: str, size: tuple[int, int]) -> str:
    """One of scikit-image's photographs, cropped to the aspect of `size` and resized."""
    from PIL import Image, ImageOps
    from skimage import data as images

    ImageOps.fit(Image.fromarray(getattr(images, name)()).convert("RGB"), size).save(dst)
    return dst


def zoom(width: int, height: int, seconds: float) -> str:
    """A slow Ken Burns zoom into the middle of one still picture, `seconds` long."""
    return (f"zoompan=z='min(zoom+0.002,1.5)':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':d={round(seconds * RATE)}:"
            f"s={width}x{height}:fps={RATE},format=yuv420p")


def multi_scene(dst: str) -> str:
    """The SCENES one after another (hard cuts), with subtitles timed to each."""
    inputs, chains = [], []
    for i, (source, seconds) in enumerate(SCENES):
        inputs += ["-f", "lavfi", "-i", f"{source}{':' if '=' in source else '='}s={SIZE}:r={RATE}"]
        chains.append(f"[{i}]trim=duration={seconds},setpts=PTS-STARTPTS,format=yuv420p[s{i}]")
    graph = ";".join(chains) + ";" + "".join(f"[s{i}]" for i in range(len(SCENES))) + \
        f"concat=n={len(SCENES)}:v=1:a=0[v]"
    starts = [sum(seconds for _, seconds in SCENES[:i]) for i in range(1, len(SCENES))]
    # a keyframe at every cut, as an editor's export has (x264's own scene-cut decision can land a few frames late)
    encode(dst, *inputs, "-filter_complex", graph, "-map", "[v]", "-force_key_frames", ",".join(f"{t:g}" for t in starts))
    cues, t = [], 0.0
    for (_, seconds), text in zip(SCENES, SUBTITLES):
        cues.append((t + 0.3, t + seconds - 0.3, text))
        t += seconds
    write(dst.rsplit(".", 1)[0] + ".srt", srt(cues))
    return dst


# what ingest_video makes of each broken file
BROKEN = {"empty.mp4": "empty_file", "notes.mp4": "not_video", "cut_short.mp4": "truncated",
          "only_sound.mp4": "no_video_stream", "unknown_codec.mp4": "missing_decoder", "blip.mp4": "too_short",
          "black.mp4": "blank_video"}
VARIANTS = ["fractal_small.mp4", "fractal_trimmed.mp4", "fractal_bright.mp4"]  # near-duplicates of fractal.mp4


def make_video_demo(out: str) -> dict:
    """Writes the demo's videos into `out`; returns what a run must make of them."""
    os.makedirs(out, exist_ok=True)
    j = lambda name: os.path.join(out, name)  # noqa: E731

    # good videos, each with its caption
    encode(j("pattern.mp4"), *lavfi("testsrc2", 6), "-f", "lavfi", "-i", "sine=f=440:r=48000", audio=True)
    write(j("pattern.txt"), "a moving test pattern with a clock and a beep")
    multi_scene(j("scenes.mp4"))
    encode(j("fractal.mp4"), *lavfi("mandelbrot", 8))
    write(j("fractal.txt"), "a colourful fractal zooming in")
    # a portrait phone video: stored landscape, shown portrait (display matrix)
    photo(j("coffee.tmp.png"), "coffee", (426, 240))
    encode(j("landscape.tmp.mp4"), "-i", j("coffee.tmp.png"), "-vf", zoom(426, 240, 5))
    os.unlink(j("coffee.tmp.png"))
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", j("landscape.tmp.mp4"), "-c", "copy",
         "-metadata:s:v:0", "rotate=90", j("portrait.mp4")])
    os.unlink(j("landscape.tmp.mp4"))
    write(j("portrait.txt"), "a cup of coffee filmed on a phone held upright")
    encode(j("silent.mp4"), *lavfi("cellauto=rule=30", 5))
    write(j("silent.txt"), "a silent cellular automaton")
    # speech from espeak-ng over a moving picture
    wav = j("speech.tmp.wav")
    run(["espeak-ng", "-v", "en", "-s", "150", "-w", wav, SPEECH], timeout=60)
    photo(j("rocket.tmp.png"), "rocket", (320, 240))
    encode(j("talk.mp4"), "-i", j("rocket.tmp.png"), "-i", wav, "-map", "0:v", "-map", "1:a",
           "-vf", zoom(320, 240, 8), audio=True)
    os.unlink(j("rocket.tmp.png"))
    os.unlink(wav)
    write(j("talk.txt"), SPEECH)
    # one long shot, cut into windows
    encode(j("long.mp4"), *lavfi("life=mold=20:ratio=0.5:seed=11:life_color=#00ff00:death_color=#aa0000", 24))
    write(j("long.txt"), "green cells of a game of life, for a long time")
    # a still photograph (near-static) and a black video (blank)
    photo(j("still.tmp.png"), "astronaut", (320, 240))
    encode(j("still.mp4"), "-loop", "1", "-i", j("still.tmp.png"), "-t", "5", "-r", str(RATE))
    os.unlink(j("still.tmp.png"))
    write(j("still.txt"), "a photograph of an astronaut that never moves")
    encode(j("black.mp4"), *lavfi("color=c=black", 4))
    write(j("black.txt"), "nothing but black")

    # near-duplicates of fractal.mp4: re-encoded small and rough, trimmed, brighter
    encode(j("fractal_small.mp4"), "-i", j("fractal.mp4"), "-vf", "scale=240:180", "-crf", "35")
    write(j("fractal_small.txt"), "a colourful fractal zooming in (small copy)")
    encode(j("fractal_trimmed.mp4"), "-ss", "1.3", "-i", j("fractal.mp4"), "-t", "6")
    write(j("fractal_trimmed.txt"), "a colourful fractal zooming in (trimmed)")
    encode(j("fractal_bright.mp4"), "-i", j("fractal.mp4"), "-vf", "eq=brightness=0.08")
    write(j("fractal_bright.txt"), "a colourful fractal zooming in (brighter)")

    # broken files
    write(j("empty.mp4"), b"")
    write(j("notes.mp4"), "this is a text file with a video's name\n")
    with open(j("pattern.mp4"), "rb") as f:
        whole = f.read()
    write(j("cut_short.mp4"), whole[: len(whole) // 3])  # moov at the end: the header is gone
    run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=f=300:d=3", "-c:a", "aac",
         j("only_sound.mp4")])
    write(j("only_sound.txt"), "a video file that holds only sound")
    # a codec no decoder here knows: the H.264 sample entry renamed
    with open(j("fractal.mp4"), "rb") as f:
        strange = f.read().replace(b"avc1", b"xv1d")
    write(j("unknown_codec.mp4"), strange)
    encode(j("blip.mp4"), *lavfi("testsrc2", 0.4))
    write(j("blip.txt"), "too short to be a clip")
    videos = sorted(f for f in os.listdir(out) if f.endswith(".mp4"))
    return {"inputs": len(videos), "broken": BROKEN, "variants": VARIANTS, "scenes": len(SCENES),
            "near_static": ["still.mp4"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    out = ap.parse_args(argv).out
    info = make_video_demo(out)
    print(f"wrote the video demo's {info['inputs']} videos to {out}/")


if __name__ == "__main__":
    main()
