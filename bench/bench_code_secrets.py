"""redact_secrets on real code: what it redacts, and the high-entropy hits the parse spares.

    .venv/bin/python bench/bench_code_secrets.py [--files 400]

Real source files (Python and JavaScript from the installed packages, C headers from the
Python installation) through redact_secrets' detection: placeholders by kind, files
touched, and how many high-entropy hits lay outside string literals and comments (left
alone because the parse says they are code), and the strings redacted as keys (to judge
the false positives). Files per second on one core.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import sysconfig
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=400)
    args = ap.parse_args()
    from stages.filters.secrets import find, redact

    site = sysconfig.get_paths()["purelib"]
    include = sysconfig.get_paths()["include"]
    files = (sorted(glob.glob(f"{site}/**/*.py", recursive=True))[: args.files // 2] +
             sorted(glob.glob(f"{site}/**/*.js", recursive=True))[: args.files // 4] +
             sorted(glob.glob(f"{include}/**/*.h", recursive=True))[: args.files // 4])
    language = {".py": "Python", ".js": "JavaScript", ".h": "C"}
    totals: dict[str, int] = {}
    spared = touched = 0
    keys = []
    t0 = time.perf_counter()
    for f in files:
        text = open(f, encoding="utf-8", errors="replace").read()
        hits, s = find(text, language[os.path.splitext(f)[1]])
        spared += s
        keys += [(os.path.relpath(f, site), text[a:b][:60]) for a, b, label in hits if label == "<KEY>"]
        _, counts = redact(text, hits)
        touched += bool(counts)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    seconds = time.perf_counter() - t0
    print(f"{len(files)} real files ({seconds:.1f} s, {len(files) / seconds:.0f} files/s): placeholders {totals}, "
          f"{touched} files touched; high-entropy hits outside literals and comments left alone: {spared}")
    for where, value in keys[:20]:
        print(f"  <KEY>: {where}: {value!r}")


if __name__ == "__main__":
    main()

