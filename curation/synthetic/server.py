"""A local HTTP server that serves a document root and injects faults by path prefix.

    with FaultServer(docroot, host="127.0.0.1", port=0, *, other_base_url=None, slow_seconds=3.0) as s:
        s.base_url            # "http://127.0.0.1:PORT"
        s.url("cc3m/a.jpg")   # base_url + "/cc3m/a.jpg"
        s.requests            # [(path with query, time.time()), ...] of every request received, in order
        s.count("/x.jpg")     # requests whose path (query ignored) equals "/x.jpg"
        s.max_concurrent      # most requests handled at one time (e.g. to observe a client's connection cap)
        s.reset()             # forget requests and the first-request state of 503-once / 429

`GET /<p>` serves `docroot/<p>` (404 when missing; nothing outside docroot). `GET /fault/<kind>/<p>` applies
the fault to the file `docroot/<p>` (which must exist for the kinds that serve it):

    404              always 404
    500              always 500
    503-once         first request for this path 503, later ones the file
    429              first request 429 with "Retry-After: 1", later ones the file
    slow             waits `slow_seconds` (default 3 s, interrupted when the server stops) then the file
    truncated        the first half of the file's bytes (a cut JPEG), Content-Length of that half
    html             200 text/html page
    empty            200, image content type, zero-byte body
    bomb             200, a small image whose header declares 30000x30000 pixels (PNG if <p> ends in .png,
                     else the file's JPEG with its frame header rewritten)
    noai             the file with "X-Robots-Tag: noai"
    noimageai        the file with "X-Robots-Tag: noimageai"
    redirect         302 to {base_url}/<p> (the real file on this server)
    redirect-loop    302 to itself, forever (clients must cap redirects)
    redirect-private 302 to PRIVATE_REDIRECT_TARGET (link-local metadata service; must never be requested)
    redirect-other   302 to {other_base_url}/<p>; default other_base_url is http://127.0.0.2:<this port>,
                     which this server (bound on 127.0.0.1) does not answer. Pass a second FaultServer's
                     base_url (e.g. one bound on 127.0.0.2) to assert it received no request.

HEAD is answered like GET without the body. Every handler returns after bounded work; `stop()` (or leaving
the `with` block) shuts the server down and wakes any slow handler.
"""

from __future__ import annotations

import mimetypes
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from curation.synthetic.images import bomb_jpeg, bomb_png

