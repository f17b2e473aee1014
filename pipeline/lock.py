"""One writer per run directory: a lock taken before anything in it is touched.

Local directories use an advisory lock (flock) on `<output>/_LOCK`: the kernel
drops it when the holder dies, however it dies, so a stale lock is taken over
by simply taking it. The file holds the holder's host, pid and start time, for
the message that refuses a second run.

On s3:// the lock is the object `<output>/_LOCK`, created by a conditional write
(If-None-Match: *, through boto3: pyarrow.fs has no conditional writes), so two
runs that start together cannot both win. The holder rewrites it every
HEARTBEAT seconds (If-Match its own ETag). A lock whose last write is older than
STALE_AFTER by the server's clock, or whose holder is a dead process on this
host, is stale; it is taken over by a write conditioned on the stale ETag, so
that of two runs taking it over at once, one wins.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

from . import fs

LOCK_NAME = "_LOCK"
HEARTBEAT = 30.0  # seconds between rewrites of an S3 lock
STALE_AFTER = 120.0  # an S3 lock not rewritten for this long belongs to a dead run


class RunLocked(RuntimeError):
    """Another live run holds the run directory."""

    def __init__(self, message: str, holder: dict[str, Any] | None = None):
        super().__init__(message)
        self.holder = holder


def holder_record() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "boot": _process_start(os.getpid()), "machine": _machine()}


def _machine() -> str | None:
    """This kernel's boot and this process's pid namespace: containers that share a host
    name are not one machine, and a pid means nothing outside its namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another run (its lock record is unreadable)"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive_here(holder: dict[str, Any]) -> bool | None:
    """Whether the holder is alive, when it ran on this host; None when we cannot tell."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int) or \
            holder.get("machine") is None or holder.get("machine") != _machine():
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    boot = _process_start(holder["pid"])
    return boot is None or holder.get("boot") in (None, boot)


class RunLock:
    """`with RunLock(root): ...` holds the run directory, or raises RunLocked at once."""

    def __init__(self, root: str):
        self.root = root
        self.uri = fs.join(root, LOCK_NAME)
        self._impl = _S3Lock(self.uri) if root.startswith("s3://") else _LocalLock(self.uri)

    def acquire(self) -> "RunLock":
        self._impl.acquire()
        return self

    def release(self) -> None:
        self._impl.release()

    def check(self) -> None:
        """Raise if the lock was lost (an S3 holder that was taken for dead)."""
        lost = getattr(self._impl, "lost", None)
        if lost:
            raise RunLocked(f"{self.root}: lost the run lock: {lost}")

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def current_holder(root: str) -> dict[str, Any] | None:
    """The holder of a run directory's lock ({} when unreadable), or None when no live
    run holds it. Reads only: takes nothing, writes nothing."""
    uri = fs.join(root, LOCK_NAME)
    return (_S3Lock(uri) if root.startswith("s3://") else _LocalLock(uri)).holder()


class _LocalLock:
    def __init__(self, uri: str):
        self.path = fs.resolve(uri)[1]
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_json(lambda: os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunLocked(f"{os.path.dirname(self.path)} is in use by {describe(holder)}; "
                            "wait for that run to finish or stop it (one run per output directory)",
                            holder) from None
        record = json.dumps(holder_record()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self.fd = fd

    def holder(self) -> dict[str, Any] | None:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return _read_json(lambda: os.pread(fd, 4096, 0)) or {}
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (unlinking would race)
            self.fd = None


def _read_json(read) -> dict[str, Any] | None:
    try:
        value = json.loads(read() or b"null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class _S3Lock:
    def __init__(self, uri: str):
        self.bucket, _, self.key = uri[len("s3://"):].partition("/")
        self.etag: str | None = None
        self._lost: str | None = None
        self.renewed = 0.0  # monotonic time of the last write that kept the lock ours
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @staticmethod
    def _client():
        import boto3

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return boto3.client("s3", region_name=region, endpoint_url=endpoint)

    def _put(self, client, **condition) -> str:
        body = json.dumps(holder_record()).encode()
        return client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        client = self._client()
        try:
            self.etag = self._put(client, IfNoneMatch="*")
        except ClientError as e:
            if not _precondition_failed(e):
                raise
            self.etag = self._take_over_if_stale(client)
        self.renewed = time.monotonic()
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="mmcurate-lock", daemon=True)
        self._beat.start()

    def _read(self, client):
        """(holder, ETag, live) of the current lock object, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            got = client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        holder = _read_json(got["Body"].read)
        server_now = _server_time(got)
        age = (server_now - got["LastModified"]).total_seconds() if server_now else 0.0
        alive = _alive_here(holder or {})
        return holder or {}, got["ETag"], age, alive is True or (alive is None and age < STALE_AFTER)

    def holder(self) -> dict[str, Any] | None:
        found = self._read(self._client())
        return found[0] if found and found[3] else None

    def _take_over_if_stale(self, client) -> str:
        from botocore.exceptions import ClientError

        found = self._read(client)
        if found is None:  # released between our write and this read: try once more
            return self._put(client, IfNoneMatch="*")
        holder, etag, age, live = found
        if live:
            raise RunLocked(f"s3://{self.bucket}/{self.key.rsplit('/', 1)[0]} is in use by {describe(holder)} "
                            f"(lock renewed {age:.0f}s ago); wait for that run to finish or stop it "
                            "(one run per output directory)", holder)
        try:  # stale: replace exactly the stale lock; a concurrent taker makes this fail
            return self._put(client, IfMatch=etag)
        except ClientError as e:
            if _precondition_failed(e):
                raise RunLocked(f"s3://{self.bucket}/{self.key}: another run took over the stale lock first",
                                {}) from None
            raise

    def _heartbeat(self) -> None:
        from botocore.exceptions import ClientError

        client = self._client()
        while not self._stop.wait(HEARTBEAT):
            try:
                self.etag = self._put(client, IfMatch=self.etag)
                self.renewed = time.monotonic()
            except ClientError as e:
                if _precondition_failed(e) or e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    self._lost = "another run replaced it (this run was taken for dead)"
                    return
            except Exception:  # noqa: BLE001 - a network blip: try again at the next beat
                continue

    @property
    def lost(self) -> str | None:
        """Why the lock is no longer ours: replaced, or not renewed for long enough that
        another run may take it over."""
        if self._lost:
            return self._lost
        if self.etag is not None and time.monotonic() - self.renewed > STALE_AFTER - HEARTBEAT:
            return f"not renewed for {time.monotonic() - self.renewed:.0f}s (S3 unreachable?)"
        return None

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=HEARTBEAT)
            self._beat = None
        if self.etag is None or self._lost:
            return
        client = self._client()
        try:  # delete only our own lock
            head = client.head_object(Bucket=self.bucket, Key=self.key)
            if head["ETag"] == self.etag:
                client.delete_object(Bucket=self.bucket, Key=self.key)
        except ClientError:
            pass
        self.etag = None


def _precondition_failed(e) -> bool:
    err = e.response.get("Error", {})
    return err.get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict") or \
        e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)


def _server_time(response) -> datetime | None:
    from email.utils import parsedate_to_datetime

    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        return None
