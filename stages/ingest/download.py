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
import http.client
import ipaddress
import os
import random
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urljoin, urlsplit

import urllib3
import urllib3.connection

from pipeline import __version__
from pipeline.ledger import Rejected

USER_AGENT = f"mmcurate/{__version__} (+https://github.com/mmcurate; image-text dataset curation)"
REDIRECTS = (301, 302, 303, 307, 308)
# Image formats by their first bytes: the Content-Type header is not trusted.
MAGIC = (
    (b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
)
OPT_OUT = {"noai", "noimageai"}  # X-Robots-Tag directives img2dataset honours
RETRY_STATUS = (429, 500, 502, 503, 504)  # worth another try; 501, 505, 511 are not
RETRYABLE = {"connection_error"} | {f"http_{s}" for s in RETRY_STATUS}


class DownloadError(Rejected):
    """A row's download failed (a reject), and how long the server asked us to wait."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(reason, detail)
        self.retry_after = retry_after


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
    kind: str = "image"  # what the body must be, judged by its bytes: image, audio or video
    spool: bool = False  # write bodies to temporary files (a Spooled path) instead of memory: videos


class Spooled(str):
    """A downloaded body in a temporary file (its path); whoever receives it deletes it."""

    def discard(self) -> None:
        try:
            os.unlink(self)
        except FileNotFoundError:
            pass


def image_kind(data: bytes) -> str | None:
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "avif/heif"
    return None


def _is_kind(data: bytes, kind: str) -> bool:
    if kind == "image":
        return image_kind(data) is not None
    if kind == "audio":
        from .audio import sniff

        return sniff(data[:64]) is not None
    if kind == "video":
        from .video import sniff as sniff_video

        return sniff_video(data[:512]) is not None
    return True


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def blocked(ip: str) -> bool:
    """Loopback, private, link-local (cloud metadata), shared, reserved, multicast or
    site-local, also when an IPv4 address hides inside IPv6 (mapped, 6to4, Teredo, NAT64)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    inner: list[ipaddress._BaseAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.is_site_local:
            return True
        if addr.ipv4_mapped:
            inner.append(addr.ipv4_mapped)
        if addr.sixtofour:
            inner.append(addr.sixtofour)
        if addr.teredo:
            inner.extend(addr.teredo)
        if addr in _NAT64 or (addr in _IPV4_COMPATIBLE and int(addr) > 1):
            inner.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return any(not a.is_global or a.is_multicast for a in inner)


def opted_out(values: list[str]) -> bool:
    """X-Robots-Tag noai/noimageai, for all agents or for mmcurate ("otherbot: noai" is not for us)."""
    for value in values:
        agent = None
        for token in value.split(","):
            token = token.strip().lower()
            head, sep, rest = token.partition(":")
            if sep and head.strip() not in ("unavailable_after", "max-snippet", "max-image-preview",
                                            "max-video-preview"):
                agent, token = head.strip(), rest.strip()
            if token in OPT_OUT and agent in (None, "*", "mmcurate"):
                return True
    return False


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


class _Watchdog:
    """Cuts a connection at the attempt's deadline, whatever it is blocked in
    (headers sent a byte at a time, a chunk-size line that never ends, a TLS handshake)."""

    def __init__(self, conn, seconds: float):
        self.conn, self.fired = conn, False
        self.timer = threading.Timer(max(0.0, seconds), self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        sock = getattr(self.conn, "sock", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


class Downloader:
    """fetch(url) -> bytes, or DownloadError. Thread-safe; fetch_many runs them concurrently.

    One connection per request: every request's socket is watched by its deadline,
    and a worker that meets millions of hosts keeps no pools of idle sockets.
    """

    def __init__(self, policy: Policy | None = None):
        self.policy = policy or Policy()
        self._gates: OrderedDict[str, _HostGate] = OrderedDict()
        self._lock = threading.Lock()
        self._dns = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mmcurate-dns")

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
            except Exception as e:  # noqa: BLE001 - one odd URL must stay one reject
                return DownloadError("download_failed", f"{url}: {type(e).__name__}: {e}")

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
                if e.reason not in RETRYABLE or attempt == p.retries:
                    raise
                if e.retry_after is not None and e.retry_after > p.max_retry_after:
                    raise DownloadError(e.reason, f"{e.detail}; Retry-After {e.retry_after:.0f}s is too long") from None
                wait = p.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
                time.sleep(max(wait, e.retry_after or 0.0))
        raise AssertionError("unreachable")

    def _attempt(self, url: str) -> bytes:
        p = self.policy
        seen, first_url = {url}, url
        deadline = None  # starts once the host lets us in: waiting for a slot is not the server's time
        for hop in range(p.max_redirects + 1):
            try:
                target = _Target.parse(url, first=hop == 0)
                with self._gate(target.host):
                    deadline = deadline or time.monotonic() + p.total_timeout
                    status, headers, data = self._exchange(target, deadline)
            except DownloadError as e:
                if hop:  # name the URL the user gave, not only the hop that failed
                    e.detail = f"{first_url} redirected: {e.detail}"
                raise
            if status in REDIRECTS:
                location = headers.get("Location")
                if not location:
                    raise DownloadError("bad_redirect", f"{url}: HTTP {status} without a Location")
                try:
                    url = urljoin(url, location)
                except ValueError as e:
                    raise DownloadError("bad_redirect", f"{url}: bad Location {location!r}: {e}") from None
                if url in seen:
                    raise DownloadError("redirect_loop", f"{first_url}: redirect loop back to {url}")
                seen.add(url)
                continue
            return data
        raise DownloadError("too_many_redirects", f"{first_url}: more than {p.max_redirects} redirects, last to {url}")

    def _exchange(self, t: "_Target", deadline: float) -> tuple[int, dict, bytes | None]:
        """One request to one vetted address: (status, headers, body or None for a redirect)."""
        p = self.policy
        ips = self._resolve(t, deadline)
        last: DownloadError | None = None
        for ip in ips:  # the next vetted address when one does not answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            conn = t.connection(ip, min(p.connect_timeout, remaining))
            try:
                with _Watchdog(conn, remaining) as dog:
                    try:
                        conn.connect()
                    except (OSError, urllib3.exceptions.HTTPError) as e:
                        last = _connect_error(t.url, e, dog.fired)
                        continue
                    conn.sock.settimeout(min(p.read_timeout, max(0.01, deadline - time.monotonic())))
                    return self._response(t, conn, deadline, dog)
            finally:
                conn.close()
        raise last or DownloadError("timeout", f"{t.url}: total timeout {p.total_timeout}s")

    def _response(self, t: "_Target", conn, deadline: float, dog: _Watchdog) -> tuple[int, dict, bytes | None]:
        p = self.policy
        try:
            conn.request("GET", t.path, headers={"Host": t.host_header, "User-Agent": p.user_agent,
                                                 "Accept": "image/*,*/*;q=0.5"}, preload_content=False)
            resp = conn.getresponse()
        except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException) as e:
            if dog.fired or isinstance(e, (TimeoutError, socket.timeout, urllib3.exceptions.ReadTimeoutError)):
                raise DownloadError("timeout", f"{t.url}: no complete response headers in time") from None
            raise DownloadError("connection_error", f"{t.url}: {type(e).__name__}: {e}") from None
        if resp.status in REDIRECTS:
            return resp.status, dict(resp.headers), None
        if p.respect_opt_out and opted_out(resp.headers.getlist("X-Robots-Tag")):
            raise DownloadError("opted_out", f"{t.url}: X-Robots-Tag {resp.headers.get('X-Robots-Tag')!r}")
        if resp.status != 200:
            retry_after = _retry_after(resp.headers.get("Retry-After")) if resp.status in RETRY_STATUS else None
            raise DownloadError(f"http_{resp.status}", f"{t.url}: HTTP {resp.status}", retry_after)
        return resp.status, dict(resp.headers), self._body(t.url, resp, deadline, dog)

    def _body(self, url: str, resp, deadline: float, dog: _Watchdog) -> bytes:
        p = self.policy
        length = resp.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > p.max_bytes:
            raise DownloadError("too_large", f"{url}: Content-Length {length} > max_bytes {p.max_bytes}")
        chunks, size = [], 0
        spool = tempfile.NamedTemporaryFile(prefix="mmcurate-dl-", delete=False) if p.spool else None
        head = b""
        try:
            try:
                while True:
                    # read1 returns what has arrived; the watchdog ends a body that never does.
                    chunk = resp.read1(1 << 16)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > p.max_bytes:  # enforced on the bytes, whatever the headers said
                        raise DownloadError("too_large", f"{url}: body exceeds max_bytes {p.max_bytes}")
                    if time.monotonic() > deadline:
                        raise DownloadError("timeout", f"{url}: body not complete within {p.total_timeout}s "
                                            f"({size} bytes received)")
                    if len(head) < 512:
                        head += chunk[: 512 - len(head)]
                    if spool is not None:
                        spool.write(chunk)
                    else:
                        chunks.append(chunk)
            except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as e:
                if dog.fired or isinstance(e, (TimeoutError, socket.timeout, urllib3.exceptions.ReadTimeoutError)):
                    raise DownloadError("timeout", f"{url}: the body stalled ({size} bytes received)") from None
                raise DownloadError("connection_error", f"{url}: body cut off: {type(e).__name__}: {e}") from None
            if dog.fired:
                raise DownloadError("timeout", f"{url}: body not complete within {p.total_timeout}s")
            if not size:
                raise DownloadError("empty_file", f"{url}: empty body")
            if not _is_kind(head, p.kind):
                ctype = resp.headers.get("Content-Type", "none")
                lowered = head[:64].lstrip().lower()
                # what it looks like, never what it holds
                what = "an HTML page" if lowered.startswith((b"<!doctype html", b"<html", b"<")) else f"{size} bytes"
                reason = "not_an_image" if p.kind == "image" else f"not_{p.kind}"
                raise DownloadError(reason, f"{url}: {what}, not {p.kind} (Content-Type {str(ctype)[:100]})")
        except BaseException:
            if spool is not None:
                spool.close()
                os.unlink(spool.name)
            raise
        if spool is not None:
            spool.close()
            return Spooled(spool.name)
        return b"".join(chunks)

    # -- plumbing ---------------------------------------------------------------------
    def _resolve(self, t: "_Target", deadline: float) -> list[str]:
        """Every address of the host, vetted; the lookup is bounded by the deadline."""
        try:
            infos = self._dns.submit(socket.getaddrinfo, t.host, t.port, type=socket.SOCK_STREAM).result(
                timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise DownloadError("timeout", f"{t.url}: DNS lookup of {t.host} took too long") from None
        except socket.gaierror as e:
            reason = "connection_error" if e.errno == socket.EAI_AGAIN else "dns_error"  # EAI_AGAIN: retry
            raise DownloadError(reason, f"{t.url}: cannot resolve {t.host}: {e}") from None
        except (UnicodeError, ValueError) as e:
            raise DownloadError("bad_url", f"{t.url}: bad host name {t.host!r}: {e}") from None
        ips = list(dict.fromkeys(info[4][0] for info in infos))
        if not self.policy.allow_private_networks:
            bad = [ip for ip in ips if blocked(ip)]
            if bad:
                raise DownloadError("blocked_address", f"{t.url}: {t.host} resolves to {bad[0]}, a loopback, "
                                    "private, link-local or reserved address (allow_private_networks is off)")
        return ips

    def _gate(self, host: str) -> _HostGate:
        with self._lock:
            gate = self._gates.get(host)
            if gate is None:
                gate = self._gates[host] = _HostGate(self.policy.per_host_concurrency, self.policy.per_host_rate)
                while len(self._gates) > 10_000:  # forget hosts not seen for a long time
                    self._gates.popitem(last=False)
            else:
                self._gates.move_to_end(host)
            return gate


@dataclass
class _Target:
    """One hop's URL, checked and split: ASCII host for DNS, Host header, SNI and certificate."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    host_header: str

    @classmethod
    def parse(cls, url: str, first: bool) -> "_Target":
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise DownloadError("bad_url", f"{url!r}: {e}") from None
        if parts.scheme not in ("http", "https"):
            reason = "unsupported_scheme" if first else "redirect_scheme"
            raise DownloadError(reason, f"{url}: scheme {parts.scheme!r} is not http or https")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise DownloadError("bad_url", f"{url!r}: no host")
        try:
            host = host.encode("idna").decode("ascii")  # bücher.de -> xn--bcher-kva.de
        except UnicodeError as e:
            raise DownloadError("bad_url", f"{url!r}: bad host name: {e}") from None
        default = 443 if parts.scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        return cls(url, parts.scheme, host, port or default,
                   (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                   shown if port in (None, default) else f"{shown}:{port}")

    def connection(self, ip: str, timeout: float):
        """A connection to ip; `timeout` covers connecting (reads get theirs after connect)."""
        if self.scheme == "https":
            import certifi

            return urllib3.connection.HTTPSConnection(
                ip, self.port, timeout=timeout, server_hostname=self.host, assert_hostname=self.host,
                cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
        return urllib3.connection.HTTPConnection(ip, self.port, timeout=timeout)


def _connect_error(url: str, e: Exception, fired: bool) -> DownloadError:
    if fired:
        return DownloadError("timeout", f"{url}: connect not done within the total timeout")
    if isinstance(e, urllib3.exceptions.SSLError) or "SSL" in type(e).__name__ or "Certificate" in type(e).__name__:
        return DownloadError("tls_error", f"{url}: {e}")
    return DownloadError("connection_error", f"{url}: {type(e).__name__}: {e}")


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