FAULT_KINDS = (
    "404", "500", "503-once", "429", "slow", "truncated", "html", "empty", "bomb", "noai", "noimageai",
    "redirect", "redirect-loop", "redirect-private", "redirect-other",
)
PRIVATE_REDIRECT_TARGET = "http://169.254.169.254/latest/meta-data/"
_HTML = b"<!doctype html><html><head><title>Not an image</title></head><body><p>Sorry.</p></body></html>\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: tests read .requests instead
        pass

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        # A request stops counting as in flight when its response starts (see `_send`), not when the
        # handler thread returns: the client has its answer by then and may send its next request before
        # this thread runs again, which would count one request twice.
        self._counted = True
        self.server.owner._enter()
        try:
            self._handle(send_body=send_body)
        finally:
            self._leave()

    def _leave(self) -> None:
        if self._counted:
            self._counted = False
            self.server.owner._exit()

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/octet-stream", send_body: bool = True) -> None:
        self._leave()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

    def _redirect(self, location: str, send_body: bool) -> None:
        self._send(302, b"", {"Location": location}, "text/plain", send_body)

    def _handle(self, send_body: bool) -> None:
        owner = self.server.owner
        owner._record(self.path)
        path = unquote(urlsplit(self.path).path)
        kind, rel = None, path.lstrip("/")
        if rel.startswith("fault/"):
            parts = rel.split("/", 2)
            kind = parts[1]
            rel = parts[2] if len(parts) > 2 else ""
            if kind not in FAULT_KINDS:
                return self._send(404, b"unknown fault kind\n", content_type="text/plain", send_body=send_body)
        if kind == "404":
            return self._send(404, b"not found\n", content_type="text/plain", send_body=send_body)
        if kind == "500":
            return self._send(500, b"internal error\n", content_type="text/plain", send_body=send_body)
        if kind == "html":
            return self._send(200, _HTML, content_type="text/html; charset=utf-8", send_body=send_body)
        if kind == "redirect":
            return self._redirect(f"{owner.base_url}/{rel}", send_body)
        if kind == "redirect-loop":
            return self._redirect(f"{owner.base_url}{path}", send_body)
        if kind == "redirect-private":
            return self._redirect(PRIVATE_REDIRECT_TARGET, send_body)
        if kind == "redirect-other":
            return self._redirect(f"{owner.other_base_url}/{rel}", send_body)
        if kind in ("503-once", "429") and owner._first_time(path):
            if kind == "503-once":
                return self._send(503, b"try again\n", content_type="text/plain", send_body=send_body)
            return self._send(429, b"slow down\n", {"Retry-After": "1"}, "text/plain", send_body)

        file = owner._resolve(rel)
        if file is None:
            return self._send(404, b"not found\n", content_type="text/plain", send_body=send_body)
        data = file.read_bytes()
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        headers: dict[str, str] = {}
        if kind == "slow":
            owner._stopping.wait(owner.slow_seconds)
        elif kind == "truncated":
            data = data[: len(data) // 2]
        elif kind == "empty":
            data = b""
        elif kind == "bomb":
            if file.suffix.lower() == ".png":
                data = bomb_png()
            else:
                data, ctype = bomb_jpeg(data), "image/jpeg"
        elif kind == "noai":
            headers["X-Robots-Tag"] = "noai"
        elif kind == "noimageai":
            headers["X-Robots-Tag"] = "noimageai"
        try:
            self._send(200, data, headers, ctype, send_body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. timed out on /fault/slow/): nothing to do


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 makes a client with 16+ threads wait ~1 s for SYN retries:
    # benchmarks would measure the test server instead of the downloader.
    request_queue_size = 128
    owner: FaultServer


class FaultServer:
    def __init__(self, docroot: str | Path, host: str = "127.0.0.1", port: int = 0, *,
                 other_base_url: str | None = None, slow_seconds: float = 3.0) -> None:
        if slow_seconds < 0 or slow_seconds > 60:
            raise ValueError(f"FaultServer: slow_seconds must be in [0, 60], got {slow_seconds}")
        self.docroot = Path(docroot).resolve()
        self.slow_seconds = slow_seconds
        self.requests: list[tuple[str, float]] = []
        self.max_concurrent = 0        # most requests being handled at one time since start / reset()
        self._active = 0
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._stopping = threading.Event()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        self.host, self.port = self._httpd.server_address[:2]
        self.base_url = f"http://{self.host}:{self.port}"
        self.other_base_url = (other_base_url or f"http://127.0.0.2:{self.port}").rstrip("/")
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> FaultServer:
        # The PNG bomb is built once per process (zlib over 112 MB of zeros: a CPU-second or more on a busy
        # machine); built here, before serving, so the first request for it is not answered late and
        # turned into a client timeout instead of the too_many_pixels it exists to provoke.
        bomb_png()
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=f"FaultServer:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI's `serve`)."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._stopping.set()
            self._httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def count(self, path: str) -> int:
        """Requests whose path equals `path` (a full URL is accepted; queries are ignored)."""
        want = urlsplit(path).path if "://" in path else path.split("?", 1)[0]
        with self._lock:
            return sum(1 for p, _ in self.requests if p.split("?", 1)[0] == want)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._seen.clear()
            self.max_concurrent = self._active

    # -- used by the handler ---------------------------------------------------------------------------
    def _enter(self) -> None:
        with self._lock:
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)

    def _exit(self) -> None:
        with self._lock:
            self._active -= 1

    def _record(self, path: str) -> None:
        with self._lock:
            self.requests.append((path, time.time()))

    def _first_time(self, path: str) -> bool:
        with self._lock:
            if path in self._seen:
                return False
            self._seen.add(path)
            return True

    def _resolve(self, rel: str) -> Path | None:
        if not rel:
            return None
        file = (self.docroot / rel).resolve()
        if not file.is_relative_to(self.docroot) or not file.is_file():
            return None
        return file
