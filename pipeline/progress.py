"""Progress a user can see: rows done of total, kept and rejected so far, rate and ETA.

On a terminal a live bar (tqdm); elsewhere (CI, `ray job submit` logs, a pipe) one
plain line every MMCURATE_PROGRESS_SECONDS seconds (default 10), and one when the
segment ends. Global stages report their phases (signatures, candidate pairs,
components round k) as lines of their own.
"""
from __future__ import annotations

import os
import sys
import time

from .watchdog import progress as tick

EVERY = float(os.environ.get("MMCURATE_PROGRESS_SECONDS", "10"))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, segment: str, total: int, log=print, stream=None):
        self.segment, self.total, self.log = segment, total, log
        self.stream = stream or sys.stderr
        self.done = self.kept = self.rejected = self.shown = 0
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=segment, unit=" rows", file=self.stream, dynamic_ncols=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / elapsed
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if rate and self.total > self.done else ""
        return (f"[mmcurate] {self.segment}: {self.done}/{self.total} rows{share}, kept {self.kept}, "
                f"rejected {self.rejected}, {rate:.1f} rows/s{eta}")

    def update(self, rows: int, kept: int = 0, rejected: int = 0) -> None:
        tick()
        self.done += rows
        self.kept += kept
        self.rejected += rejected
        if self.bar is not None:
            self.bar.set_postfix(kept=self.kept, rejected=self.rejected, refresh=False)
            self.bar.update(rows)
        elif time.monotonic() - self.last >= EVERY:
            self.last, self.shown = time.monotonic(), self.done
            print(self.line(), file=self.stream, flush=True)

    def phase(self, text: str) -> None:
        """A step of a global stage, as a line of its own."""
        tick()
        message = f"[mmcurate] {self.segment}: {text}"
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done != self.shown:
            print(self.line(), file=self.stream, flush=True)
