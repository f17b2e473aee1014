"""Every benchmark's figures beside their baselines and goals, in one table.

Each bench calls `record(...)` where it prints a figure that has a goal or a baseline
measured in the same run; the rows gather in bench/_data/results.jsonl. `make bench`
empties that file, runs every bench, then prints the table:

    .venv/bin/python bench/goals.py            # the table of the rows gathered so far
    .venv/bin/python bench/goals.py --clear    # start a new table
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_data", "results.jsonl")


def record(bench: str, what: str, figure: str, *, baseline: str = "", ratio: float | None = None,
           goal: str = "", met: bool | None = None) -> None:
    """One row: what was measured, the figure, the baseline beside it, their ratio, the goal and
    whether it is met (None: a figure with no goal)."""
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    row = {"bench": bench, "what": what, "figure": figure, "baseline": baseline,
           "ratio": None if ratio is None else round(float(ratio), 3), "goal": goal, "met": met,
           "at": time.strftime("%Y-%m-%d %H:%M")}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


def table(rows: list[dict]) -> str:
    lines = ["| bench | what | mmcurate | baseline (same run) | ratio | goal | met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {r['bench']} | {r['what']} | {r['figure']} | {r['baseline']} | {ratio} | {r['goal']} | {met} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clear", action="store_true", help="empty the results file")
    a = ap.parse_args()
    if a.clear:
        if os.path.exists(RESULTS):
            os.remove(RESULTS)
        return
    if not os.path.exists(RESULTS):
        sys.exit(f"no results yet in {RESULTS}: run a bench first")
    with open(RESULTS) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = list({(r["bench"], r["what"]): r for r in rows}.values())  # a bench run again: its latest figures
    print(table(rows))
    missed = sum(r["met"] is False for r in rows)
    print(f"\n{len(rows)} figures, {sum(r['met'] is True for r in rows)} goals met, {missed} not met")


if __name__ == "__main__":
    main()
