"""Ingest and shard benchmarks, each against a baseline measured in the same run.

    .venv/bin/python bench/bench_ingest.py [--images 2000] [--cpus 2]

1. ingest images/s on one core (the stage's compute, no Ray) vs a bare
   decode-resize-encode loop over the same files (goal >= 0.8);
2. the whole job (listing, ingest, shards) on embedded Ray with --cpus CPUs vs
   a plain single-process loop doing the same work (goal >= 1.9 cold on 2 CPUs);
3. resize 2000x1500 -> 224x224 bicubic: Pillow vs pillow-simd (Pillow in a
   second small venv, .venv-pillow/, made on first use);
4. shard write MB/s vs a plain copy of the same bytes (goal >= 0.8).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import pyarrow as pa
from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from jobs.demo_data import make_photo_set  # noqa: E402
from pipeline import ledger  # noqa: E402
from stages.ingest.caption import normalize_caption  # noqa: E402
from stages.ingest.image_text import IngestImageText  # noqa: E402

SIZE, QUALITY = 384, 90


def prepare(n: int) -> tuple[str, list[str]]:
    data = os.path.join(HERE, "_data", "photos")
    paths = make_photo_set(data, n)
    manifest = os.path.join(HERE, "_data", f"manifest-{n}.jsonl")
    with open(manifest, "w") as f:
        for i, p in enumerate(paths):
            f.write(json.dumps({"path": p, "caption": f"photo number {i} of a generated set"}) + "\n")
    return manifest, paths


def bare_loop(paths: list[str]) -> list[bytes]:
    """What any ingest must do at least: read, decode (draft), resize, encode."""
    from PIL import Image

    out = []
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        s = min(1.0, SIZE / max(w, h))
        tw, th = max(1, round(w * s)), max(1, round(h * s))
        im.draft("RGB", (tw, th))
        im = im.convert("RGB").resize((tw, th), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=QUALITY)
        out.append(buf.getvalue())
    return out


def stage_loop(manifest: str) -> pa.Table:
    stage = IngestImageText(source=manifest, image_size=SIZE, quality=QUALITY)
    stage.ensure_setup()
    outs = []
    for table in stage.list_inputs():
        for i in range(0, table.num_rows, 32):
            outs.append(stage.process(table.slice(i, 32).drop_columns(["reject"])))
    return pa.concat_tables(outs, promote_options="permissive")


def plain_pipeline(manifest: str, out_dir: str, per_shard: int) -> int:
    """Single process, no Ray, no ledger: read manifest, process, write tars."""
    rows = [json.loads(line) for line in open(manifest)]
    images = bare_loop([r["path"] for r in rows])
    recs = sorted(((hashlib.blake2b(r["path"].encode(), digest_size=8).digest(), r, img)
                   for r, img in zip(rows, images)), key=lambda t: t[0])
    for s in range(0, len(recs), per_shard):
        with tarfile.open(os.path.join(out_dir, f"plain-{s // per_shard:06d}.tar"), "w") as tf:
            for key, r, img in recs[s:s + per_shard]:
                k = key.hex()
                for ext, data in (("jpg", img), ("txt", normalize_caption(r["caption"]).encode()),
                                  ("json", json.dumps(r).encode())):
                    info = tarfile.TarInfo(f"{k}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return len(recs)


def ray_pipeline(manifest: str, out_dir: str, per_shard: int, cpus: int) -> tuple[float, float, dict]:
    import ray

    from pipeline.job import parse_job
    from pipeline.runner import Runner, connect_ray

    t0 = time.perf_counter()
    connect_ray(num_cpus=cpus, object_store_mb=1024)
    ray.data.DataContext.get_current().enable_progress_bars = False
    init = time.perf_counter() - t0
    job = parse_job({"name": "bench", "stages": [
        {"ingest_image_text": {"source": manifest, "image_size": SIZE, "quality": QUALITY}},
        {"shard_webdataset": {"samples_per_shard": per_shard}}]})
    t0 = time.perf_counter()
    summary = Runner(job, out_dir, log=lambda *a: None).run()
    return init, time.perf_counter() - t0, summary


def resize_timing(python: str) -> float:
    code = ("import time;from PIL import Image;import numpy as np;"
            "im=Image.fromarray((np.random.default_rng(0).random((1500,2000,3))*255).astype('uint8'));"
            "im.resize((224,224),Image.Resampling.BICUBIC);t=time.perf_counter();"
            "[im.resize((224,224),Image.Resampling.BICUBIC) for _ in range(40)];"
            "print((time.perf_counter()-t)/40*1000)")
    return float(subprocess.check_output([python, "-c", code], text=True).strip())


def pillow_venv() -> str:
    venv = os.path.join(ROOT, ".venv-pillow")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "pillow==13.0.0", "numpy"],
                              stderr=subprocess.DEVNULL)
    return py


def shard_write(table: pa.Table, tmp: str) -> tuple[float, float, int, int]:
    """The shard writer on rows whose images are in a media store (as in a run), against a
    plain copy of the same bytes read from the same store into one file."""
    from pipeline import media
    from stages.ingest.image_text import IngestImageText
    from stages.shard.webdataset import _ShardWriter

    table, _ = media.store(table, ["image"], media.Store(os.path.join(tmp, "media")))
    columns = {c.name: c for c in IngestImageText(source="x").adds()}
    t0 = time.perf_counter()
    stats = _ShardWriter(tmp, "bench", columns, [])(0, table)
    shard_s = time.perf_counter() - t0
    nbytes = stats["bytes"]
    refs = [r for r in table.column("image").to_pylist() if r]
    t0 = time.perf_counter()
    with open(os.path.join(tmp, "copy.bin"), "wb") as f:
        for r in refs:
            f.write(media.read(r))
    copy_s = time.perf_counter() - t0
    return shard_s, copy_s, nbytes, sum(r["size"] for r in refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=500)
    a = ap.parse_args()
    manifest, paths = prepare(a.images)
    n = len(paths)
    import PIL

    print(f"# {n} JPEGs of 640x480 -> fit {SIZE}px, JPEG q{QUALITY}; PIL {PIL.__version__}; "
          f"{os.cpu_count()} cores")

    bare_loop(paths[:50])  # warm the page cache and the imports
    t0 = time.perf_counter()
    bare_loop(paths)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = stage_loop(manifest)
    stage = time.perf_counter() - t0
    ok = table.filter(pa.compute.is_null(table.column("reject"))).num_rows
    print(f"1. ingest on one core: stage {n / stage:.1f} img/s, bare loop {n / bare:.1f} img/s, "
          f"ratio {bare / stage:.2f} (goal >= 0.8); {ok}/{n} kept")
    record("ingest", "ingest_image_text, one core", f"{n / stage:.0f} img/s", baseline=f"decode-resize-encode loop "
           f"{n / bare:.0f} img/s", ratio=bare / stage, goal=">= 0.8", met=bare / stage >= 0.8)

    plains = []
    for _ in range(2):  # best of two, as for the warm Ray runs
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            plain_pipeline(manifest, tmp, a.per_shard)
            plains.append(time.perf_counter() - t0)
    plain = min(plains)
    runs = []
    for attempt in ("cold", "warm", "warm"):  # cold: the first job after ray.init starts the workers
        out = os.path.join(HERE, "_data", f"run-{len(runs)}")
        shutil.rmtree(out, ignore_errors=True)
        init, ray_s, summary = ray_pipeline(manifest, out, a.per_shard, a.cpus)
        runs.append((attempt, init, ray_s, summary, ledger.audit(out)["ok"]))
    runs = [runs[0], min(runs[1:], key=lambda r: r[2])]  # cold, and the best warm run
    for attempt, _init, ray_s, summary, ok in runs:
        seg = {s["segment"]: s["seconds"] for s in summary["segments"]}
        print(f"2. whole job ({attempt}), embedded Ray with {a.cpus} CPUs: {ray_s:.2f}s ({n / ray_s:.0f} img/s; "
              f"segments {seg}) vs plain single-process loop {plain:.2f}s ({n / plain:.0f} img/s): "
              f"ratio {plain / ray_s:.2f} (goal >= 1.9 cold); audit ok={ok}")
        record("ingest", f"whole image job on embedded Ray, {a.cpus} CPUs, {attempt}", f"{n / ray_s:.0f} img/s",
               baseline=f"single-process loop {n / plain:.0f} img/s", ratio=plain / ray_s,
               goal=">= 1.9" if attempt == "cold" else "", met=plain / ray_s >= 1.9 if attempt == "cold" else None)
    print(f"   (ray.init took {runs[0][1]:.1f}s, not included)")

    simd_ms = resize_timing(sys.executable)
    pil_ms = resize_timing(pillow_venv())
    print(f"3. resize 2000x1500 -> 224x224 bicubic: pillow-simd/current {simd_ms:.2f} ms, Pillow 13.0.0 "
          f"{pil_ms:.2f} ms: {pil_ms / simd_ms:.1f}x faster")
    record("ingest", "resize 2000x1500 -> 224 bicubic", f"{simd_ms:.2f} ms", baseline=f"Pillow 13.0.0 {pil_ms:.2f} ms",
           ratio=pil_ms / simd_ms)

    kept = table.filter(pa.compute.is_null(table.column("reject"))).drop_columns(["reject"])
    best = []
    for _ in range(3):  # best of three for both: the first pass also warms the page cache
        with tempfile.TemporaryDirectory() as tmp:
            best.append(shard_write(kept, tmp))
    shard_s, copy_s = min(b[0] for b in best), min(b[1] for b in best)
    nbytes, copied = best[0][2], best[0][3]
    shard_rate, copy_rate = nbytes / 1e6 / shard_s, copied / 1e6 / copy_s
    print(f"4. shard write: {shard_rate:.0f} MB/s ({nbytes / 1e6:.1f} MB of tar) vs plain copy of the image "
          f"bytes {copy_rate:.0f} MB/s: ratio {shard_rate / copy_rate:.2f} (goal >= 0.8)")
    record("ingest", "shard writing (tar + index + stats)", f"{shard_rate:.0f} MB/s",
           baseline=f"plain copy {copy_rate:.0f} MB/s", ratio=shard_rate / copy_rate, goal=">= 0.8",
           met=shard_rate / copy_rate >= 0.8)


if __name__ == "__main__":
    main()
