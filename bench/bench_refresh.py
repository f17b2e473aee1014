"""A refresh that adds 10% new inputs against a full run of everything, in the same run.

    .venv/bin/python bench/bench_refresh.py [--images 2000] [--cpus 2]

Inputs are generated pictures (64x64 PNG, distinct noise) with sidecar captions, one in
ten of the new ones a byte copy of a published picture. The job ingests, deduplicates
exactly (content) and by perceptual hash (`--near none`: exactly only), and shards. Measured, each on a fresh dataset
folder and a warm embedded Ray:
1. the full run: `mmcurate refresh` on an empty dataset with all N * 1.1 inputs;
2. the refresh: release 1 made from N inputs first (not timed), then the N * 0.1 new
   ones added and `mmcurate refresh` timed (it lists every input, reads only the new).
`--demo`: jobs/demo.yaml (every stage of the image demo) on the demo's 277 inputs
(runs/demo-data, made by `make demo`): 90% published first, then the last 10%.
`--texts N`: the same with N generated texts (word salad from a 5,000-word vocabulary,
one in ten new ones a near copy of a published text) through ingest_table, dedup_minhash
and the shards.
Goal (issue 17): the refresh takes at most 25% of the full run's time.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

JOB = """name: bench-refresh
stages:
  - ingest_image_text: {{source: {source}, image_size: 64}}
  - dedup_exact: {{key: content}}
{near}  - shard_webdataset: {{name: pics, samples_per_shard: 1000}}
"""


def picture(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def add(folder: str, first: int, count: int, copies_of: int = 0) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(first, first + count):
        seed = (i % copies_of) if copies_of and i % 10 == 0 else i  # one in ten: a published picture again
        with open(os.path.join(folder, f"p{i:07d}.png"), "wb") as f:
            f.write(picture(seed))
        with open(os.path.join(folder, f"p{i:07d}.txt"), "w") as f:
            f.write(f"generated picture number {i}")


def timed_refresh(job_path: str, dataset: str) -> float:
    from pipeline.job import load_job
    from pipeline.release import refresh

    t0 = time.perf_counter()
    refresh(load_job(job_path), dataset, log=lambda *a: None)
    return time.perf_counter() - t0


TEXT_JOB = """name: bench-refresh-texts
stages:
  - ingest_table: {{source: {source}}}
  - dedup_minhash: {{text_column: text}}
  - shard_webdataset: {{name: texts, samples_per_shard: 20000}}
