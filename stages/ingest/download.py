"""A hardened HTTP(S) downloader for URL lists (LAION, DataComp, CC12M style).

Every failure is a DownloadError with its own reason code; no URL can take
longer than its budget (attempts x total timeout + backoff), so no URL can
stall the end of a run. Requests go to the address that was checked: each hop
is resolved once, every address is vetted (no loopback, private, link-local or
metadata addresses unless allowed), and the connection is made to that address
with the original host name for the Host header, SNI and certificate checks.
"""
from __future__ import annotations

import email.utils
import ipaddress
import random
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urljoin, urlsplit

import urllib3

from pipeline import __version__

USER_AGENT = f"mmcurate/{__version__} (+https://github.com/mmcurate; image-text dataset curation)"
REDIRECTS = (301, 302, 303, 307, 308)
# Image formats by their first bytes: the Content-Type header is not trusted.
MAGIC = (
    (b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
)
OPT_OUT = {"noai", "noimageai"}  # X-Robots-Tag directives img2dataset honours


class DownloadError(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


@dataclass
class Policy:
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 60.0  # per attempt, from connect to the last byte
    retries: int = 2  # extra attempts on connection errors, 429 and 5xx
    backoff: float = 1.0  # first retry waits about this long, then 2x, 4x... (with jitter)
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for
    max_bytes: int = 32 << 20
    max_redirects: int = 5
    allow_private_networks: bool = False
    respect_opt_out: bool = True
    concurrency: int = 32  # downloads in flight per worker
    per_host_concurrency: int = 4
    per_host_rate: float = 0.0  # requests per second per host; 0 = no limit
    user_agent: str = USER_AGENT


def image_kind(data: bytes) -> str | None:
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "avif/heif"
    return None


def blocked(ip: str) -> bool:
    """Loopback, private, link-local (cloud metadata), shared, reserved or multicast."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return not addr.is_global or addr.is_multicast


class _HostGate:
    """Per-host concurrency (a semaphore) and rate (a minimum gap between requests)."""

    def __init__(self, concurrency: int, rate: float):
        self.slots = threading.Semaphore(concurrency)
        self.gap = 1.0 / rate if rate > 0 else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def __enter__(self):
        self.slots.acquire()
        if self.gap:
            with self.lock:
                now = time.monotonic()
                start = max(now, self.next_at)
                self.next_at = start + self.gap
            time.sleep(max(0.0, start - now))
        return self

    def __exit__(self, *exc):
        self.slots.release()


class Downloader:
    """fetch(url) -> bytes, or DownloadError. Thread-safe; fetch_many runs them concurrently."""

    def __init__(self, policy: Policy | None = None):
        self.policy = policy or Policy()
        self._pools: OrderedDict = OrderedDict()
        self._gates: dict[str, _HostGate] = {}
        self._lock = threading.Lock()

    # -- many -------------------------------------------------------------------
    def fetch_many(self, urls: list[str]) -> list[bytes | DownloadError]:
        out: list = [None] * len(urls)
        for i, result in self.fetch_iter(urls):
            out[i] = result
        return out

    def fetch_iter(self, urls: list[str]) -> Iterator[tuple[int, bytes | DownloadError]]:
        """(index, bytes or DownloadError) as downloads finish, so that the caller can
        decode one image while the others are still on the wire."""
        def one(url: str) -> bytes | DownloadError:
            try:
                return self.fetch(url)
            except DownloadError as e:
                return e

        with ThreadPoolExecutor(max_workers=max(1, min(self.policy.concurrency, len(urls)))) as pool:
            futures = {pool.submit(one, u): i for i, u in enumerate(urls)}
            for done in as_completed(futures):
                yield futures[done], done.result()

    # -- one --------------------------------------------------------------------
    def fetch(self, url: str) -> bytes:
        p = self.policy
        for attempt in range(p.retries + 1):
            try:
                return self._attempt(url)
            except DownloadError as e:
                retryable = e.reason in ("connection_error", "http_429") or e.reason.startswith("http_5")
                if not retryable or attempt == p.retries:
                    raise
                if e.retry_after is not None and e.retry_after > p.max_retry_after:
                    raise DownloadError(e.reason, f"{e.detail}; Retry-After {e.retry_after:.0f}s is too long") from None
                wait = p.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
                time.sleep(max(wait, e.retry_after or 0.0))
        raise AssertionError("unreachable")

    def _attempt(self, url: str) -> bytes:
        p = self.policy
        deadline = time.monotonic() + p.total_timeout
        seen, first_url = {url}, url
        for hop in range(p.max_redirects + 1):
            try:
                resp = self._request(url, deadline, first=hop == 0)
            except DownloadError as e:
                if hop:  # name the URL the user gave, not only the hop that failed
                    e.detail = f"{first_url} redirected: {e.detail}"
                raise
            if resp.status in REDIRECTS:
                location = resp.headers.get("Location")
                _discard(resp)
                if not location:
                    raise DownloadError("bad_redirect", f"{url}: HTTP {resp.status} without a Location")
                url = urljoin(url, location)
                if url in seen:
                    raise DownloadError("redirect_loop", f"{first_url}: redirect loop back to {url}")
                seen.add(url)
                continue
            try:
                data = self._body(url, resp, deadline)
            except DownloadError:
                _discard(resp)  # a half-read body must not go back into the pool
                raise
            resp.release_conn()
            return data
        raise DownloadError("too_many_redirects", f"{first_url}: more than {p.max_redirects} redirects, last to {url}")

    def _request(self, url: str, deadline: float, first: bool):
        p = self.policy
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise DownloadError("bad_url", f"{url!r}: {e}") from None
        if parts.scheme not in ("http", "https"):
            reason = "unsupported_scheme" if first else "redirect_scheme"
            raise DownloadError(reason, f"{url}: scheme {parts.scheme!r} is not http or https")
        host = parts.hostname
        if not host:
            raise DownloadError("bad_url", f"{url!r}: no host")
        port = port or (443 if parts.scheme == "https" else 80)
        ip = self._resolve(host, port, url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DownloadError("timeout", f"{url}: total timeout {p.total_timeout}s")
        timeout = urllib3.Timeout(connect=min(p.connect_timeout, remaining), read=min(p.read_timeout, remaining))
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        try:
            with self._gate(host):
                resp = self._pool(parts.scheme, ip, port, host).urlopen(
                    "GET", path, headers={"Host": host_header, "User-Agent": p.user_agent, "Accept": "image/*,*/*;q=0.5"},
                    redirect=False, retries=False, preload_content=False, timeout=timeout, assert_same_host=False)
        except urllib3.exceptions.ConnectTimeoutError as e:
            raise DownloadError("connection_error", f"{url}: connect timeout: {e}") from None
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout):
            raise DownloadError("timeout", f"{url}: no response within {timeout.read_timeout:.1f}s") from None
        except urllib3.exceptions.SSLError as e:
            raise DownloadError("tls_error", f"{url}: {e}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise DownloadError("connection_error", f"{url}: {type(e).__name__}: {e}") from None
        if resp.status in REDIRECTS:
            return resp
        if p.respect_opt_out:
            tags = ",".join(resp.headers.getlist("X-Robots-Tag")).lower().replace(":", ",").replace(" ", ",")
            if OPT_OUT & set(tags.split(",")):
                _discard(resp)
                raise DownloadError("opted_out", f"{url}: X-Robots-Tag {resp.headers.get('X-Robots-Tag')!r}")
        if resp.status == 429 or resp.status >= 500:
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            _discard(resp)
            raise DownloadError(f"http_{resp.status}", f"{url}: HTTP {resp.status}", retry_after)
        if resp.status != 200:
            _discard(resp)
            raise DownloadError(f"http_{resp.status}", f"{url}: HTTP {resp.status}")
        return resp

    def _body(self, url: str, resp, deadline: float) -> bytes:
        p = self.policy
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > p.max_bytes:
            raise DownloadError("too_large", f"{url}: Content-Length {length} > max_bytes {p.max_bytes}")
        chunks, size = [], 0
        try:
            while True:
                # read1 returns what has arrived: a body that drips cannot hold a read past the deadline.
                chunk = resp.read1(1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                if size > p.max_bytes:  # enforced on the bytes, whatever the headers said
                    raise DownloadError("too_large", f"{url}: body exceeds max_bytes {p.max_bytes}")
                if time.monotonic() > deadline:
                    raise DownloadError("timeout", f"{url}: body not complete within {p.total_timeout}s "
                                        f"({size} bytes received)")
                chunks.append(chunk)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout):
            raise DownloadError("timeout", f"{url}: the body stalled ({size} bytes received)") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise DownloadError("connection_error", f"{url}: body cut off: {type(e).__name__}: {e}") from None
        data = b"".join(chunks)
        if not data:
            raise DownloadError("empty_file", f"{url}: empty body")
        if image_kind(data) is None:
            ctype = resp.headers.get("Content-Type", "none")
            head = data[:64].lstrip().lower()
            what = "an HTML page" if head.startswith((b"<!doctype html", b"<html", b"<")) else f"bytes {data[:8].hex()}"
            raise DownloadError("not_an_image", f"{url}: {what}, not an image (Content-Type {ctype})")
        return data

    # -- plumbing ---------------------------------------------------------------------
    def _resolve(self, host: str, port: int, url: str) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise DownloadError("dns_error", f"{url}: cannot resolve {host}: {e}") from None
        ips = [info[4][0] for info in infos]
        if not self.policy.allow_private_networks:
            bad = [ip for ip in ips if blocked(ip)]
            if bad:
                raise DownloadError("blocked_address", f"{url}: {host} resolves to {bad[0]}, a loopback, private, "
                                    "link-local or reserved address (allow_private_networks is off)")
        return ips[0]

    def _gate(self, host: str) -> _HostGate:
        with self._lock:
            gate = self._gates.get(host)
            if gate is None:
                gate = self._gates[host] = _HostGate(self.policy.per_host_concurrency, self.policy.per_host_rate)
            return gate

    def _pool(self, scheme: str, ip: str, port: int, host: str):
        key = (scheme, ip, port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            size = self.policy.per_host_concurrency
            if scheme == "https":
                import certifi

                pool = urllib3.HTTPSConnectionPool(ip, port, maxsize=size, server_hostname=host,
                                                   assert_hostname=host, cert_reqs="CERT_REQUIRED",
                                                   ca_certs=certifi.where())
            else:
                pool = urllib3.HTTPConnectionPool(ip, port, maxsize=size)
            self._pools[key] = pool
            while len(self._pools) > 512:  # many hosts: keep the recent ones' connections
                self._pools.popitem(last=False)[1].close()
            return pool


def _discard(resp) -> None:
    """Drop a response without reading its (possibly endless) body."""
    resp.close()
    resp.release_conn()


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
