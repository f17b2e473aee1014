"""Demo and test data with no download: the photographs inside scikit-image's wheel,
generated variations of them (crops, re-encodes, near-copies), and a set of
deliberately broken inputs, each with a caption.

    python -m jobs.demo_data OUT_DIR [--copies N]

writes OUT_DIR/images/*, OUT_DIR/manifest.jsonl and OUT_DIR/expected.json
(which broken input should get which reason code at ingest, and which filter
case which filter's reason).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random

import numpy as np
from PIL import Image

# Photographs that scikit-image ships in its wheel (the rest of its gallery downloads).
PHOTOS = {
    "astronaut": "an astronaut in a white space suit in front of the flag",
    "chelsea": "a tabby cat looking to the side",
    "coffee": "a cup of coffee on a saucer",
    "rocket": "a rocket on the launch pad",
    "hubble_deep_field": "galaxies of the hubble deep field",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "retina": "a photograph of the retina of a human eye",
    "camera": "a cameraman with a tripod in a park",
    "coins": "old coins on a dark background",
    "moon": "the surface of the moon",
    "brick": "a brick wall",
    "grass": "blades of grass seen from above",
    "gravel": "gravel on the ground",
    "clock": "a clock on a wall",
    "colorwheel": "a colour wheel",
    "cell": "a cell under a microscope",
}
STYLES = ["a photo of {}", "{}", "a close-up picture of {}", "an image showing {}", "{}, high quality photo"]


def photos() -> dict[str, np.ndarray]:
    """The real photographs as RGB uint8 arrays."""
    import skimage.data as data

    out = {}
    for name in PHOTOS:
        arr = getattr(data, name)()
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        out[name] = np.ascontiguousarray(arr[..., :3].astype(np.uint8))
    return out


def variation(arr: np.ndarray, rng: random.Random, size: tuple[int, int] | None = None) -> Image.Image:
    """A near-copy: random crop, flip, brightness change, optional fixed size."""
    im = Image.fromarray(arr)
    w, h = im.size
    cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    im = im.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    factor = rng.uniform(0.8, 1.2)
    im = Image.fromarray(np.clip(np.asarray(im, dtype=np.float32) * factor, 0, 255).astype(np.uint8))
    if size:
        im = im.resize(size, Image.Resampling.BICUBIC)
    return im


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def broken_inputs(arr: np.ndarray) -> list[tuple[str, bytes | None, bytes | str, str]]:
    """(file name, bytes or None for a missing file, caption, expected outcome).

    The outcome is a reject reason code, or "kept" for odd but valid inputs.
    """
    good = jpeg(Image.fromarray(arr))
    im = Image.fromarray(arr)
    cases = []
    cases.append(("truncated.jpg", good[: len(good) // 2], "a truncated jpeg", "truncated"))
    cases.append(("zero.jpg", b"", "an empty file", "empty_file"))
    cases.append(("page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "an html page", "not_an_image"))
    cases.append(("noise.jpg", bytes(random.Random(7).getrandbits(8) for _ in range(4096)), "random bytes", "not_an_image"))
    cases.append(("missing.jpg", None, "a file that is not there", "missing_file"))
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # 144 Mpx in a few KB
    cases.append(("bomb.png", bomb.getvalue(), "a decompression bomb", "decompression_bomb"))
    cmyk = io.BytesIO()
    im.convert("CMYK").save(cmyk, format="JPEG", quality=90)
    cases.append(("cmyk.jpg", cmyk.getvalue(), "a cmyk jpeg of a cat", "kept"))
    sixteen = io.BytesIO()
    gray16 = (np.asarray(im.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(sixteen, format="PNG")
    cases.append(("gray16.png", sixteen.getvalue(), "a 16-bit grayscale png", "kept"))
    pal = io.BytesIO()
    pa_im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pa_im.info["transparency"] = 0
    pa_im.save(pal, format="PNG", transparency=0)
    cases.append(("palette_alpha.png", pal.getvalue(), "a palette png with transparency", "kept"))
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(rotated, format="JPEG", quality=90, exif=exif.tobytes())
    cases.append(("exif_rotated.jpg", rotated.getvalue(), "an exif rotated photo", "kept"))
    cases.append(("bad_utf8.jpg", good, b"caf\xe9 au lait \xff\xfe", "kept"))
    cases.append(("control.jpg", good, "a\x00 caption\x07 with\tcontrol\r\ncharacters\x1b", "kept"))
    cases.append(("empty_caption.jpg", good, " \t\x00 ", "empty_caption"))
    return cases


def filter_cases(arr: np.ndarray) -> list[tuple[str, bytes, str, str]]:
    """(file name, bytes, caption, "stage: reason" or "kept: <what happens>") for the demo's filters."""
    im = Image.fromarray(arr)
    return [
        ("blank.jpg", jpeg(Image.new("RGB", (320, 240), (128, 128, 128))), "a plain grey background picture",
         "filter_image_quality: low_entropy"),
        ("small.jpg", jpeg(im.resize((150, 150))), "a small picture of a tabby cat", "filter_datacomp_basic: image_too_small"),
        ("wide.jpg", jpeg(im.resize((960, 240))), "a very wide banner with a cat", "filter_datacomp_basic: extreme_aspect_ratio"),
        ("short.jpg", jpeg(im), "cat", "filter_datacomp_basic: caption_too_short"),
        ("french.jpg", jpeg(im), "un chat tigré qui regarde sur le côté de la maison",
         "filter_caption_quality: wrong_language"),
        ("spam.jpg", jpeg(im), "cat photo cat photo cat photo cat photo cat photo", "filter_caption_quality: repetitive_caption"),
        ("camera.jpg", jpeg(im), "IMG_20240101_123456 camera upload.jpg", "filter_caption_quality: boilerplate_caption"),
        ("email.jpg", jpeg(im.transpose(Image.Transpose.FLIP_TOP_BOTTOM)),
         "a cat upside down, write to jane.doe@example.org for prints", "kept: e-mail redacted"),
    ]


