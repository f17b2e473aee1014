"""Perceptual dedup: how often variants are found, how often distinct images collide,
and what the crop grid costs.

    .venv/bin/python bench/bench_phash.py [--variants 6]

Images: the 16 photographs in scikit-image's wheel and their four quadrants (80
distinct images: quadrants of one photograph share no pixels). Variants of each:
re-encoded at quality 40, halved, and cropped by up to 10% of each side (each side
drawn independently, then possibly halved and re-encoded). Rule as in dedup_phash:
the full hash of one image against every grid hash of the other.

Prints, per max_distance: variant recall (variant within range of its own
original) and false matches among the 3,160 distinct pairs; with the plain
single pHash (no grid) as the baseline, measured in the same run. Then hashing
throughput per core with and without the grid.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time

import numpy as np
from PIL import Image

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from jobs.demo_data import photos  # noqa: E402
from stages.dedup.phash import hamming, image_hashes  # noqa: E402


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def images() -> dict[str, Image.Image]:
    out = {}
    for name, arr in photos().items():
        im = Image.fromarray(arr)
        out[name] = im
        w, h = im.size
        for q, (x, y) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
            out[f"{name}/q{q}"] = im.crop((x * w // 2, y * h // 2, x * w // 2 + w // 2, y * h // 2 + h // 2))
    return out


def variants(im: Image.Image, rng: random.Random, n: int) -> list[bytes]:
    w, h = im.size
    out = [jpeg(im, 40), jpeg(im.resize((w // 2, h // 2), Image.Resampling.BICUBIC))]
    while len(out) < n:
        cut = [rng.uniform(0, 0.1) for _ in range(4)]
        v = im.crop((int(cut[0] * w), int(cut[1] * h), int(w - cut[2] * w), int(h - cut[3] * h)))
        if rng.random() < 0.5:
            v = v.resize((max(1, v.width // 2), max(1, v.height // 2)), Image.Resampling.BILINEAR)
        out.append(jpeg(v, rng.choice([50, 75, 95])))
    return out


def distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(min(hamming(a[0], b).min(), hamming(b[0], a).min()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", type=int, default=6)
    args = ap.parse_args()
    rng = random.Random(0)
    ims = images()
    originals = {name: jpeg(im) for name, im in ims.items()}
    plain_box = [(0.0, 0.0, 0.0, 0.0)]
    grid = {name: image_hashes(data) for name, data in originals.items()}
    plain = {name: image_hashes(data, boxes=plain_box) for name, data in originals.items()}
    var_grid, var_plain = [], []
    for name, im in ims.items():
        for data in variants(im, rng, args.variants):
            var_grid.append(distance(image_hashes(data), grid[name]))
            var_plain.append(distance(image_hashes(data, boxes=plain_box), plain[name]))
    names = list(ims)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    dist_grid = [distance(grid[a], grid[b]) for a, b in pairs]
    dist_plain = [distance(plain[a], plain[b]) for a, b in pairs]
    print(f"{len(names)} distinct images ({len(pairs)} pairs), {len(var_grid)} variants "
          f"(re-encoded, halved, cropped <= 10% per side)")
    print(f"{'max_distance':>12} {'recall grid':>12} {'recall plain':>13} {'false pairs grid':>17} "
          f"{'false pairs plain':>18}")
    for k in (4, 6, 8, 10, 12):
        rg = np.mean(np.array(var_grid) <= k)
        rp = np.mean(np.array(var_plain) <= k)
        fg = int(np.sum(np.array(dist_grid) <= k))
        fp = int(np.sum(np.array(dist_plain) <= k))
        print(f"{k:>12} {rg:>12.4f} {rp:>13.4f} {fg:>17} {fp:>18}")
        if k == 8:  # dedup_phash's default max_distance
            record("phash", "dedup_phash variants found (re-encoded, halved, cropped), max_distance 8",
                   f"recall {rg:.4f}, {fg} false pairs", baseline=f"single pHash: recall {rp:.4f}, {fp} false pairs",
                   ratio=rg / max(rp, 1e-9))
    far = sorted({n for n, d in zip([n for n in ims for _ in range(args.variants)], var_grid) if d > 8})
    print(f"variants beyond 8 bits with the grid: {sum(d > 8 for d in var_grid)} (of {', '.join(far) or 'none'})")

    data = [jpeg(Image.fromarray(a).resize((640, 480))) for a in photos().values()]
    for label, boxes in (("grid (81 hashes)", None), ("plain (1 hash)", plain_box)):
        t = time.perf_counter()
        reps = 0
        while time.perf_counter() - t < 3:
            for d in data:
                image_hashes(d, boxes=boxes)
            reps += len(data)
        rate = reps / (time.perf_counter() - t)
        print(f"hashing 640x480 JPEGs, {label}: {rate:.0f} images/s on one core")


if __name__ == "__main__":
    main()
