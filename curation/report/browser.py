"""Headless Chromium: check that a report loads cleanly, and take its picture for the README.

The check loads a copy of the page with a small probe script placed first in <head>. The probe
records error events (script errors and failed resource loads, caught in the capture phase) and, on
the window's load event (fired only after every image has loaded or failed), writes a JSON verdict
into the DOM: images, those with no decoded pixels, errors, and resources fetched over the network
(a self-contained page fetches none). `--dump-dom` prints the DOM after load; `--virtual-time-budget`
lets the page run to quiescence without wall-clock sleeps, so the check does not depend on timing.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from shards import fsutil

PROBE_ID = "__vlfusion_probe"
PROBE = """<script>
window.__vlfErrors = [];
window.addEventListener('error', function (ev) {
  var t = ev.target, what = (t && t.tagName) ? (t.tagName + ' ' + (t.alt || '').slice(0, 80)) : '';
  window.__vlfErrors.push(String(ev.message || ('failed to load ' + what)));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  var figs = Array.prototype.slice.call(document.querySelectorAll('figure.plot'));
  var out = document.createElement('pre');
  out.id = '__PROBE_ID__';
  out.textContent = JSON.stringify({
    images: imgs.length, broken: broken, errors: window.__vlfErrors,
    plots: figs.length,
    plots_without_image: figs.filter(function (f) {
      var i = f.querySelector('img'); return !(i && i.complete && i.naturalWidth > 0); }).length,
    network: performance.getEntriesByType('resource').map(function (r) { return r.name; }),
    title: document.title
  });
  document.body.appendChild(out);
});
</script>""".replace("__PROBE_ID__", PROBE_ID)


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError("no Chromium found on PATH (Debian: apt-get install chromium)")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="vlfusion-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
               f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"})
        except subprocess.TimeoutExpired as e:
            raise BrowserError(f"chromium did not finish within {timeout:.0f}s: {' '.join(cmd)}") from e


def check_page(html_path: str | os.PathLike, *, timeout: float = 120) -> dict:
    """Load the page headless; return the probe's verdict (see module docstring)."""
    src = Path(html_path).read_text(encoding="utf-8")
    if "<head>" not in src:
        raise BrowserError(f"{html_path}: no <head> to put the probe in")
    with tempfile.TemporaryDirectory(prefix="vlfusion-check-") as tmp:
        probe_page = Path(tmp) / "page.html"
        probe_page.write_text(src.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
        proc = _run(["--virtual-time-budget=15000", "--dump-dom", probe_page.as_uri()], timeout)
    m = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', proc.stdout, re.S)
    if not m:
        raise BrowserError(f"page did not finish loading (no probe verdict); rc={proc.returncode}; "
                           f"stderr tail: {proc.stderr[-2000:]}")
    return json.loads(html.unescape(m.group(1)))


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, *, width: int = 1280,
               height: int = 2200, timeout: float = 120) -> Path:
    """PNG of the top `height` pixels of the page at `width` px, written atomically."""
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    proc = _run([f"--window-size={width},{height}", "--hide-scrollbars", "--virtual-time-budget=15000",
                 f"--screenshot={tmp}", Path(html_path).resolve().as_uri()], timeout)
    if not tmp.exists() or tmp.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot; rc={proc.returncode}; stderr tail: {proc.stderr[-2000:]}")
    # Chromium writes the file itself, to a scratch name; its bytes reach their name through the one atomic writer.
    fsutil.atomic_write_bytes(str(png_path), tmp.read_bytes())
    tmp.unlink()
    return png_path
