"""The stall watchdog: a segment that makes no progress for too long ends with an error.

The driver notes progress whenever work gets done (a part, a block written, a
task of a shuffle). Waits on Ray go through `gather` (or check `check()` in their
loop), which raises SegmentStalled once nothing has progressed for `timeout`
seconds; a wait that is not ours (a Ray Data iterator) is interrupted by a signal
to the main thread. Either way the segment ends with a clear error instead of
waiting forever on work that cannot be scheduled.
"""
from __future__ import annotations

import signal
import threading
import time

_active: "Watchdog | None" = None


class SegmentStalled(RuntimeError):
    """No progress for longer than the job's stall_timeout."""


def progress() -> None:
    """Note that work got done (a no-op when no watchdog runs)."""
    if _active is not None:
        _active.last = time.monotonic()


def check() -> None:
    """Raise SegmentStalled when the running segment has made no progress for too long."""
    if _active is not None and time.monotonic() - _active.last > _active.timeout:
        _active.fired = False
        raise _active.error()


def wait(pending: list, num_returns: int = 1, poll: float = 0.5) -> tuple[list, list]:
    """ray.wait in a slice of `poll` seconds, then the watchdog's check. Our own waits
    poll so that the watchdog never has to signal into Ray's C++ code."""
    import ray

    if _active is not None:
        _active.polling = True
    try:
        ready, pending = ray.wait(pending, num_returns=min(num_returns, len(pending)), timeout=poll)
    finally:
        if _active is not None:
            _active.polling = False
    if ready:
        progress()
    check()
    return ready, pending


def gather(refs: list) -> list:
    """ray.get(refs) under the watchdog: progress as results arrive, SegmentStalled when none do."""
    import ray

    pending = list(refs)
    while pending:
        _, pending = wait(pending, len(pending))
    return ray.get(list(refs))


def stalled(error: BaseException) -> SegmentStalled | None:
    """The SegmentStalled behind an error: raised from a signal handler inside C code,
    it can surface as a SystemError whose context it is."""
    while error is not None:
        if isinstance(error, SegmentStalled):
            return error
        error = error.__cause__ or error.__context__
    return None


class Watchdog:
    """`with Watchdog("segment 03", 600): ...` raises SegmentStalled in the main thread
    after 600 s without progress(). Off when timeout is 0 or outside the main thread
    (signals reach only the main thread)."""

    def __init__(self, what: str, timeout: float, hint: str = ""):
        self.what, self.timeout, self.hint = what, timeout, hint
        self.last = time.monotonic()
        self.fired = False
        self.polling = False  # in one of our own polling waits: no signal needed
        self._stop = threading.Event()
        self._enabled = timeout > 0 and threading.current_thread() is threading.main_thread()

    def error(self) -> SegmentStalled:
        return SegmentStalled(f"{self.what}: no progress for {self.timeout:g}s (stall_timeout); stopped. "
                              f"{self.hint}".strip())

    def _raise(self, *_):
        if self.fired:
            self.fired = False  # raise once; cleanup code after it must not be interrupted again
            raise self.error()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            if time.monotonic() - self.last > self.timeout and not self.polling:
                self.fired = True
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return

    def __enter__(self) -> "Watchdog":
        global _active
        if self._enabled:
            self._previous = signal.signal(signal.SIGUSR1, self._raise)
            _active = self
            self._thread = threading.Thread(target=self._watch, name="mmcurate-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if self._enabled:
            self._stop.set()
            self._thread.join()
            self.fired = False
            _active = None
            signal.signal(signal.SIGUSR1, self._previous)
