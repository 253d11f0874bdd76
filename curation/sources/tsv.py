"""CC3M (``caption<TAB>url``) and CC12M (``url<TAB>caption``) rows, no header."""

from __future__ import annotations

from urllib.parse import urlsplit

from shards.hashing import stable_hex

ALLOWED_SCHEMES = ("http", "https")


def url_key(url: str) -> str:
    return "url:" + stable_hex(url, digits=40)


def parse_tsv_line(line: bytes, *, kind: str, source: str) -> tuple[dict | None, str | None]:
    """One raw line (without its newline) -> (fragment, None) or (None, drop reason)."""
    line = line.rstrip(b"\r")
    parts = line.split(b"\t")
    if len(parts) < 2:
        return None, "missing_column"
    if len(parts) > 2:
        return None, "extra_column"
    try:
        a, b = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    caption, url = (a, b) if kind == "cc3m" else (b, a)
    caption, url = caption.strip(), url.strip()
    if not url:
        return None, "empty_url"
    if not caption:
        return None, "empty_caption"
    try:
        parts_ = urlsplit(url)
    except ValueError:
        return None, "bad_url"
    if parts_.scheme.lower() not in ALLOWED_SCHEMES:
        return None, "unsupported_scheme"
    if not parts_.hostname:
        return None, "bad_url"
    key = url_key(url)
    return {"key": key, "source": source, "dataset": kind, "id": key[4:20], "rows": 1,
            "ord": [caption], "url": url, "local": None, "captions": [caption], "qa": [], "link": {}}, None
