"""MinHash signature throughput against datasketch, on real text from this machine.

    .venv/bin/python bench/bench_minhash.py [--docs 5000]

Documents are ~1 KB slices of the licence texts Debian installs
(/usr/share/common-licenses, /usr/share/doc/*/copyright). Both sides tokenise
(lowercase \\w+ runs) and build word 5-grams from the same texts; datasketch then
hashes with its default (sha1) hash through MinHash.bulk, 128 permutations.
One core each. Goal in issue 4: >= 10x.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from stages.dedup.minhash import signatures  # noqa: E402


def corpus(n: int, size: int = 1000) -> list[str]:
    files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
    docs: list[str] = []
    for path in files:
        try:
            text = open(path, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        docs += [text[i:i + size] for i in range(0, len(text) - size // 2, size)]
        if len(docs) >= n:
            break
    return docs[:n]


def datasketch_side(texts: list[str], num_perm: int) -> None:
    from datasketch import MinHash

    word = re.compile(r"\w+")
    sets = []
    for t in texts:
        toks = word.findall(t.lower())
        k = min(5, len(toks))
        sets.append([" ".join(toks[i:i + k]).encode() for i in range(len(toks) - k + 1)])
    MinHash.bulk(sets, num_perm=num_perm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--num-perm", type=int, default=128)
    a = ap.parse_args()
    texts = corpus(a.docs)
    kb = sum(len(t) for t in texts) / len(texts) / 1000
    print(f"# {len(texts)} documents of {kb:.1f} KB from this machine's licence texts; {a.num_perm} permutations")
    signatures(texts[:50], num_perm=a.num_perm)  # warm up
    t0 = time.perf_counter()
    signatures(texts, num_perm=a.num_perm)
    ours = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    datasketch_side(texts, a.num_perm)
    theirs = len(texts) / (time.perf_counter() - t0)
    print(f"signatures, one core: mmcurate {ours:.0f} docs/s vs datasketch MinHash.bulk {theirs:.0f} docs/s: "
          f"ratio {ours / theirs:.1f}x (goal >= 10x)")
    record("minhash", "MinHash signatures, one core", f"{ours:,.0f} docs/s",
           baseline=f"datasketch MinHash.bulk {theirs:,.0f} docs/s", ratio=ours / theirs, goal=">= 10",
           met=ours / theirs >= 10)


if __name__ == "__main__":
    main()
