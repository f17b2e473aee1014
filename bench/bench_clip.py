"""CLIP image throughput from JPEG bytes, without Ray (runs on a GPU machine that has none).

    python bench/bench_clip.py [--images 4096] [--batch-sizes 128,256,512] [--workers 15]

A ViT-B/32-sized CLIP with random weights (speed does not depend on the weights),
about 640x480 JPEGs made from scikit-image's photographs, in memory. Measured in one
run, each on its own and then together:
  decode   CPU worker processes: JPEG -> 224x224 uint8 (draft-mode decode, bicubic, crop)
  transfer uint8 batch -> device (pinned memory, non-blocking), scaled and normalised there
  model    the image tower, fp16/bf16 on GPU, fp32 on CPU
  end to end  the decode pool feeding the model, batches overlapping
  gpu decode  (where torchvision can decode JPEG on the GPU) nvjpeg -> resize -> model
The goal in issue 5 is >= 5,000 images/s end to end on one H100 machine.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from multiprocessing import get_context

import numpy as np

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from stages.features.clip import ClipEncoder, clip_pixels  # noqa: E402

SIZE = 224


def make_jpegs(n: int) -> list[bytes]:
    from PIL import Image

    from jobs.demo_data import photos

    base = []
    for arr in photos().values():
        buf = io.BytesIO()
        Image.fromarray(arr).resize((640, 480), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
        base.append(buf.getvalue())
    return [base[i % len(base)] for i in range(n)]


def _decode_chunk(chunk: list[bytes]) -> np.ndarray:
    return np.stack([clip_pixels(b, SIZE) for b in chunk])


def sync(enc: ClipEncoder) -> None:
    if enc.device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.0f} images/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, help="default 4096 on a GPU, 256 on a CPU")
    ap.add_argument("--batch-sizes", help="default 128,256,512 on a GPU, 32,64 on a CPU")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--model", default="random-vit-b32")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    import torch

    enc = ClipEncoder(a.model, a.device)
    gpu = enc.device.type == "cuda"
    a.images = a.images or (4096 if gpu else 256)
    a.batch_sizes = a.batch_sizes or ("128,256,512" if gpu else "32,64")
    print(f"device {enc.device} ({torch.cuda.get_device_name() if enc.device.type == 'cuda' else 'no GPU'}), "
          f"dtype {enc.dtype}, model {a.model}, {a.images} JPEGs of 640x480, {a.workers} decode workers, "
          f"torch {torch.__version__}")
    data = make_jpegs(a.images)
    pool = get_context("spawn").Pool(a.workers)
    pool.map(_decode_chunk, [data[:4]] * a.workers)  # workers started and warm
    chunk = 64
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    t = time.perf_counter()
    pixels = np.concatenate(pool.map(_decode_chunk, chunks))
    decode_s = time.perf_counter() - t
    print(f"decode alone ({a.workers} processes):          {rate(len(data), decode_s)}")

    best = 0.0
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        batches = [pixels[i:i + bs] for i in range(0, len(pixels), bs)]
        enc.encode_images(batches[0])  # warm-up (kernels, cudnn autotune)
        sync(enc)
        t = time.perf_counter()
        for b in batches:
            x = enc._to_device(b)
        sync(enc)
        transfer_s = time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                x = enc._to_device(b).permute(0, 3, 1, 2).to(enc.dtype).div_(255)
                enc.model.get_image_features(pixel_values=(x - enc.mean) / enc.std)
        sync(enc)
        model_s = time.perf_counter() - t
        # end to end: the pool decodes the next chunks while the model runs
        t = time.perf_counter()
        done, buf = 0, []
        for arr in pool.imap(_decode_chunk, chunks):
            buf.append(arr)
            if sum(len(x) for x in buf) >= bs:
                batch = np.concatenate(buf)
                buf = []
                enc.encode_images(batch)
                done += len(batch)
        if buf:
            enc.encode_images(np.concatenate(buf))
            done += sum(len(x) for x in buf)
        sync(enc)
        e2e_s = time.perf_counter() - t
        print(f"batch {bs:4d}: transfer {rate(len(pixels), transfer_s)} | transfer+model {rate(len(pixels), model_s)}"
              f" | end to end {rate(done, e2e_s)}")
        best = max(best, done / e2e_s)
    where = torch.cuda.get_device_name() if gpu else "CPU (no GPU here)"
    record("clip", f"CLIP ViT-B/32 from JPEG bytes, {where}", f"{best:,.0f} img/s", baseline="clip-retrieval "
           "1,500 img/s on a 3080 (published)", ratio=best / 1500 if gpu else None,
           goal=">= 5,000 img/s on one H100/H200", met=best >= 5000 if gpu else None)
    pool.close()

    try:
        from torchvision.io import decode_jpeg
    except Exception as e:  # noqa: BLE001 - optional path
        print(f"gpu decode: not available here ({type(e).__name__}: {str(e)[:80]})")
        return
    if enc.device.type != "cuda":
        print("gpu decode: no GPU here")
        return
    import torch.nn.functional as F

    bs = 256
    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    decode_jpeg(raw[:8], device="cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(raw), bs):
            imgs = decode_jpeg(raw[i:i + bs], device="cuda")  # list of (3, 480, 640) uint8
            x = torch.stack([F.interpolate(im[None].to(enc.dtype), size=(SIZE, round(SIZE * 640 / 480)),
                                           mode="bilinear", antialias=True)[0] for im in imgs])
            left = (x.shape[-1] - SIZE) // 2
            x = x[..., left:left + SIZE].div_(255)
            enc.model.get_image_features(pixel_values=(x - enc.mean) / enc.std)
    torch.cuda.synchronize()
    print(f"gpu decode (nvjpeg) + resize + model, batch {bs}: {rate(len(raw), time.perf_counter() - t)}")


if __name__ == "__main__":
    main()
