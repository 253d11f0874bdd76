"""Quality filters: pure functions answering None (keep) or a drop reason.

Caption filters judge one caption; a record keeps the captions that pass and is dropped (with the reason
of its first caption) only when none is left and it has no QA. Image filters judge the fetched image.
"""

from __future__ import annotations

import re

from curation.config import CaptionFilterConfig, ImageFilterConfig

_URL = re.compile(r"(?i)\b(?:https?://|ftp://|www\.)\S+|\b[\w-]+\.(?:com|org|net|io|co|jpg|png|html?)\b")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_WORD = re.compile(r"\w+", re.UNICODE)


def caption_reason(text: str, cfg: CaptionFilterConfig) -> str | None:
    stripped = text.strip()
    if not stripped:
        return "caption_empty"
    if cfg.drop_emails and _EMAIL.search(stripped):   # before URLs: an address contains a domain
        return "caption_has_email"
    if cfg.drop_urls and _URL.search(stripped):
        return "caption_has_url"
    words = _WORD.findall(stripped.lower())
    if len(words) < cfg.min_words:
        return "caption_too_short"
    if len(words) > cfg.max_words:
        return "caption_too_long"
    visible = [c for c in stripped if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if visible and letters / len(visible) < cfg.min_letter_ratio:
        return "caption_few_letters"
    if len(words) >= 4 and 1 - len(set(words)) / len(words) > cfg.max_repeated_token_ratio:
        return "caption_repetitive"
    low = " ".join(words)
    for phrase in cfg.boilerplate_phrases:
        if " ".join(_WORD.findall(phrase.lower())) in low:
            return "caption_boilerplate"
    return None


def image_reason(*, original_width: int, original_height: int, original_bytes: int, pixel_std: float,
                 cfg: ImageFilterConfig) -> str | None:
    if original_bytes < cfg.min_bytes:
        return "image_too_few_bytes"
    # Aspect first: a thin strip is a banner or separator whatever its size.
    if max(original_width, original_height) / max(1, min(original_width, original_height)) > cfg.max_aspect_ratio:
        return "image_bad_aspect"
    if min(original_width, original_height) < cfg.min_side:
        return "image_too_small"
    if pixel_std < cfg.min_pixel_std:
        return "image_near_uniform"
    return None
