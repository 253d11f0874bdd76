"""The fetcher against the real fault server on 127.0.0.1: every fault kind, retries, and the SSRF guard."""

from __future__ import annotations

import random
import socket

import pytest

from curation.config import DownloadConfig, ResizeConfig
from curation.fetch import Fetcher, ImagePreparer
from curation.synthetic import FaultServer
from curation.synthetic.images import blank_image, encode, random_scene, render_scene


@pytest.fixture()
def docroot(tmp_path):
    root = tmp_path / "web"
    root.mkdir()
    (root / "a.jpg").write_bytes(encode(render_scene(random_scene(random.Random(1), width=300, height=200))))
    (root / "b.png").write_bytes(encode(blank_image(120, 90), "png"))
    return root


@pytest.fixture()
def connections(monkeypatch):
    """Every address a socket connects to (recorded, then connected for real)."""
    seen: list = []
    real = socket.create_connection

    def recording(address, *a, **kw):
        seen.append(address[0])
        return real(address, *a, **kw)

    monkeypatch.setattr(socket, "create_connection", recording)
    return seen


def _fetcher(**kw) -> Fetcher:
    base = dict(timeout=1.0, retries=2, backoff_base=0.01, allowed_networks=["127.0.0.1/32"])
    return Fetcher(DownloadConfig(**{**base, **kw}))


EXPECTED = {"404": "http_404", "500": "http_500", "html": "not_an_image", "empty": "empty_body",
            "noai": "x_robots_tag", "noimageai": "x_robots_tag", "redirect-loop": "too_many_redirects",
            "redirect-private": "blocked_address", "redirect-other": "blocked_address", "slow": "timeout"}


def test_fault_kinds_give_named_reasons(docroot):
    with FaultServer(docroot, slow_seconds=3.0) as s:
        f = _fetcher(retries=1)
        for kind, reason in EXPECTED.items():
            res = f.fetch(s.url(f"fault/{kind}/a.jpg"))
            assert (res.data, res.reason) == (None, reason), kind
        for kind in ("503-once", "429", "redirect"):
            res = f.fetch(s.url(f"fault/{kind}/a.jpg"))
            assert res.reason is None and res.data == (docroot / "a.jpg").read_bytes(), kind
        assert s.count("/fault/503-once/a.jpg") == 2 and s.count("/fault/429/a.jpg") == 2
        assert s.count("/fault/500/a.jpg") == 2      # retried once (retries=1), then dropped
        assert s.count("/fault/404/a.jpg") == 1      # not retryable
        # a 429 asking for a longer wait than allowed is not waited for
        s.reset()
        assert _fetcher(max_retry_after=0.5).fetch(s.url("fault/429/a.jpg")).reason == "rate_limited"
        # the response size cap
        assert _fetcher(max_bytes=100).fetch(s.url("a.jpg")).reason == "too_large"


def test_image_checks_before_decoding(docroot):
    prep = ImagePreparer(ResizeConfig(image_size=64), max_pixels=10_000_000)
    with FaultServer(docroot) as s:
        f = _fetcher()
        bomb = f.fetch(s.url("fault/bomb/a.jpg")).data
        assert prep.prepare(bomb)[0] == "too_many_pixels"
        assert prep.prepare(f.fetch(s.url("fault/bomb/b.png")).data)[0] == "too_many_pixels"
        assert prep.prepare(f.fetch(s.url("fault/truncated/a.jpg")).data)[0] == "truncated_image"
        ok = prep.prepare(f.fetch(s.url("a.jpg")).data)
        assert (ok.original_width, ok.original_height) == (300, 200) and max(ok.width, ok.height) >= 64
        assert min(ok.width, ok.height) == 64 and len(ok.phash) == 16
        assert prep.prepare(f.fetch(s.url("b.png")).data).pixel_std < 1.0


