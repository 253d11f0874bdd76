"""FaultServer: every fault kind, observed with urllib against a real server on 127.0.0.1."""

from __future__ import annotations

import http.client
import io
import random
import struct
import urllib.error
import urllib.request

import pytest
from PIL import Image

from curation.synthetic import FAULT_KINDS, PRIVATE_REDIRECT_TARGET, FaultServer
from curation.synthetic.images import encode, random_scene, render_scene


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # surface the 302 itself; never follow to another address


_no_redirect = urllib.request.build_opener(_NoRedirect)


def _get(url: str, *, timeout: float = 5.0, opener=None):
    """(status, headers, body) without raising on HTTP error statuses."""
    try:
        resp = (opener or urllib.request.build_opener()).open(url, timeout=timeout)
        return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture()
def docroot(tmp_path):
    img = render_scene(random_scene(random.Random(3), width=200, height=120))
    root = tmp_path / "web"
    root.mkdir()
    (root / "a.jpg").write_bytes(encode(img, quality=90))
    (root / "b.png").write_bytes(encode(img, "png"))
    (tmp_path / "secret.txt").write_text("outside the docroot")
    return root


@pytest.fixture()
def server(docroot):
    with FaultServer(docroot, slow_seconds=1.5) as s:
        yield s


def test_serves_files_with_content_type_and_404_for_missing(server, docroot):
    status, headers, body = _get(server.url("a.jpg"))
    assert status == 200 and body == (docroot / "a.jpg").read_bytes()
    assert headers["Content-Type"] == "image/jpeg"
    assert _get(server.url("b.png"))[1]["Content-Type"] == "image/png"
    assert _get(server.url("missing.jpg"))[0] == 404
    assert _get(server.url("fault/not-a-kind/a.jpg"))[0] == 404


def test_nothing_outside_the_docroot_is_served(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    conn.request("GET", "/../secret.txt")
    resp = conn.getresponse()
    assert resp.status == 404 and b"outside" not in resp.read()
    conn.close()


def test_request_log_and_count(server):
    _get(server.url("a.jpg?x=1"))
    _get(server.url("a.jpg"))
    _get(server.url("missing.jpg"))
    assert [p for p, _ in server.requests] == ["/a.jpg?x=1", "/a.jpg", "/missing.jpg"]
    assert server.count("/a.jpg") == 2
    assert server.count(server.url("missing.jpg")) == 1
    assert server.count("/b.png") == 0
    server.reset()
    assert server.requests == [] and server.count("/a.jpg") == 0


def test_head_answers_headers_only(server, docroot):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    conn.request("HEAD", "/fault/noai/a.jpg")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("X-Robots-Tag") == "noai"
    assert int(resp.getheader("Content-Length")) == (docroot / "a.jpg").stat().st_size
    assert resp.read() == b""
    conn.close()


def test_503_once_then_the_file(server, docroot):
    assert _get(server.url("fault/503-once/a.jpg"))[0] == 503
    status, _, body = _get(server.url("fault/503-once/a.jpg"))
    assert status == 200 and body == (docroot / "a.jpg").read_bytes()
    server.reset()  # forgets that it was asked before
    assert _get(server.url("fault/503-once/a.jpg"))[0] == 503


def test_429_with_retry_after_then_the_file(server, docroot):
    status, headers, _ = _get(server.url("fault/429/a.jpg"))
    assert status == 429 and headers["Retry-After"] == "1"
    status, _, body = _get(server.url("fault/429/a.jpg"))
    assert status == 200 and body == (docroot / "a.jpg").read_bytes()
    # the first-request state is per path: another file starts with a 429 again
    assert _get(server.url("fault/429/b.png"))[0] == 429


def test_slow_exceeds_a_short_client_timeout_but_eventually_serves(server, docroot):
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(server.url("fault/slow/a.jpg"), timeout=0.3).read()
    status, _, body = _get(server.url("fault/slow/a.jpg"), timeout=10)
    assert status == 200 and body == (docroot / "a.jpg").read_bytes()
    assert server.count("/fault/slow/a.jpg") == 2


def test_stop_wakes_a_sleeping_slow_handler(docroot):
    import threading

    s = FaultServer(docroot, slow_seconds=30).start()
    errors = []

    def client():
        try:
            urllib.request.urlopen(s.url("fault/slow/a.jpg"), timeout=60).read()
        except Exception as e:  # the server may close the connection while stopping
            errors.append(e)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    while s.count("/fault/slow/a.jpg") == 0:
        t.join(0.01)
    s.stop()
    t.join(20)  # with a 30 s sleep that ignored stop(), the client would still be waiting here
    assert not t.is_alive()


def test_truncated_is_half_a_jpeg(server, docroot):
    full = (docroot / "a.jpg").read_bytes()
    status, headers, body = _get(server.url("fault/truncated/a.jpg"))
    assert status == 200 and body == full[: len(full) // 2]
    assert int(headers["Content-Length"]) == len(body)
    assert body[:2] == b"\xff\xd8" and not body.endswith(b"\xff\xd9")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(body)).load()


def test_bomb_png_declares_900m_pixels_in_a_small_valid_file(server):
    status, headers, body = _get(server.url("fault/bomb/b.png"))
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert len(body) < 300_000
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and body[12:16] == b"IHDR"
    assert struct.unpack(">II", body[16:24]) == (30000, 30000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))


def test_bomb_jpeg_rewrites_the_frame_header(server, docroot, monkeypatch):
    status, _, body = _get(server.url("fault/bomb/a.jpg"))
    assert status == 200 and len(body) == (docroot / "a.jpg").stat().st_size
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # header only: see what it declares
    assert Image.open(io.BytesIO(body)).size == (30000, 30000)


def test_redirect_private_points_at_the_metadata_service(server):
    status, headers, _ = _get(server.url("fault/redirect-private/a.jpg"), opener=_no_redirect)
    assert status == 302 and headers["Location"] == PRIVATE_REDIRECT_TARGET


def test_redirect_other_points_at_the_other_server(docroot):
    # A second server on another loopback address; the test never requests it, only checks it stays unasked.
    with FaultServer(docroot, host="127.0.0.2") as other, \
            FaultServer(docroot, other_base_url=other.base_url) as s:
        status, headers, _ = _get(s.url("fault/redirect-other/a.jpg"), opener=_no_redirect)
        assert status == 302 and headers["Location"] == f"{other.base_url}/a.jpg"
        assert other.base_url.startswith("http://127.0.0.2:")
        assert other.requests == []


def test_redirect_other_default_is_another_loopback_address(server):
    status, headers, _ = _get(server.url("fault/redirect-other/x/a.jpg"), opener=_no_redirect)
    assert status == 302 and headers["Location"] == f"http://127.0.0.2:{server.port}/x/a.jpg"


def test_every_fault_kind_is_handled(server):
    # A kind added to FAULT_KINDS without a handler would fall through to serving the file unchanged.
    plain = _get(server.url("a.jpg"))
    for kind in FAULT_KINDS:
        if kind == "slow":
            continue
        status, headers, body = _get(server.url(f"fault/{kind}/a.jpg"), opener=_no_redirect)
        assert (status, headers.get("X-Robots-Tag"), body) != (200, None, plain[2]), kind


def test_rejects_unbounded_slow_setting(docroot):
    with pytest.raises(ValueError, match="slow_seconds"):
        FaultServer(docroot, slow_seconds=3600)
