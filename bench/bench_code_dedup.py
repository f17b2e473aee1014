"""Near-duplicate quality of dedup_minhash on code, files and functions, against exact Jaccard.

    .venv/bin/python bench/bench_code_dedup.py [--threshold 0.7] [--level both]

The corpus is real code with real vendored copies: the Python sources of pip and
setuptools as installed here (pip/_vendor and setuptools/_vendor hold copies of packaging,
idna, urllib3, requests, rich, pygments, platformdirs, ...) beside the same packages
installed on their own, at other versions. Functions are what extract_functions finds in
those files (definitions of 3 lines or more). The tokenizer is The Stack's (split on
[^A-Za-z_0-9], 5-grams); truth is the exact Jaccard of those shingles for every pair (a
sparse incidence matrix product). Scored at the threshold (0.7, The Stack v2):
  recall    = true pairs (J >= t) that are not both kept          (goal >= 0.99)
  precision = removed items that have a true partner                (goal >= 0.999)
The job runs on embedded Ray with 2 CPUs: dedup_minhash as `mmcurate stage` would.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import sysconfig
import time

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_dedup import truth  # noqa: E402

from stages.segment.code import definitions  # noqa: E402

PACKAGES = ["pip", "setuptools", "packaging", "idna", "urllib3", "requests", "rich", "pygments", "certifi",
            "platformdirs", "truststore", "msgpack", "distlib", "tomli", "zipp", "more_itertools", "jaraco",
            "importlib_metadata", "wheel", "cachecontrol", "resolvelib", "distro"]


def files() -> list[tuple[str, str]]:
    site = sysconfig.get_paths()["purelib"]
    out = []
    for package in PACKAGES:
        for path in sorted(glob.glob(os.path.join(site, package, "**", "*.py"), recursive=True)):
            try:
                text = open(path, encoding="utf-8").read()
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                out.append((os.path.relpath(path, site), text))
    return out


def functions(corpus: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for path, text in corpus:
        for item in definitions(text, "Python"):
            if item["kind"] != "file" and item["end_line"] - item["start_line"] + 1 >= 3:
                out.append((f"{path}:{item['name']}:{item['start_line']}", item["code"]))
    return out


def score(level: str, items: list[tuple[str, str]], threshold: float, data: str) -> None:
    from pipeline import cli, fs

    texts = [t for _, t in items]
    t0 = time.perf_counter()
    pairs, facts = truth(texts, threshold, tokenizer="code")
    print(f"# {level}: {len(texts)} items; {len(pairs)} true pairs with J >= {threshold} "
          f"({facts['pairs_over_0.5']} with J >= 0.5); exact truth in {time.perf_counter() - t0:.1f}s")
    folder = os.path.join(data, level)
    os.makedirs(folder)
    with open(os.path.join(folder, "items.jsonl"), "w") as f:
        for i, (name, text) in enumerate(items):
            f.write(json.dumps({"item": i, "name": name, "text": text}) + "\n")
    t0 = time.perf_counter()
    cli.main(["stage", "dedup_minhash", "--input", os.path.join(folder, "items.jsonl"), "--output",
              os.path.join(folder, "out"), "--set", "text_column=text", "--set", f"threshold={threshold}",
              "--set", "tokenizer=code"])
    seconds = time.perf_counter() - t0
    rejects = fs.read_parquet_dir(os.path.join(folder, "out", "rejects", "01-dedup_minhash"))
    removed = set(rejects.column("item").to_pylist()) if rejects is not None else set()
    recall = sum(1 for x, y in pairs if x in removed or y in removed) / max(1, len(pairs))
    partnered = {x for p in pairs for x in p}
    precision = len(removed & partnered) / max(1, len(removed))
    vendored = sum(1 for i in removed if "_vendor/" in items[i][0])
    print(f"{level}: dedup_minhash (code tokenizer, t={threshold}) removed {len(removed)} of {len(texts)} "
          f"({vendored} of them in a _vendor/ folder) in {seconds:.1f}s: recall {recall:.4f} (goal >= 0.99), "
          f"precision {precision:.4f} (goal >= 0.999)")
    record("code_dedup", f"dedup_minhash on code {level}, vs exact all-pairs Jaccard",
           f"recall {recall:.4f}, precision {precision:.4f}", goal="recall >= 0.99, precision >= 0.999",
           met=recall >= 0.99 and precision >= 0.999)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--level", choices=["file", "function", "both"], default="both")
    a = ap.parse_args()

    import ray

    from pipeline.runner import connect_ray

    corpus = files()
    data = os.path.join(HERE, "_data", "code_dedup")
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    connect_ray(num_cpus=2, object_store_mb=1024)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if a.level in ("file", "both"):
        score("file", corpus, a.threshold, data)
    if a.level in ("function", "both"):
        score("function", functions(corpus), a.threshold, data)


if __name__ == "__main__":
    main()
