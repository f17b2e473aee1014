"""The audio demo's data, generated: speech from espeak-ng, tones, music-like chords, a long
recording with a timed transcript, near-duplicate variants and broken files.

    python -m jobs.demo_audio_data runs/demo-audio-data

Everything is made here (no download): espeak-ng speaks the sentences, numpy makes the
tones and chords, ffmpeg re-encodes the variants (MP3 at 64 kbit/s, Opus, AAC).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess

import numpy as np

RATE = 22_050
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A cup of coffee on a wooden table in the morning.",
    "Astronauts float above the blue curve of the earth.",
    "The cat sleeps on the warm window sill all afternoon.",
    "Rain falls softly on the roof of the old house.",
    "A red rocket stands on the launch pad before dawn.",
]
TALK = [  # the long recording's sentences (none of them is also a recording of its own)
    "Good morning and welcome to the weekly meeting of the garden club.",
    "First, the spring plant sale raised enough money for new tools.",
    "Second, please water the tomatoes on the east side every evening.",
    "The compost heap behind the shed is ready to use again.",
    "Next week we will plant beans, peas and a row of sunflowers.",
    "Thank you all for coming, and see you next Saturday.",
]
CAPTIONS = {"tone_440": "a pure tone at four hundred and forty hertz",
            "tone_1000": "a steady beep at one kilohertz",
            "chords": "a slow sequence of soft organ chords",
            "noise": "white noise like a waterfall"}


def speak(text: str, path: str, voice: str = "en", speed: int = 150, timeout: float = 60) -> str:
    """A WAV of espeak-ng saying `text` (argument list, time limit)."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", path, text], check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return path


def ffmpeg(src: str, dst: str, *args: str, timeout: float = 120) -> str:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", src, *args, dst], check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return dst


def tone(freq: float, seconds: float, rate: int = RATE, dbfs: float = -12.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (10 ** (dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chords(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Music-like: chords of rich tones (16 harmonics falling as an organ's do) with a slow
    envelope, changing every second."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(seconds)):
        t = np.arange(rate) / rate
        roots = rng.choice([196.0, 220.0, 246.9, 261.6, 293.7, 329.6], size=3, replace=False)
        note = sum(np.sin(2 * np.pi * f * k * t) / k ** 1.5 for f in roots for k in range(1, 17))
        out.append(note * np.sin(np.pi * t) ** 2)
    x = np.concatenate(out)
    return (0.25 * x / np.abs(x).max()).astype(np.float32)


def write(path: str, samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> str:
    import soundfile as sf

    sf.write(path, samples, rate, subtype=subtype)
    return path


def srt(cues: list[tuple[float, float, str]]) -> str:
    def ts(x: float) -> str:
        ms = int(round(x * 1000))
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
    return "".join(f"{i}\n{ts(a)} --> {ts(b)}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1))


def make_audio_demo(out: str) -> dict:
    """Write the demo set into `out` (a folder source with sidecars); returns what to expect."""
    import soundfile as sf

    os.makedirs(out, exist_ok=True)
    expected: dict[str, str] = {}
    speech = []
    for i, text in enumerate(SENTENCES):
        path = speak(text, os.path.join(out, f"speech_{i:02d}.wav"))
        with open(path[:-4] + ".txt", "w") as f:
            f.write(text)
        speech.append(path)
        expected[os.path.basename(path)] = "kept"
    for name, caption in CAPTIONS.items():
        if name.startswith("tone"):
            samples = tone(float(name.split("_")[1]), 4.0)
        elif name == "chords":
            samples = chords(6.0)
        else:
            samples = (0.1 * np.random.default_rng(1).standard_normal(4 * RATE)).astype(np.float32)
        path = write(os.path.join(out, f"{name}.flac"), samples)
        with open(path[:-5] + ".txt", "w") as f:
            f.write(caption)
        expected[os.path.basename(path)] = "kept"

    # A long recording: a talk with pauses between its sentences, and its timed transcript.
    pieces, cues, t = [], [], 0.0
    for i, text in enumerate(TALK):
        x, rate = sf.read(speak(text, os.path.join(out, f".talk_{i}.wav"), voice="en-us", speed=160), dtype="float32")
        os.unlink(os.path.join(out, f".talk_{i}.wav"))
        pieces += [x, np.zeros(int(1.5 * rate), np.float32)]
        cues.append((t, t + len(x) / rate, text))
        t += len(x) / rate + 1.5
    write(os.path.join(out, "long_talk.wav"), np.concatenate(pieces), rate)
    with open(os.path.join(out, "long_talk.srt"), "w") as f:
        f.write(srt(cues))
    expected["long_talk.wav"] = "kept"

    # Near-duplicates of speech_00, and an exact one (the same samples in another container).
    base = speech[0]
    variants = {
        "variant_mp3_64k.mp3": ["-ac", "1", "-b:a", "64k"],
        "variant_16k.wav": ["-ar", "16000"],
        "variant_quiet.wav": ["-af", "volume=0.5"],
        "variant_opus.opus": ["-c:a", "libopus", "-b:a", "48k"],
        "variant_aac.m4a": ["-c:a", "aac", "-b:a", "96k"],
        "remux_copy.flac": [],
    }
    for name, args in variants.items():
        ffmpeg(base, os.path.join(out, name), *args)
        with open(os.path.join(out, os.path.splitext(name)[0] + ".txt"), "w") as f:
            f.write(SENTENCES[0])
        expected[name] = "kept"
    # Telephone speech: another sentence through an 8 kHz channel, back at 22 kHz (narrowband)
    import soxr

    narrow = os.path.join(out, "telephone.wav")
    x, rate = sf.read(speech[3], dtype="float32")
    write(narrow, soxr.resample(soxr.resample(x, rate, 8000), 8000, rate), rate)
    with open(narrow[:-4] + ".txt", "w") as f:
        f.write(SENTENCES[3])
    expected["telephone.wav"] = "kept"
    x, rate = sf.read(base, dtype="float32")
    cut = int(0.05 * len(x))
    write(os.path.join(out, "variant_trimmed.wav"), x[cut:len(x) - cut], rate)
    with open(os.path.join(out, "variant_trimmed.txt"), "w") as f:
        f.write(SENTENCES[0])
    expected["variant_trimmed.wav"] = "kept"

    # Broken files, each with its own reason.
    good = open(base, "rb").read()
    broken = {
        "empty.wav": (b"", "empty_file"),
        "page.wav": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not_audio"),
        "cut_header.wav": (good[:30], "truncated"),
        "cut_data.wav": (good[: len(good) // 2], "truncated"),
    }
    for name, (data, reason) in broken.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        expected[name] = reason
    write(os.path.join(out, "silent.wav"), np.zeros(3 * RATE, np.float32))
    expected["silent.wav"] = "silent"
    write(os.path.join(out, "blip.wav"), tone(880, 0.2))
    expected["blip.wav"] = "too_short"
    nan = tone(440, 2.0)
    nan[1000:1010] = np.nan
    write(os.path.join(out, "nan.wav"), nan, subtype="FLOAT")
    expected["nan.wav"] = "corrupt"
    for name in ("empty", "page", "cut_header", "cut_data", "silent", "blip", "nan"):
        with open(os.path.join(out, f"{name}.txt"), "w") as f:
            f.write(f"a broken file: {name}")
    info = {"inputs": len(expected), "expected": expected}
    with open(os.path.join(out, ".expected.json"), "w") as f:  # hidden: not an input
        json.dump(info, f, indent=1)
    return info


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    a = ap.parse_args()
    info = make_audio_demo(a.out)
    print(f"audio demo data: {info['inputs']} recordings in {a.out}")
