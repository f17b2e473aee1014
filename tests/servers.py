"""A real HTTP server on a loopback address that misbehaves on purpose, for tests and benchmarks.

    with HostileServer(images={"good.jpg": data}) as srv:
        srv.url("/img/good.jpg")
"""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML = b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HostileServer"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", ctype: str = "image/jpeg", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, b"", "text/plain", {"Location": location})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        path = self.path.split("?", 1)[0]
        with srv.lock:
            srv.hits[path] = srv.hits.get(path, 0) + 1
            hits = srv.hits[path]
            srv.user_agents.add(self.headers.get("User-Agent", ""))
        if srv.latency:
            time.sleep(srv.latency)
        good = srv.images.get("good.jpg", b"")
        try:
            if path.startswith("/img/"):
                body = srv.images.get(path[5:])
                self._send(200, body) if body is not None else self._send(404, HTML, "text/html")
            elif path == "/redirect":
                self._redirect("/img/good.jpg")
            elif path == "/loop-a":
                self._redirect("/loop-b")
            elif path == "/loop-b":
                self._redirect(srv.url("/loop-a"))
            elif path == "/to-ftp":
                self._redirect("ftp://127.0.0.1/img/good.jpg")
            elif path == "/missing":
                self._send(404, HTML, "text/html")
            elif path == "/always-500":
                self._send(500, b"oops", "text/plain")
            elif path == "/flaky":  # 500 first, then the image
                self._send(500, b"oops", "text/plain") if hits == 1 else self._send(200, good)
            elif path == "/busy":  # 429 with Retry-After first, then the image
                if hits == 1:
                    self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                else:
                    self._send(200, good)
            elif path == "/slow-first-byte":
                time.sleep(srv.stall)
                self._send(200, good)
            elif path == "/drip":  # headers at once, then one byte a second
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(good)))
                self.end_headers()
                for i in range(min(len(good), int(srv.stall) + 5)):
                    self.wfile.write(good[i:i + 1])
                    self.wfile.flush()
                    time.sleep(1.0)
            elif path in ("/huge", "/huge-cl"):  # 2 GiB that starts like a JPEG
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                if path == "/huge-cl":
                    self.send_header("Content-Length", str(2 << 30))
                    self.end_headers()
                    return
                self.send_header("Transfer-Encoding", "chunked")  # no length to trust
                self.end_headers()
                block = b"\xff\xd8\xff" + bytes(1 << 20)
                for _ in range(2048):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            elif path == "/drip-headers":  # the status line, then a header byte every half second
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(int(srv.stall * 2) + 10):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.5)
            elif path == "/bad-location":
                self._redirect("http://[::1/broken")
            elif path == "/weird-retry":
                self._send(503, b"busy", "text/plain", {"Retry-After": "\u00b2"})
            elif path == "/html-as-jpeg":
                self._send(200, HTML, "image/jpeg")
            elif path == "/noai":
                self._send(200, good, headers={"X-Robots-Tag": "noai, noimageai"})
            else:
                self._send(404, HTML, "text/html")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", images: dict[str, bytes] | None = None,
                 latency: float = 0.0, stall: float = 5.0):
        super().__init__((host, 0), _Handler)
        self.images = images or {}
        self.latency, self.stall = latency, stall
        self.hits: dict[str, int] = {}
        self.user_agents: set[str] = set()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> "HostileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