"""


def texts(path: str, first: int, count: int, copies_of: int = 0) -> None:
    import json

    vocab = [f"w{i}" for i in range(5000)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for i in range(first, first + count):
            if copies_of and i % 10 == 0:  # a near copy of a published text: its words, one changed
                words = np.random.default_rng(i % copies_of).choice(vocab, 80).tolist()
                words[5] = "changed"
            else:
                words = np.random.default_rng(i).choice(vocab, 80).tolist()
            f.write(json.dumps({"doc": i, "text": " ".join(words)}) + "\n")


def bench_texts(n: int, data: str) -> tuple[float, float]:
    new = n // 10
    full_rows, growing = os.path.join(data, "texts-all"), os.path.join(data, "texts-growing")
    texts(os.path.join(full_rows, "a.jsonl"), 0, n)
    texts(os.path.join(full_rows, "b.jsonl"), n, new, copies_of=n)
    texts(os.path.join(growing, "a.jsonl"), 0, n)
    jobs = {}
    for name, source in (("all", full_rows), ("growing", growing)):
        jobs[name] = os.path.join(data, f"texts-{name}.yaml")
        with open(jobs[name], "w") as f:
            f.write(TEXT_JOB.format(source=source))
    full = timed_refresh(jobs["all"], os.path.join(data, "texts-full"))
    timed_refresh(jobs["growing"], os.path.join(data, "texts-dataset"))
    texts(os.path.join(growing, "b.jsonl"), n, new, copies_of=n)
    return full, timed_refresh(jobs["growing"], os.path.join(data, "texts-dataset"))


def bench_demo(data: str) -> tuple[float, float, int]:
    import yaml

    demo_data = os.path.join(os.path.dirname(HERE), "runs", "demo-data")
    rows = open(os.path.join(demo_data, "manifest.jsonl"), "rb").read().splitlines(keepends=True)  # as it is
    cut = len(rows) * 9 // 10
    job = yaml.safe_load(open(os.path.join(os.path.dirname(HERE), "jobs", "demo.yaml")))
    paths = {}
    for name, part in (("all", rows), ("growing", rows[:cut])):
        manifest = os.path.join(demo_data, f"manifest-bench-{name}.jsonl")  # beside the images it names
        with open(manifest, "wb") as f:
            f.writelines(part)
        job["stages"][0]["ingest_image_text"]["source"] = manifest
        paths[name] = os.path.join(data, f"demo-{name}.yaml")
        os.makedirs(data, exist_ok=True)
        with open(paths[name], "w") as f:
            yaml.safe_dump(job, f)
    full = timed_refresh(paths["all"], os.path.join(data, "demo-full"))
    timed_refresh(paths["growing"], os.path.join(data, "demo-dataset"))
    with open(os.path.join(demo_data, "manifest-bench-growing.jsonl"), "ab") as f:
        f.writelines(rows[cut:])
    return full, timed_refresh(paths["growing"], os.path.join(data, "demo-dataset")), len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--near", choices=["phash", "none"], default="phash", help="with dedup_phash, or exact only")
    ap.add_argument("--texts", type=int, default=0, help="measure on this many generated texts instead")
    ap.add_argument("--demo", action="store_true", help="measure jobs/demo.yaml on the demo data instead")
    a = ap.parse_args()
    import ray

    from pipeline.runner import connect_ray

    data = os.path.join(HERE, "_data", "refresh")
    shutil.rmtree(data, ignore_errors=True)
    if a.demo:
        connect_ray(num_cpus=a.cpus, object_store_mb=1024)
        ray.data.DataContext.get_current().enable_progress_bars = False
        full, refresh_s, n = bench_demo(data)
        print(f"# jobs/demo.yaml on the demo's {n} inputs: {n - n * 9 // 10} of them new; {a.cpus} CPUs")
        print(f"full run: {full:.1f}s; refresh adding the last 10%: {refresh_s:.1f}s: {refresh_s / full:.2f} of "
              "the full run (goal <= 0.25)")
        record("refresh", "refresh of jobs/demo.yaml adding 10%", f"{refresh_s:.1f} s", baseline=f"full run {full:.1f} s",
               ratio=refresh_s / full, goal="<= 0.25", met=refresh_s / full <= 0.25)
        return
    if a.texts:
        connect_ray(num_cpus=a.cpus, object_store_mb=2048)
        ray.data.DataContext.get_current().enable_progress_bars = False
        full, refresh_s = bench_texts(a.texts, data)
        print(f"# {a.texts} published texts + {a.texts // 10} new (one in ten a near copy); {a.cpus} CPUs; "
              "ingest_table + dedup_minhash + shards")
        print(f"full run of {a.texts + a.texts // 10} texts: {full:.1f}s; refresh adding {a.texts // 10}: "
              f"{refresh_s:.1f}s: {refresh_s / full:.2f} of the full run (goal <= 0.25)")
        record("refresh", f"refresh of {a.texts:,} texts adding 10% (dedup_minhash)", f"{refresh_s:.1f} s",
               baseline=f"full run {full:.1f} s", ratio=refresh_s / full, goal="<= 0.25", met=refresh_s / full <= 0.25)
        return
    n, new = a.images, a.images // 10
    full_inputs, growing = os.path.join(data, "all"), os.path.join(data, "growing-inputs")
    add(full_inputs, 0, n)
    add(full_inputs, n, new, copies_of=n)
    add(growing, 0, n)
    connect_ray(num_cpus=a.cpus, object_store_mb=1024)
    ray.data.DataContext.get_current().enable_progress_bars = False
    jobs = {}
    for name, source in (("all", full_inputs), ("growing", growing)):
        jobs[name] = os.path.join(data, f"{name}.yaml")
        with open(jobs[name], "w") as f:
            f.write(JOB.format(source=source, near="  - dedup_phash: {}\n" if a.near == "phash" else ""))
    timed_refresh(jobs["growing"], os.path.join(data, "warm-up"))  # Ray's workers started, imports done
    full = timed_refresh(jobs["all"], os.path.join(data, "full"))
    timed_refresh(jobs["growing"], os.path.join(data, "growing"))  # release 1 of N
    add(growing, n, new, copies_of=n)  # the same folder grows by 10%
    refresh_s = timed_refresh(jobs["growing"], os.path.join(data, "growing"))
    print(f"# {n} published inputs + {new} new (one in ten a copy of a published picture); {a.cpus} CPUs; "
          f"dedup_exact{' + dedup_phash' if a.near == 'phash' else ''}")
    print(f"full run of {n + new} inputs: {full:.1f}s; refresh adding {new}: {refresh_s:.1f}s: "
          f"{refresh_s / full:.2f} of the full run (goal <= 0.25)")
    record("refresh", f"refresh of {n:,} pictures adding 10% (dedup_exact{' + dedup_phash' if a.near == 'phash' else ''})", f"{refresh_s:.1f} s",
           baseline=f"full run {full:.1f} s", ratio=refresh_s / full, goal="<= 0.25", met=refresh_s / full <= 0.25)


if __name__ == "__main__":
    main()