def test_ssrf_redirect_to_refused_address_is_never_requested(docroot, connections):
    with FaultServer(docroot, host="127.0.0.2") as other, \
            FaultServer(docroot, other_base_url=None) as s:
        s.other_base_url = other.base_url
        f = _fetcher()
        assert f.fetch(s.url("fault/redirect-other/a.jpg")).reason == "blocked_address"
        assert f.fetch(s.url("fault/redirect-private/a.jpg")).reason == "blocked_address"
        assert f.fetch(other.url("a.jpg")).reason == "blocked_address"          # directly, too
        assert f.fetch("http://169.254.169.254/latest/meta-data/").reason == "blocked_address"
        assert other.requests == []
    assert connections and set(connections) == {"127.0.0.1"}
    # nothing allowed: even the test server is refused, before any connection
    connections.clear()
    with FaultServer(docroot) as s:
        assert Fetcher(DownloadConfig(allowed_networks=[])).fetch(s.url("a.jpg")).reason == "blocked_address"
        assert s.requests == [] and connections == []


def test_user_agent_token(docroot):
    with FaultServer(docroot) as s:
        f = _fetcher(user_agent_token="testbot")
        assert "testbot" in f.user_agent
        assert f.fetch(s.url("a.jpg")).reason is None


@pytest.mark.parametrize("cap", [1, 2, 6])
def test_per_host_cap_is_what_the_server_sees(docroot, cap):
    """Six threads share one fetcher, each request held 0.5 s by the server: the most requests the server
    ever handles at once is the per-host cap (six, the thread count, when the cap does not bind)."""
    from concurrent.futures import ThreadPoolExecutor
    with FaultServer(docroot, slow_seconds=0.5) as s:
        f = _fetcher(per_host_connections=cap, timeout=30.0)
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: f.fetch(s.url("fault/slow/a.jpg")), range(6)))
        assert [r.reason for r in results] == [None] * 6 and s.count("/fault/slow/a.jpg") == 6
        assert s.max_concurrent == cap


def test_robots_header_read_as_img2dataset_reads_it():
    """Our X-Robots-Tag reading agrees with img2dataset's `is_disallowed` on every header below (theirs
    lower-cases the header's agent only, so our token is given in lower case here)."""
    import email.message

    from curation.fetch import _is_disallowed, img2dataset_module
    theirs = img2dataset_module("downloader").is_disallowed
    values = [["noai"], ["noimageai"], ["NoAI"], ["noindex, noai"], [" noindex ,  NOIMAGEAI "], ["noindex"],
              ["vlfusion: noai"], ["VLFusion: noai"], ["otherbot: noai"], ["otherbot: noai", "noindex"],
              ["otherbot: noai", "vlfusion: noimageai"], ["googlebot: noindex", "noai"], [], [""],
              ["unavailable_after: 25 Jun 2010 15:00:00 PST"], ["vlfusion:"]]
    for directives in (["noai", "noimageai"], ["noai"], []):
        for vals in values:
            m = email.message.Message()
            for v in vals:
                m["X-Robots-Tag"] = v
            assert _is_disallowed(m, "vlfusion", directives) == theirs(m, "vlfusion", directives), (vals, directives)
    m = email.message.Message()
    m["X-Robots-Tag"] = "noindex, noai"
    assert _is_disallowed(m, "vlfusion", ["noai"]) and not _is_disallowed(m, "vlfusion", ["noimageai"])


def test_worker_imports_stay_light(tmp_path):
    """A Beam worker builds an ImagePreparer and reads X-Robots-Tag headers without img2dataset's package
    __init__ (torch, wandb, pandas: seconds of start-up per worker), and the real package still loads after."""
    import subprocess
    import sys

    code = (
        "import sys, email.message\n"
        "from curation.config import ResizeConfig\n"
        "from curation.fetch import ImagePreparer, _is_disallowed\n"
        "ImagePreparer(ResizeConfig(), 10**8)\n"
        "heavy = sorted(m for m in ('torch', 'wandb', 'pandas', 'img2dataset.main') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "m = email.message.Message(); m['X-Robots-Tag'] = 'noai'\n"
        "assert _is_disallowed(m, 'vlfusion', ['noai'])\n"
        "heavy = sorted(m for m in ('torch', 'wandb', 'pandas', 'img2dataset.main') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "from img2dataset import download\n"
        "assert callable(download) and 'img2dataset.main' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
