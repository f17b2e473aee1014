"""redact_secrets on real code: what it redacts, and the high-entropy hits the parse spares.

    .venv/bin/python bench/bench_code_secrets.py [--files 400]

Real source files (Python and JavaScript from the installed packages, C headers from the
Python installation) through redact_secrets' detection: placeholders by kind, files
touched, the detector hits each rule left alone (outside string literals and comments by
the parse, not random, reading as words by the gibberish check), and the strings
redacted as keys (to judge the false positives that remain). Files per second on one core.
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
    import random

    def sample(pattern: str, n: int) -> list[str]:  # seeded, across all packages (not the first few)
        found = sorted(glob.glob(pattern, recursive=True))
        return random.Random(0).sample(found, min(n, len(found)))

    files = (sample(f"{site}/**/*.py", args.files // 2) + sample(f"{site}/**/*.js", args.files // 4) +
             sample(f"{include}/**/*.h", args.files // 4))
    language = {".py": "Python", ".js": "JavaScript", ".h": "C"}
    totals: dict[str, int] = {}
    spared: dict[str, int] = {}
    touched = 0
    keys = []
    t0 = time.perf_counter()
    for f in files:
        text = open(f, encoding="utf-8", errors="replace").read()
        hits, s = find(text, language[os.path.splitext(f)[1]])
        for k, v in s.items():
            spared[k] = spared.get(k, 0) + v
        keys += [(os.path.relpath(f, site), text[a:b][:60]) for a, b, label in hits if label == "<KEY>"]
        _, counts = redact(text, hits)
        touched += bool(counts)
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    seconds = time.perf_counter() - t0
    print(f"{len(files)} real files ({seconds:.1f} s, {len(files) / seconds:.0f} files/s): placeholders {totals}, "
          f"{touched} files touched; detector hits left alone (false positives avoided), by rule: {spared} "
          f"(outside_literals: the parse; not_random: looks_random; words: the gibberish check; placeholder: a "
          f"documentation or template password)")
    for where, value in keys[:20]:
        print(f"  <KEY>: {where}: {value!r}")


if __name__ == "__main__":
    main()

