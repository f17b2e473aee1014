"""External programs (ffmpeg, ffprobe, git) run safely: an argument list (never a shell),
a time limit, and bounded output read as it comes, so that no input can hang a worker or
fill its memory through a program's output."""
from __future__ import annotations

import subprocess
import threading

from pipeline.ledger import Rejected

OUTPUT_CAP = 1 << 20  # bytes of a program's stdout kept by default (ffprobe's JSON); more is a reject
MESSAGE_CAP = 16 << 10  # bytes of its stderr kept for messages


def run(args: list[str], timeout: float, reason: str = "decode_timeout", cap: int = OUTPUT_CAP,
        env: dict[str, str] | None = None, cwd: str | None = None) -> tuple[int, bytes, str]:
    """(return code, stdout, stderr's end) of a program: an argument list (never a shell),
    killed after `timeout` seconds (a reject with `reason`), stdout capped at `cap` bytes
    (more is a `corrupt` reject) and stderr at its last MESSAGE_CAP bytes, read as they
    come so that neither fills memory."""
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, cwd=cwd)
    out, err = bytearray(), bytearray()
    overflow = threading.Event()

    def drain(pipe, into: bytearray, cap: int, keep_tail: bool) -> None:
        for chunk in iter(lambda: pipe.read(1 << 16), b""):
            if keep_tail:
                into += chunk
                del into[:-cap]
            elif len(into) < cap:
                into += chunk[: cap - len(into)]
            else:
                overflow.set()

    readers = [threading.Thread(target=drain, args=(process.stdout, out, cap, False), daemon=True),
               threading.Thread(target=drain, args=(process.stderr, err, MESSAGE_CAP, True), daemon=True)]
    for r in readers:
        r.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise Rejected(reason, f"{args[0]} did not finish within {timeout:g}s") from None
    finally:
        for r in readers:
            r.join(timeout=5)
    if overflow.is_set():
        raise Rejected("corrupt", f"{args[0]} wrote more than {cap} bytes about the file")
    return process.returncode, bytes(out), err.decode("utf-8", "replace")


def last_line(message: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"
