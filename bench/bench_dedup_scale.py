"""End-to-end dedup_minhash at scale on this machine: docs/s and peak memory.

    .venv/bin/python bench/bench_dedup_scale.py --docs 200000 [--docs 1000000]

Documents (~1 KB) are random runs of sentences from this machine's licence texts,
20% of them planted near-duplicates (a few words edited). The job runs as
`mmcurate stage dedup_minhash` on embedded Ray with 2 CPUs. Peak memory: the
driver's max RSS, and for Ray's worker processes the largest private memory
(RssAnon, sampled from /proc every 0.2 s) and the largest max RSS (VmHWM, which
also counts object-store pages a worker has mapped to read its inputs).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import shutil
import sys
import threading
import time

import numpy as np
from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def sentences() -> list[str]:
    out = []
    for path in sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright")):
        try:
            text = open(path, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 5]
    return sorted(set(out))


def build(path: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    pool = sentences()
    with open(path, "w") as f:
        originals = []
        for i in range(n):
            if originals and rng.random() < 0.2:  # a planted near-duplicate of an earlier document
                words = originals[rng.integers(len(originals))].split()
                for p in rng.choice(len(words), max(1, len(words) // 50), replace=False):
                    words[p] = f"edit{rng.integers(1 << 30)}"
                text = " ".join(words)
            else:
                text, parts = "", []
                while len(text) < 1000:
                    parts.append(pool[rng.integers(len(pool))])
                    text = " ".join(parts)
                if len(originals) < 50_000:
                    originals.append(text)
            f.write(json.dumps({"i": i, "text": text}) + "\n")


class WorkerPeak(threading.Thread):
    """Largest private memory and largest max RSS of any Ray worker process seen, in MiB, and
    the driver's own largest private memory (its max RSS also counts the object store's pages
    it mapped to read results, which are shared, not its own)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.private, self.driver, self.stop = 0, 0, 0, False

    def run(self) -> None:
        while not self.stop:
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    self.driver = max(self.driver, int(line.split()[1]) // 1024)
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                    if b"ray::" not in cmd and b"default_worker" not in cmd:
                        continue
                    for line in open(f"/proc/{pid}/status"):
                        if line.startswith("VmHWM:"):
                            self.peak = max(self.peak, int(line.split()[1]) // 1024)
                        elif line.startswith("RssAnon:"):
                            self.private = max(self.private, int(line.split()[1]) // 1024)
                except OSError:
                    continue
            time.sleep(0.2)


def spilled_mib() -> float:
    """What Ray's object store has spilled to disk so far in this session, in MiB (its own count)."""
    from ray._private.internal_api import memory_summary

    found = re.search(r"Spilled (\d+) MiB", memory_summary(stats_only=True))
    return float(found.group(1)) if found else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, action="append")
    a = ap.parse_args()
    import ray

    from pipeline import cli, fs
    from pipeline.runner import connect_ray

    connect_ray(num_cpus=2, object_store_mb=4096)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for n in a.docs or [200_000]:
        data = os.path.join(HERE, "_data", f"scale-{n}")
        shutil.rmtree(data, ignore_errors=True)
        os.makedirs(data)
        t0 = time.perf_counter()
        build(os.path.join(data, "docs.jsonl"), n)
        made = time.perf_counter() - t0
        peak = WorkerPeak()
        peak.start()
        t0 = time.perf_counter()
        cli.main(["stage", "dedup_minhash", "--input", os.path.join(data, "docs.jsonl"), "--output",
                  os.path.join(data, "out"), "--set", "text_column=text"])
        seconds = time.perf_counter() - t0
        peak.stop = True
        removed = fs.read_parquet_dir(os.path.join(data, "out", "rejects", "01-dedup_minhash"))
        driver = peak.driver
        print(f"{n} docs (built in {made:.0f}s): {seconds:.0f}s, {n / seconds:.0f} docs/s on 2 CPUs; removed "
              f"{0 if removed is None else removed.num_rows}; driver private {driver} MiB (max RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB with mapped objects); largest worker: "
              f"private {peak.private} MiB, max RSS with mapped objects {peak.peak} MiB; spilled to disk "
              f"{spilled_mib():.0f} MiB", flush=True)
        # issue 18's goals at 1M: <= 300 s, driver <= 1 GB, largest worker <= 2 GB, no spill
        goal = n >= 1_000_000
        record("dedup_scale", f"dedup_minhash, {n:,} docs, `mmcurate stage`", f"{seconds:.0f} s, {n / seconds:,.0f} "
               f"docs/s; driver {driver:,} MiB, worker {peak.private:,} MiB, spilled {spilled_mib():.0f} MiB",
               goal="<= 300 s, driver <= 1 GiB, worker <= 2 GiB, no spill" if goal else "",
               met=(seconds <= 300 and driver <= 1024 and peak.private <= 2048 and spilled_mib() == 0) if goal else None)


if __name__ == "__main__":
    main()