def make_demo(out: str, copies: int = 16, seed: int = 0) -> dict:
    """Write the demo set; returns {"inputs", "expected": {file: outcome}}."""
    rng = random.Random(seed)
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    rows, expected = [], {}
    arrays = photos()
    for name, arr in arrays.items():
        for i in range(copies):
            fname = f"{name}_{i:03d}.jpg"
            im = variation(arr, rng) if i else Image.fromarray(arr)
            with open(os.path.join(img_dir, fname), "wb") as f:
                f.write(jpeg(im, quality=rng.choice([75, 85, 95])))
            caption = rng.choice(STYLES).format(PHOTOS[name])
            rows.append({"path": f"images/{fname}", "caption": caption, "licence": "BSD-3-Clause (scikit-image)",
                         "photo": name})
    for fname, data, caption, outcome in broken_inputs(arrays["chelsea"]):
        if data is not None:
            with open(os.path.join(img_dir, fname), "wb") as f:
                f.write(data)
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8", "surrogateescape")
        rows.append({"path": f"images/{fname}", "caption": caption, "licence": "generated", "photo": "broken"})
        expected[fname] = outcome
    filtered = {}
    for fname, data, caption, outcome in filter_cases(arrays["chelsea"]):
        with open(os.path.join(img_dir, fname), "wb") as f:
            f.write(data)
        rows.append({"path": f"images/{fname}", "caption": caption, "licence": "generated", "photo": "filter-case"})
        filtered[fname] = outcome
    with open(os.path.join(out, "manifest.jsonl"), "w", encoding="utf-8", errors="surrogateescape") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    info = {"inputs": len(rows), "expected": expected, "filtered": filtered}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def make_photo_set(out: str, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[str]:
    """n JPEGs of about `size` (variations of the real photographs), for benchmarks."""
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    arrays = list(photos().items())
    paths = []
    for i in range(n):
        name, arr = arrays[i % len(arrays)]
        path = os.path.join(out, f"{name}_{i:05d}.jpg")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(jpeg(variation(arr, rng, size), quality=90))
        paths.append(path)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--copies", type=int, default=16, help="images per photograph (1 original + variations)")
    a = ap.parse_args()
    info = make_demo(a.out, a.copies)
    print(f"demo data: {info['inputs']} inputs in {a.out} ({len(info['expected'])} deliberately broken)")
