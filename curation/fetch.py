"""Fetching and preparing one image: HTTP with the SSRF guard, then header checks and the resize.

`Fetcher.fetch(url) -> FetchResult` is a plain function of the URL (plus the server's answers): no Beam
here, so it is tested directly against the local fault server. `ImagePreparer.prepare(data)` turns bytes
(downloaded or read from a local folder) into the stored image plus what later stages need (sizes,
sha256, pHash, grey-level spread, near-dup signature: all from one decode of the stored image), or a
drop reason.

Why our own HTTP loop rather than img2dataset's `download_image` (urllib): urllib follows redirects by
itself and resolves DNS at connect time, so neither the redirect target nor the address actually used can
be checked. We resolve once, check, connect to that address, and follow redirects by hand. X-Robots-Tag is
read as img2dataset reads it (`_is_disallowed`); img2dataset's `Resizer` is available as ``resize.engine``.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import http.client
import importlib
import importlib.util
import io
import os
import random
import re
import socket
import ssl
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import PIL.features
from PIL import Image
from threadpoolctl import threadpool_limits

from curation.config import DownloadConfig, ResizeConfig
from curation.dedup.signature import image_hashes
from curation.netguard import BlockedAddress, NetGuard

RETRYABLE_STATUS = {429, 500, 502, 503, 504}


def img2dataset_module(name: str):
    """``img2dataset.<name>`` without running img2dataset's package ``__init__``.

    That ``__init__`` imports ``img2dataset.main`` and with it torch, wandb, pandas and webdataset (about 3 s
    of CPU), none of which the Resizer or the header parser needs; every Beam worker process would pay it.
    When the package is not imported yet, a stand-in package with the same path is registered whose
    attributes (``download``, ``main``) load ``img2dataset.main`` on first use, as the real ``__init__`` would
    have, so a later ``from img2dataset import download`` in the same process still works.
    """
    # img2dataset's resizer imports albumentations, which otherwise asks PyPI for a newer version on import:
    # a network call from every worker process, refused or slow on machines without internet.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if "img2dataset" not in sys.modules:
        spec = importlib.util.find_spec("img2dataset")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("img2dataset is not installed")
        pkg = importlib.util.module_from_spec(spec)     # the module object only; __init__ is not executed

        def __getattr__(attr: str):
            if attr in ("main", "download"):
                return getattr(importlib.import_module("img2dataset.main"), attr)
            raise AttributeError(f"module 'img2dataset' has no attribute {attr!r}")

        pkg.__getattr__ = __getattr__
        sys.modules.setdefault("img2dataset", pkg)
    return importlib.import_module(f"img2dataset.{name}")


@dataclass
class FetchResult:
    data: bytes | None          # body when ok
    reason: str | None          # drop reason when not ok
    detail: str = ""
    attempts: int = 0


def _is_disallowed(headers, user_agent_token: str, directives: list[str]) -> bool:
    """X-Robots-Tag, as img2dataset reads it: each header value is ``[agent:] directive, directive ...``;
    disallowed when one of ``directives`` is given for every agent (no agent named) or for ours.

    Ours rather than img2dataset's ``is_disallowed``: importing its module loads wandb (about 1 s of CPU
    per worker process, paid on the first response that carries the header). Agent names are compared
    without case (img2dataset lower-cases the header's agent but not our token)."""
    wanted = {d.lower() for d in directives}
    token = user_agent_token.lower()
    for value in headers.get_all("X-Robots-Tag") or []:
        agent, named, rest = value.partition(":")
        if named and agent.strip().lower() != token:
            continue
        if wanted & {d.strip().lower() for d in (rest if named else value).split(",")}:
            return True
    return False


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked by the guard, while Host stays the URL's host."""

    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _Retry(Exception):
    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


class _Drop(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _retry_after_seconds(value: str | None) -> float | None:
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


class Fetcher:
    """Thread-safe; one per worker. ``per_host_connections`` caps concurrent requests per host name."""

    def __init__(self, cfg: DownloadConfig):
        self.cfg = cfg
        self.guard = NetGuard(cfg.allowed_networks)
        self._host_slots: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self.user_agent = f"Mozilla/5.0 (compatible; {cfg.user_agent_token}/1.0; +https://github.com/vlfusion)"
        self.directives = [d.lower() for d in cfg.disallowed_header_directives]

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._host_slots.get(host)
            if sem is None:
                sem = self._host_slots[host] = threading.BoundedSemaphore(self.cfg.per_host_connections)
            return sem

    def fetch(self, url: str) -> FetchResult:
        cfg = self.cfg
        last = "timeout"
        for attempt in range(cfg.retries + 1):
            try:
                return FetchResult(self._fetch_once(url), None, attempts=attempt + 1)
            except _Drop as d:
                return FetchResult(None, d.reason, d.detail, attempts=attempt + 1)
            except _Retry as r:
                last = r.reason
                if attempt == cfg.retries:
                    break
                if r.wait is not None:
                    if r.wait > cfg.max_retry_after:
                        return FetchResult(None, "rate_limited", f"Retry-After {r.wait:.0f}s", attempt + 1)
                    delay = r.wait
                else:
                    # Exponential backoff with jitter so that retries from many threads do not synchronise.
                    delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.5)
                time.sleep(delay)
        reason = {"429": "rate_limited"}.get(last, last)
        return FetchResult(None, reason, f"gave up after {cfg.retries + 1} attempts", cfg.retries + 1)

    def _fetch_once(self, url: str) -> bytes:
        cfg = self.cfg
        deadline = time.monotonic() + cfg.timeout
        for _hop in range(cfg.max_redirects + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise _Drop("unsupported_scheme", url[:200])
            if not parts.hostname:
                raise _Drop("bad_url", url[:200])
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                ip = self.guard.resolve(parts.hostname, port)
            except BlockedAddress as err:
                raise _Drop("blocked_address", str(err)) from None
            except OSError as err:
                raise _Drop("dns_error", str(err)) from None
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Retry("timeout")
            with self._slot(parts.hostname):
                conn = cls(parts.hostname, port, ip, timeout=remaining)
                try:
                    conn.request("GET", path, headers={"User-Agent": self.user_agent, "Accept": "image/*",
                                                       "Accept-Encoding": "identity"})
                    resp = conn.getresponse()
                    status = resp.status
                    if status in (301, 302, 303, 307, 308):
                        location = resp.getheader("Location")
                        if not location:
                            raise _Drop("bad_redirect", f"{status} without Location")
                        url = urljoin(url, location)
                        continue
                    if status == 429:
                        raise _Retry("429", _retry_after_seconds(resp.getheader("Retry-After")))
                    if status in RETRYABLE_STATUS:
                        raise _Retry(f"http_{status}")
                    if status != 200:
                        raise _Drop(f"http_{status}")
                    if (self.directives and resp.headers.get("X-Robots-Tag") is not None
                            and _is_disallowed(resp.headers, self.cfg.user_agent_token, self.directives)):
                        raise _Drop("x_robots_tag", ",".join(resp.headers.get_all("X-Robots-Tag", [])))
                    ctype = (resp.getheader("Content-Type") or "").lower()
                    if ctype.startswith("text/"):
                        raise _Drop("not_an_image", ctype)
                    length = resp.getheader("Content-Length")
                    if length and length.isdigit() and int(length) > cfg.max_bytes:
                        raise _Drop("too_large", f"Content-Length {length}")
                    return self._read_body(resp, deadline)
                except TimeoutError:
                    raise _Retry("timeout") from None
                except (ConnectionError, http.client.HTTPException, ssl.SSLError, OSError) as err:
                    if isinstance(err, http.client.IncompleteRead):
                        raise _Drop("truncated_body", str(err)[:200]) from None
                    raise _Retry("connection_error") from None
                finally:
                    conn.close()
        raise _Drop("too_many_redirects")

    def _read_body(self, resp: http.client.HTTPResponse, deadline: float) -> bytes:
        chunks, total = [], 0
        while True:
            if time.monotonic() > deadline:
                raise _Retry("timeout")
            chunk = resp.read(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > self.cfg.max_bytes:
                raise _Drop("too_large", f"body over {self.cfg.max_bytes} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data:
            raise _Drop("empty_body")
        return data


@dataclass
class PreparedImage:
    image: bytes
    ext: str
    width: int
    height: int
    original_width: int
    original_height: int
    original_bytes: int
    sha256: str
    phash: str                  # 64-bit pHash of the stored image (the signature's full picture), 16 hex digits
    pixel_std: float            # grey-level spread of its 32 px thumbnail
    dedup_signature: bytes      # `curation.dedup.signature.image_signature` of the stored image


@functools.cache
def one_blas_thread() -> None:
    """Limit BLAS (numpy's OpenBLAS) to one thread in this process, once.

    The signature's products are small (128 px): OpenBLAS's own pool splits them across cores and its
    threads spin between calls, which measured 5.5 ms of CPU per image against 2.2 ms on one thread (2
    cores). A worker already runs one image per fetch thread, so the pool only added spinning."""
    threadpool_limits(limits=1, user_api="blas")


class ImagePreparer:
    """Header checks, then the resize (`curation.resize`, or img2dataset's Resizer with
    ``resize.engine = "img2dataset"``), then the hashes of the stored image.

    Per image: the resizer decodes the download, resizes and encodes it (cv2); then the stored
    image is decoded once more, squashed to 128 px, and everything later stages need of its pixels comes
    from that one array (`curation.dedup.signature.image_hashes`: the near-dup signature, the 64-bit pHash
    that decontamination and the dedup examples use, the grey spread the image filter uses). Nothing later
    decodes the image again. The Resizer does not hand out its resized pixels, and hashing those rather
    than the stored JPEG would describe a picture nobody stores. Memory: one decoded download at a time
    per thread (bounded by ``download.max_pixels``) plus ~0.5 MB of work arrays.
    """

    def __init__(self, resize: ResizeConfig, max_pixels: int):
        if resize.encode_format == "webp" and not PIL.features.check("webp"):
            # The hashes are taken from the stored image, which this Pillow could not read back.
            raise ValueError("resize.encode_format: 'webp' needs a Pillow built with WebP, which this one is not")
        one_blas_thread()
        self.max_pixels = max_pixels
        self.ext = resize.encode_format
        settings = dict(image_size=resize.image_size, resize_mode=resize.resize_mode,
                        resize_only_if_bigger=resize.resize_only_if_bigger,
                        encode_format=resize.encode_format, encode_quality=resize.encode_quality)
        if resize.engine == "img2dataset":
            # It redirects the process's stdout/stderr around every image: one image at a time per process.
            self.resizer = img2dataset_module("resizer").Resizer(**settings)
            self.thread_safe = False
        else:
            from curation.resize import Resizer
            self.resizer = Resizer(**settings)
            self.thread_safe = True

    def prepare(self, data: bytes) -> PreparedImage | tuple[str, str]:
        """-> PreparedImage, or (reason, detail)."""
        if not data:
            return "empty_body", ""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                header = Image.open(io.BytesIO(data))   # reads the header only; nothing is decoded yet
                w, h = header.size
        except Image.DecompressionBombError as err:
            return "too_many_pixels", str(err)[:200]
        except Exception as err:  # PIL raises many types for non-images
            # without the buffer's address ("<_io.BytesIO object at 0x7f...>"): the same file, the same detail
            return "not_an_image", f"{type(err).__name__}: {re.sub(r' at 0x[0-9a-f]+', '', str(err))[:160]}"
        if w * h > self.max_pixels:
            return "too_many_pixels", f"{w}x{h}"
        if header.format == "JPEG" and data.rstrip(b"\0").rfind(b"\xff\xd9") < len(data.rstrip(b"\0")) - 2:
            # A JPEG must end with its EOI marker; libjpeg would fill a cut file with grey and carry on.
            return "truncated_image", "no JPEG end-of-image marker"
        if self.thread_safe:
            out, width, height, ow, oh, err = self.resizer(data, (header.format, header.mode, w, h))
        else:
            out, width, height, ow, oh, err = self.resizer(io.BytesIO(data))
        if err is not None or out is None:
            return "decode_error", str(err)[:200]
        try:
            hashes = image_hashes(out)
        except Exception as err:  # PIL refusing what cv2 wrote: counted under a name, never a crash
            return "decode_error", f"stored image: {type(err).__name__}: {str(err)[:160]}"
        return PreparedImage(image=out, ext=self.ext, width=int(width), height=int(height),
                             original_width=int(ow), original_height=int(oh), original_bytes=len(data),
                             sha256=hashlib.sha256(out).hexdigest(), phash=hashes.phash,
                             pixel_std=hashes.pixel_std, dedup_signature=hashes.signature)
